"""default-vl: the composition, the transcriptions its eyes learn, and how recognition is counted.

The eyes' training itself (thousands of steps) runs in `bench/recognition.py`, not here:
these tests build the model with a few steps, which checks everything but the rates.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sftrl_kit import recognition
from sftrl_kit.envs.general_points.cards import Card
from sftrl_kit.envs.virl.city import CITIES, City, generate_city
from sftrl_kit.envs.virl.streetview import signs_in_views
from sftrl_kit.models.default_vl import (
    GRID,
    IMAGE_TOKENS,
    EyesSettings,
    _sign_positions,
    build_default_vl,
    card_transcription,
    eyes_loss,
    image_embeddings,
    read_hands,
    read_signs,
    street_transcription,
    transcription_vocabulary,
)
from sftrl_kit.recognition import place_recognition_report, recognition_report

HAND = [Card("K", "H"), Card("10", "S"), Card("3", "C"), Card("A", "D")]


@pytest.fixture(scope="module")
def few_step_vl(tmp_path_factory):
    """default-vl composed, its eyes trained for 2 steps on 32 hands."""
    from sftrl_kit.models import load_policy

    folder = build_default_vl(tmp_path_factory.mktemp("vl") / "model", EyesSettings(steps=2, pool=32), progress=False)
    return load_policy(folder)


def test_a_hand_is_transcribed_ranks_over_colours_at_each_cards_left_column():
    words = card_transcription(HAND)
    grid = [words[row * 8 : (row + 1) * 8] for row in range(8)]  # 8 x 8 tokens of 28 px; a card is 56 px wide
    assert grid[3] == [" king", " ", " ten", " ", " three", " ", " ace", " "]
    assert grid[4] == [" red", " ", " black", " ", " black", " ", " red", " "]
    assert all(word == " " for row in (0, 1, 2, 5, 6, 7) for word in grid[row])
    assert set(words) <= set(transcription_vocabulary())
    assert read_hands([words]) == [[("K", True), ("10", False), ("3", False), ("A", True)]]


def test_a_slot_that_does_not_read_as_rank_and_colour_is_unread():
    words = card_transcription(HAND)
    words[3 * GRID + 2] = " red"  # a colour where the second card's rank should be
    words[4 * GRID + 6] = " "
    assert read_hands([words]) == [[("K", True), None, ("3", False), None]]


def _one_place_city(corner: str) -> City:
    style = CITIES["Arden"]
    return City(style, 3, {(1, 1, corner): "Hudson Coffee"}, frozenset())


def test_a_sign_is_said_by_the_two_tokens_it_covers_in_every_panel_that_shows_it():
    """A place on the northeast corner, seen facing north: 45 degrees right of the front
    panel (its right building) and 45 degrees left of the right panel (its left
    building); the back and left panels look away. Panels are 4 x 4 tokens, front and
    right side by side in the grid's top half."""
    city = _one_place_city("northeast")
    signs = signs_in_views(city, (1, 1), 0)
    assert signs == [{"right": "Hudson Coffee"}, {"left": "Hudson Coffee"}, {}, {}]
    words = street_transcription(signs)
    said = {index: word for index, word in enumerate(words) if word != " "}
    assert said == {2 * 8 + 2: " Hudson", 2 * 8 + 3: " Coffee", 2 * 8 + 4: " Hudson", 2 * 8 + 5: " Coffee"}
    assert read_signs(words, 0, "right") == read_signs(words, 1, "left") == "Hudson Coffee"
    assert read_signs(words, 0, "left") == read_signs(words, 2, "ahead") == ""
    # facing northeast the place is straight ahead in the front panel only: row 1, columns 1-2
    ahead = street_transcription(signs_in_views(city, (1, 1), 45))
    assert {i: w for i, w in enumerate(ahead) if w != " "} == {1 * 8 + 1: " Hudson", 1 * 8 + 2: " Coffee"}
    words[2 * 8 + 3] = " Bank"
    assert read_signs(words, 0, "right") == "Hudson Bank"


