from itertools import islice
from pathlib import Path

import pytest
from PIL import Image

from sftrl_kit.data import (
    GP_EVAL_SPLITS,
    VIRL_EVAL_SPLITS,
    expert_records,
    load_eval_set,
    load_sft_dataset,
    make_eval_set,
    suboptimal_records,
    write_sft_dataset,
)
from sftrl_kit.envs import make
from sftrl_kit.envs.general_points.cards import FACE_RANKS, Card
from sftrl_kit.episodes import write_jsonl

REPO = Path(__file__).resolve().parent.parent


def content_text(message):
    content = message["content"]
    return content if isinstance(content, str) else next(p["text"] for p in content if p["type"] == "text")


ALL_SPLITS = {**GP_EVAL_SPLITS, **VIRL_EVAL_SPLITS}


@pytest.mark.parametrize("name", sorted(ALL_SPLITS))
def test_committed_eval_sets_regenerate_byte_for_byte(name, tmp_path):
    committed = REPO / "data" / "eval" / f"{name}.jsonl"
    records = make_eval_set(ALL_SPLITS[name], size=len(load_eval_set(committed)))
    write_jsonl(tmp_path / "regenerated.jsonl", records)
    assert (tmp_path / "regenerated.jsonl").read_bytes() == committed.read_bytes()


def test_eval_splits_hold_what_they_claim():
    for name, split in GP_EVAL_SPLITS.items():
        records = load_eval_set(REPO / "data" / "eval" / f"{name}.jsonl")
        assert len(records) >= 300
        assert {r["split"] for r in records} == {name}
        assert [r["seed"] for r in records] == [split.base_seed + i for i in range(len(records))]
        hands = [[Card.from_code(c) for c in r["task"]["hand"]] for r in records]
        if name == "gp-rule-ood":
            assert all(any(c.rank in FACE_RANKS for c in hand) for hand in hands)
        reds = {c.is_red for hand in hands for c in hand}
        assert reds == ({True} if name == "gp-visual-ood" else {False})


def test_eval_records_replay_in_both_modalities():
    record = load_eval_set(REPO / "data" / "eval" / "gp-rule-ood.jsonl")[0]
    for env_id in ("gp-l", "gp-vl"):
        obs, info = make(env_id, **record["env_config"]).reset(options={"task": record["task"]})
        assert info["task"] == record["task"] and "J counts as 11" in obs.text


@pytest.mark.parametrize("env_id", ["gp-l", "gp-vl"])
def test_expert_records_end_in_a_correct_answer(env_id):
    for record in islice(expert_records(env_id, 10), 10):
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        env = make(env_id, face_rule="ten", colours="black")
        env.reset(options={"task": record["task"]})
        _, reward, terminated, _, _ = env.step(content_text(messages[-1]))
        assert terminated and reward == 5.0
        assert len(record.get("images", [])) == (1 if env_id == "gp-vl" else 0)


@pytest.mark.parametrize("env_id", ["gp-l", "gp-vl"])
def test_suboptimal_records_replay_exactly_through_the_environment(env_id):
    outcomes = set()
    for record in islice(suboptimal_records(env_id, 30), 30):
        messages = record["messages"]
        env = make(env_id, face_rule="ten", colours="black")
        env.reset(options={"task": record["task"]})
        assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        assert 2 <= len(assistant_turns) <= env.config.max_attempts
        for position in assistant_turns[:-1]:
            feedback, _, terminated, truncated, info = env.step(content_text(messages[position]))
            assert not (terminated or truncated)
            assert feedback.text == content_text(messages[position + 1])
            outcomes.add(info["verdict"]["outcome"])
        _, reward, terminated, _, _ = env.step(content_text(messages[-1]))
        assert terminated and reward >= 3.5
    assert outcomes == {"wrong_value", "numbers_mismatch", "illegal_formula"}


def test_datasets_load_text_and_images(tmp_path):
    write_sft_dataset(tmp_path / "text.jsonl", expert_records("gp-l", 3))
    write_sft_dataset(tmp_path / "vision.jsonl", suboptimal_records("gp-vl", 3))
    assert not (tmp_path / "text").exists()
    text = load_sft_dataset(tmp_path / "text.jsonl")
    assert len(text) == 3 and text[0]["messages"][0]["role"] == "user"
    vision = load_sft_dataset(tmp_path / "vision.jsonl")
    image = vision[0]["images"][0]
    assert isinstance(image, Image.Image) and image.size == (224, 224)
    first = vision[0]["messages"][0]["content"]
    assert sum(part["type"] == "image" for part in first) == len(vision[0]["images"])
    with pytest.raises(FileNotFoundError, match="sftrl data gp"):
        load_sft_dataset(tmp_path / "missing.jsonl")


@pytest.mark.slow
def test_text_records_render_with_the_default_models_chat_template(tmp_path, smollm2_tokenizer):
    write_sft_dataset(tmp_path / "sub.jsonl", suboptimal_records("gp-l", 5))
    for row in load_sft_dataset(tmp_path / "sub.jsonl"):
        rendered = smollm2_tokenizer.apply_chat_template(row["messages"], tokenize=False)
        assistants = [m for m in row["messages"] if m["role"] == "assistant"]
        assert rendered.count("<|im_start|>assistant\n") == len(assistants)
        assert rendered.rstrip().endswith(assistants[-1]["content"] + "<|im_end|>")
        ids = smollm2_tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
        assert 100 < len(ids) < 2048


def test_virl_splits_pair_the_rule_shift_and_spread_the_visual_shift():
    load = lambda name: load_eval_set(REPO / "data" / "eval" / f"{name}.jsonl")  # noqa: E731
    ids, rule, visual = load("virl-id"), load("virl-rule-ood"), load("virl-visual-ood")
    assert [r["task"] for r in ids] == [r["task"] for r in rule]  # the same routes, another action space
    assert {r["env_config"]["action_space"] for r in rule} == {"relative"}
    assert {r["env_config"]["action_space"] for r in ids + visual} == {"absolute"}
    cities = [r["env_config"]["city"] for r in visual]
    assert len(set(cities)) == 9 and "Arden" not in cities and {r["env_config"]["city"] for r in ids} == {"Arden"}
    for record in visual[:3]:
        obs, _ = make("virl-vl", **record["env_config"]).reset(options={"task": record["task"]})
        assert obs.images[0].size == (224, 224)
