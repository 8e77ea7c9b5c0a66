"""default-vl: the composition, the transcription its eyes learn, and how recognition is counted.

The eyes' training itself (thousands of steps) runs in `bench/recognition.py`, not here:
these tests build the model with a few steps, which checks everything but the rates.
"""

from __future__ import annotations

import pytest
import torch

from sftrl_kit.envs.general_points.cards import Card
from sftrl_kit.vision import (
    GRID,
    IMAGE_TOKENS,
    EyesSettings,
    build_default_vl,
    card_transcription,
    eyes_loss,
    image_embeddings,
    read_hands,
    recognition_report,
    transcription_vocabulary,
)

HAND = [Card("K", "H"), Card("10", "S"), Card("3", "C"), Card("A", "D")]


@pytest.fixture(scope="module")
def few_step_vl(tmp_path_factory):
    """default-vl composed, its eyes trained for 2 steps on 32 hands."""
    from sftrl_kit.models import load_policy

    folder = build_default_vl(tmp_path_factory.mktemp("vl") / "model", EyesSettings(steps=2, pool=32), progress=False)
    return load_policy(folder)


def test_a_hand_is_transcribed_ranks_over_colours_left_to_right():
    words = card_transcription(HAND)
    assert words[GRID : 2 * GRID] == [" king", " ten", " three", " ace"]
    assert words[2 * GRID : 3 * GRID] == [" red", " black", " black", " red"]
    assert words[:GRID] == words[3 * GRID :] == [" "] * GRID
    assert set(words) <= set(transcription_vocabulary())
    assert read_hands([words]) == [[("K", True), ("10", False), ("3", False), ("A", True)]]


def test_a_slot_that_does_not_read_as_rank_and_colour_is_unread():
    words = card_transcription(HAND)
    words[GRID + 1] = " red"  # a colour where the rank should be
    words[2 * GRID + 3] = " "
    assert read_hands([words]) == [[("K", True), None, ("3", False), None]]


def test_hands_of_another_size_are_refused():
    with pytest.raises(ValueError, match="hands of 4 cards"):
        card_transcription(HAND[:3])


def test_the_eyes_loss_is_cross_entropy_over_the_words_plus_the_scaled_distance():
    generator = torch.Generator().manual_seed(0)
    vocabulary = torch.randn(5, 8, generator=generator)
    embedded = torch.randn(2, 3, 8, generator=generator)
    targets = torch.tensor([[0, 4, 2], [1, 1, 3]])
    scale = vocabulary.norm(dim=-1).mean()
    loss, accuracy = eyes_loss(embedded, targets, vocabulary, scale)
    expected_ce, expected_distance, right = 0.0, 0.0, 0
    for i in range(2):
        for j in range(3):
            logits = [float(embedded[i, j] @ vocabulary[k]) / float(scale) for k in range(5)]
            top = max(logits)
            log_normaliser = top + torch.tensor([x - top for x in logits]).exp().sum().log().item()
            expected_ce += (log_normaliser - logits[targets[i, j]]) / 6
            expected_distance += (
                float(((embedded[i, j] - vocabulary[targets[i, j]]) ** 2).sum()) / float(scale) ** 2 / 6
            )
            right += logits.index(top) == targets[i, j]
    assert loss.item() == pytest.approx(expected_ce + expected_distance, rel=1e-5)
    assert accuracy == pytest.approx(right / 6)


def test_default_vl_is_an_idefics3_that_loads_through_the_auto_classes(few_step_vl):
    assert type(few_step_vl.model).__name__ == "Idefics3ForConditionalGeneration"
    assert few_step_vl.is_vision
    assert few_step_vl.model.config.scale_factor == 4
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


def test_an_image_becomes_sixteen_tokens_that_depend_on_its_pixels(few_step_vl):
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
    from sftrl_kit.vision import read_images

    images = [render_hand(HAND, seed=s) for s in range(3)] + [render_hand([Card("2", "S"), *HAND[1:]], seed=0)]
    together = read_images(few_step_vl, images)
    assert len(together) == len(images)
    assert together == [read_images(few_step_vl, [image])[0] for image in images]


def test_recognition_counts_hands_whose_four_ranks_are_read(monkeypatch):
    """Recognition is counted per hand: all four ranks right (and, separately, ranks and
    colours); here the eyes misread the rank of every third hand and the colour of every
    fifth."""
    from sftrl_kit import vision

    def fake_read(policy, images):
        words = []
        for image in images:
            hand = image.info["hand"]
            row = card_transcription(hand)
            number = image.info["number"]
            if number % 3 == 0:
                row[GRID] = " two" if hand[0].rank != "2" else " three"
            if number % 5 == 0:
                row[2 * GRID] = " red" if row[2 * GRID] == " black" else " black"
            words.append(row)
        return words

    counter = iter(range(10_000))

    def fake_render(hand, seed, size):
        image = vision.Image.new("RGB", (4, 4))
        image.info.update(hand=hand, number=next(counter) % 30)
        return image

    monkeypatch.setattr(vision, "read_images", fake_read)
    monkeypatch.setattr(vision, "render_hand", fake_render)
    report = recognition_report(policy=None, count=30, seed=0, batch_size=7)
    for colours in ("black", "red"):
        ranks = report[colours]["four_ranks"]
        assert (ranks["successes"], ranks["trials"]) == (20, 30)  # numbers 0, 3, ..., 27 misread
        both = report[colours]["four_ranks_and_colours"]
        assert both["successes"] == 30 - len({n for n in range(30) if n % 3 == 0 or n % 5 == 0})
        assert ranks["low"] < 20 / 30 < ranks["high"]