@pytest.mark.parametrize("style", list(CITIES))
def test_the_tokens_that_say_a_sign_lie_on_its_plate_in_every_city_style(style):
    """Rendered with and without the place, the two tokens each sign is said at are
    (at least a quarter) covered by the pixels the sign changed; also for the longest
    name, which is wider than the building ahead."""
    import numpy as np

    from sftrl_kit.envs.virl.streetview import render_views

    empty = City(CITIES[style], 3, {}, frozenset())
    for heading, shown in ((0, [(0, "right"), (1, "left")]), (45, [(0, "ahead")])):
        with_sign = City(CITIES[style], 3, {(1, 1, "northeast"): "Greenwich Pharmacy"}, frozenset())
        changed = np.abs(
            np.asarray(render_views(with_sign, (1, 1), heading), dtype=int)
            - np.asarray(render_views(empty, (1, 1), heading), dtype=int)
        ).sum(-1)
        covered = (changed > 0).reshape(8, 28, 8, 28).mean(axis=(1, 3)).flatten()  # share of each 28-px token's pixels
        for panel, side in shown:
            assert all(covered[i] >= 0.25 for i in _sign_positions(panel, side)), (heading, side)
        assert covered.sum() > 0


def test_a_sign_shows_both_words_whole_even_where_its_building_is_narrow():
    """The plate ahead is wider than its building when a word needs it: the second word
    is drawn (it once was cut to 'Greenw' / 'ich')."""
    from PIL import ImageDraw

    from sftrl_kit.envs.virl import streetview

    calls = []

    class Recorder:
        def __init__(self, draw):
            self.draw = draw

        def __getattr__(self, name):
            return getattr(self.draw, name)

        def text(self, xy, text, **kwargs):
            calls.append(text)
            return self.draw.text(xy, text, **kwargs)

    original = ImageDraw.Draw
    try:
        ImageDraw.Draw = lambda image: Recorder(original(image))
        streetview.render_views(_one_place_city("northeast"), (1, 1), 45)
    finally:
        ImageDraw.Draw = original
    assert calls == ["Hudson", "Coffee"]


def test_a_place_name_that_is_not_two_words_is_refused():
    with pytest.raises(ValueError, match="two words"):
        street_transcription([{"left": "Noodle Bar Hudson"}, {}, {}, {}])


def test_every_word_the_eyes_say_is_one_token_of_the_language_model():
    """A sign covers two tokens, so each city word and kind must be one token; every
    generated place name is a city word and a kind."""
    from transformers import AutoTokenizer

    from sftrl_kit.models.builtin import default_tokenizer_dir
    from sftrl_kit.models.default_vl import _word_ids

    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_dir(), local_files_only=True)
    vocabulary = transcription_vocabulary()
    assert vocabulary[0] == " "  # eyes_loss takes index 0 for the space
    ids = dict(zip(vocabulary, _word_ids(tokenizer, vocabulary)))
    assert len(set(ids.values())) == len(vocabulary)
    for name in CITIES:  # an instruction's text names a place with the very tokens the sign is read as
        for place in generate_city(name).places.values():
            word, kind = place.split(" ")
            assert tokenizer(" " + place, add_special_tokens=False)["input_ids"] == [ids[" " + word], ids[" " + kind]]


def test_hands_of_another_size_are_refused():
    with pytest.raises(ValueError, match="hands of 4 cards"):
        card_transcription(HAND[:3])


