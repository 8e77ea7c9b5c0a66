import io

from sftrl_kit.envs.general_points.cards import Card
from sftrl_kit.envs.general_points.render import render_hand

BLACK_HAND = [Card("Q", "S"), Card("3", "C"), Card("8", "S"), Card("A", "C")]
RED_HAND = [Card("Q", "H"), Card("3", "D"), Card("8", "H"), Card("A", "D")]


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def red_pixels(image):
    data = image.convert("RGB").tobytes()
    pixels = zip(data[0::3], data[1::3], data[2::3])
    return sum(1 for r, g, b in pixels if r > 150 and g < 90 and b < 90)


def test_same_seed_gives_the_same_bytes_and_other_seeds_differ():
    assert png_bytes(render_hand(BLACK_HAND, 1)) == png_bytes(render_hand(BLACK_HAND, 1))
    assert png_bytes(render_hand(BLACK_HAND, 1)) != png_bytes(render_hand(BLACK_HAND, 2))
    assert png_bytes(render_hand(BLACK_HAND, 1)) != png_bytes(render_hand(RED_HAND, 1))


def test_suit_colour_is_visible():
    assert red_pixels(render_hand(BLACK_HAND, 3)) == 0
    assert red_pixels(render_hand(RED_HAND, 3)) > 200


def test_sizes():
    for size in (96, 224, 560):
        assert render_hand(BLACK_HAND, 0, size).size == (size, size)