def test_the_eyes_loss_is_weighted_cross_entropy_over_the_words_plus_the_scaled_distance():
    generator = torch.Generator().manual_seed(0)
    vocabulary = 2 * torch.linalg.qr(torch.randn(8, 5, generator=generator))[0].T  # orthogonal words
    embedded = torch.randn(2, 3, 8, generator=generator)
    targets = torch.tensor([[0, 4, 2], [1, 0, 3]])  # index 0 is the space
    embedded[0, 0], embedded[0, 1], embedded[1, 2] = 20 * vocabulary[0], 20 * vocabulary[4], 20 * vocabulary[3]
    embedded[1, 0] = -20 * vocabulary[1]  # a word token read wrong
    scale = vocabulary.norm(dim=-1).mean()
    loss, accuracy = eyes_loss(embedded, targets, vocabulary, scale, word_weight=3.0)
    weighted_ce, total_weight, distance, words_right = 0.0, 0.0, 0.0, 0
    for i in range(2):
        for j in range(3):
            logits = [float(embedded[i, j] @ vocabulary[k]) / float(scale) for k in range(5)]
            top = max(logits)
            log_normaliser = top + torch.tensor([x - top for x in logits]).exp().sum().log().item()
            weight = 1.0 if targets[i, j] == 0 else 3.0
            weighted_ce += weight * (log_normaliser - logits[targets[i, j]])
            total_weight += weight
            distance += float(((embedded[i, j] - vocabulary[targets[i, j]]) ** 2).sum()) / float(scale) ** 2 / 6
            words_right += int(targets[i, j]) != 0 and logits.index(top) == int(targets[i, j])
    assert loss.item() == pytest.approx(weighted_ce / total_weight + distance, rel=1e-5)
    assert 2 <= words_right <= 3  # (0, 1) and (1, 2) right by construction, (1, 0) wrong
    assert accuracy == pytest.approx(
        words_right / 4
    )  # four of the six targets are words; the right space is not counted


def test_default_vl_is_an_idefics3_that_loads_through_the_auto_classes(few_step_vl):
    assert type(few_step_vl.model).__name__ == "Idefics3ForConditionalGeneration"
    assert few_step_vl.is_vision
    assert few_step_vl.model.config.scale_factor == 2
    assert few_step_vl.model.config.pad_token_id == few_step_vl.tokenizer.pad_token_id  # not Llama 3's 128002


def test_default_vl_speaks_exactly_as_the_default_model_on_text(few_step_vl):
    """Its language model is the embedded default model, weights and chat template."""
    from sftrl_kit.models import Conversation, load_policy

    text = load_policy("default")
    messages = [{"role": "user", "content": "Name a card game."}]
    assert few_step_vl.prompt_text(messages) == text.prompt_text(messages)
    ids = torch.tensor(text.prompt_token_ids([Conversation(messages)]))
    with torch.no_grad():
        expected = text.model(input_ids=ids).logits
        got = few_step_vl.model(input_ids=ids).logits[..., : expected.shape[-1]]
    assert torch.equal(got, expected)


def test_an_image_becomes_sixty_four_tokens_that_depend_on_its_pixels(few_step_vl):
    from sftrl_kit.envs.general_points.render import render_hand

    image = render_hand(HAND, seed=0)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What cards?"}]}]
    inputs = few_step_vl.encode([few_step_vl.prompt_text(messages)], [[image]])
    image_token = few_step_vl.model.config.image_token_id
    assert int((inputs["input_ids"] == image_token).sum()) == IMAGE_TOKENS
    other = render_hand([Card("2", "S"), *HAND[1:]], seed=0)
    pixels = [few_step_vl.image_inputs([[im]])["pixel_values"][:, 0] for im in (image, other)]
    with torch.no_grad():
        first, second = (image_embeddings(few_step_vl.model, p) for p in pixels)
    assert first.shape == (1, IMAGE_TOKENS, 576)
    changed = (first - second).abs().amax(-1)[0].view(GRID, GRID)
    assert changed[:, 0].max() > 0  # the first card's column sees the new card


def test_the_eyes_read_every_image_of_a_batch_as_they_read_it_alone(few_step_vl):
    """A batch of pictures gives one transcription per picture, each the one the picture
    gets on its own (the Idefics3 processor reads a flat list of images as one sample)."""
    from sftrl_kit.envs.general_points.render import render_hand
    from sftrl_kit.models.default_vl import read_images

    images = [render_hand(HAND, seed=s) for s in range(3)] + [render_hand([Card("2", "S"), *HAND[1:]], seed=0)]
    together = read_images(few_step_vl, images)
    assert len(together) == len(images)
    assert together == [read_images(few_step_vl, [image])[0] for image in images]


def test_recognition_counts_hands_whose_four_ranks_are_read(monkeypatch):
    """Recognition is counted per hand: all four ranks right (and, separately, ranks and
    colours); here the eyes misread the rank of every third hand and the colour of every
    fifth."""

    def fake_read(policy, images):
        words = []
        for image in images:
            hand = image.info["hand"]
            row = card_transcription(hand)
            number = image.info["number"]
            if number % 3 == 0:
                row[3 * GRID] = " two" if hand[0].rank != "2" else " three"
            if number % 5 == 0:
                row[4 * GRID] = " red" if row[4 * GRID] == " black" else " black"
            words.append(row)
        return words

    counter = iter(range(10_000))

    def fake_render(hand, seed, size):
        image = Image.new("RGB", (4, 4))
        image.info.update(hand=hand, number=next(counter) % 30)
        return image

    monkeypatch.setattr(recognition, "read_images", fake_read)
    monkeypatch.setattr(recognition, "render_hand", fake_render)
    report = recognition_report(policy=None, count=30, seed=0, batch_size=7)
    for colours in ("black", "red"):
        ranks = report[colours]["four_ranks"]
        assert (ranks["successes"], ranks["trials"]) == (20, 30)  # numbers 0, 3, ..., 27 misread
        both = report[colours]["four_ranks_and_colours"]
        assert both["successes"] == 30 - len({n for n in range(30) if n % 3 == 0 or n % 5 == 0})
        assert ranks["low"] < 20 / 30 < ranks["high"]


def test_place_recognition_counts_signs_read_exactly_and_views_read_whole(monkeypatch):
    """Each city's views are read right except: the first sign of every fourth view gets
    the wrong kind, and every fifth view has a sign read on a building without one."""
    rendered = []

    def fake_render(city, node, heading, seed):
        rendered.append((city, node, heading))
        return Image.new("RGB", (4, 4))

    def fake_read(policy, images):
        out = []
        for city, node, heading in rendered[-len(images) :]:
            signs = signs_in_views(city, node, heading)
            words = street_transcription(signs)
            number = len(counts[city.style.name])
            counts[city.style.name].append(sum(len(panel) for panel in signs))
            if number % 4 == 0:
                first = next(i for i, w in enumerate(words) if w != " ")
                words[first + 1] = " Bank" if words[first + 1] != " Bank" else " Gym"
            if number % 5 == 0:
                empty = next(
                    (p, side)
                    for p, panel in enumerate(signs)
                    for side in ("left", "ahead", "right")
                    if side not in panel
                )
                words[_sign_positions(*empty)[0]] = " Hudson"
            out.append(words)
        return out

    counts = {name: [] for name in CITIES}
    monkeypatch.setattr(recognition, "render_views", fake_render)
    monkeypatch.setattr(recognition, "read_images", fake_read)
    report = place_recognition_report(policy=None, count=20, seed=0, batch_size=7)
    arden = counts["Arden"]
    assert report["id"]["signs"]["episodes"] == 20  # signs are clustered by view
    assert report["id"]["signs"]["trials"] == sum(arden)
    assert report["id"]["signs"]["successes"] == sum(arden) - 5  # views 0, 4, 8, 12, 16
    assert report["id"]["views"]["successes"] == 20 - len({n for n in range(20) if n % 4 == 0 or n % 5 == 0})
    others = [n for n in CITIES if n != "Arden"]
    assert report["visual_ood"]["cities"] == others
    assert report["visual_ood"]["signs"]["trials"] == sum(sum(counts[n]) for n in others)
    assert report["visual_ood"]["views"]["trials"] == 20 * len(others)
    assert report["per_city"]["Kingsmere"]["signs"]["successes"] == sum(counts["Kingsmere"]) - 5
