from itertools import islice
from pathlib import Path

import pytest
from PIL import Image

from sftrl_kit.data import (
    EVAL_SEED_LIMIT,
    GP_EVAL_SPLITS,
    VIRL_EVAL_SPLITS,
    GPDataSizes,
    VirlDataSizes,
    expert_records,
    generate_gp_data,
    generate_virl_data,
    load_eval_set,
    load_sft_dataset,
    make_eval_set,
    suboptimal_records,
    write_sft_dataset,
)
from sftrl_kit.envs import make
from sftrl_kit.envs.general_points.cards import FACE_RANKS, Card, hand_values
from sftrl_kit.envs.general_points.solver import is_solvable
from sftrl_kit.episodes import read_jsonl, write_jsonl

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
        assert {len(hand) for hand in hands} == {3 if split.env_id == "gp3-l" else 4}
        if split.env_config["sampling"] == "with_face":
            assert all(any(c.rank in FACE_RANKS for c in hand) for hand in hands)
        scored_rule = split.env_config["face_rule"]
        target = 12 if split.env_id == "gp3-l" else 24
        assert all(is_solvable(hand_values(hand, scored_rule), target) for hand in hands)
        reds = {c.is_red for hand in hands for c in hand}
        assert reds == ({True} if name == "gp-visual-ood" else {False})


def test_eval_records_replay_in_both_modalities():
    record = load_eval_set(REPO / "data" / "eval" / "gp-rule-ood.jsonl")[0]
    for env_id in ("gp-l", "gp-vl"):
        obs, info = make(env_id, **record["env_config"]).reset(options={"task": record["task"]})
        assert info["task"] == record["task"]
        assert "J counts as 11" in obs.text


@pytest.mark.parametrize("env_id", ["gp-l", "gp-vl"])
def test_expert_records_end_in_a_correct_answer(env_id):
    for record in islice(expert_records(env_id, 10), 10):
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        env = make(env_id, face_rule="ten", colours="black")
        env.reset(options={"task": record["task"]})
        _, reward, terminated, _, _ = env.step(content_text(messages[-1]))
        assert terminated
        assert reward == 5.0
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
            assert not terminated
            assert not truncated
            assert feedback.text == content_text(messages[position + 1])
            outcomes.add(info["verdict"]["outcome"])
        _, reward, terminated, _, _ = env.step(content_text(messages[-1]))
        assert terminated
        assert reward >= 3.5
    assert outcomes == {"wrong_value", "numbers_mismatch", "illegal_formula"}


def test_datasets_load_text_and_images(tmp_path):
    write_sft_dataset(tmp_path / "text.jsonl", expert_records("gp-l", 3))
    write_sft_dataset(tmp_path / "vision.jsonl", suboptimal_records("gp-vl", 3))
    assert not (tmp_path / "text").exists()
    text = load_sft_dataset(tmp_path / "text.jsonl")
    assert len(text) == 3
    assert text[0]["messages"][0]["role"] == "user"
    vision = load_sft_dataset(tmp_path / "vision.jsonl")
    image = vision[0]["images"][0]
    assert isinstance(image, Image.Image)
    assert image.size == (224, 224)
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
    assert len(set(cities)) == 9
    assert "Arden" not in cities
    assert {r["env_config"]["city"] for r in ids} == {"Arden"}
    for record in visual[:3]:
        obs, _ = make("virl-vl", **record["env_config"]).reset(options={"task": record["task"]})
        assert obs.images[0].size == (224, 224)


@pytest.mark.parametrize("env_id", ["virl-l", "virl-vl"])
def test_virl_expert_records_walk_each_route_to_its_end(env_id):
    records = list(expert_records(env_id, 2))
    assert len({r["seed"] for r in records}) == 2
    for seed in sorted({r["seed"] for r in records}):
        route = [r for r in records if r["seed"] == seed]
        env = make(env_id, action_space="absolute", city="Arden")
        observation, _ = env.reset(options={"task": route[0]["task"]})
        for position, record in enumerate(route):
            user, assistant = record["messages"]
            assert record["task"]["point"] == env.decisions[position].point
            assert content_text(user) == observation.text  # the prompt the model sees at this point
            assert len(record.get("images", [])) == (1 if env_id == "virl-vl" else 0)
            observation, reward, terminated, _, info = env.step(content_text(assistant))
            assert reward == 1.0
            assert terminated == (position == len(route) - 1)
        assert info["success"]
        assert len(route) == info["points"]


def test_virl_suboptimal_records_revise_one_wrong_action_per_point():
    records = list(suboptimal_records("virl-l", 2))
    env = make("virl-l", action_space="absolute", city="Arden")
    seed = None
    for record in records:
        if record["seed"] != seed:  # the first point of the next route
            seed, _ = record["seed"], env.reset(options={"task": record["task"]})
        assert [m["role"] for m in record["messages"]] == ["user", "assistant", "user", "assistant"]
        _, wrong, feedback, right = (m["content"] for m in record["messages"])
        observation, reward, _, truncated, info = env.step(wrong)
        assert info["verdict"]["outcome"] == "wrong_action"
        assert not truncated
        assert observation.text == feedback
        _, reward, _, _, info = env.step(right)
        assert reward == 1.0
    assert info["success"]
    assert len({r["seed"] for r in records}) == 2


@pytest.mark.parametrize("env_id, expert_seed", [("gp-l", 1_000_000), ("virl-l", 3_000_000)])
def test_sft_records_deal_from_training_seeds_only(env_id, expert_seed):
    assert next(expert_records(env_id, 1))["seed"] == expert_seed
    assert next(suboptimal_records(env_id, 1))["seed"] == 2 * expert_seed
    assert next(expert_records(env_id, 1, seed=EVAL_SEED_LIMIT + 7))["seed"] == EVAL_SEED_LIMIT + 7
    for make_records in (expert_records, suboptimal_records):
        with pytest.raises(ValueError, match="training data seeds"):
            make_records(env_id, 1, seed=EVAL_SEED_LIMIT - 1)
    with pytest.raises(ValueError, match="no SFT data for 'gp-x'"):
        expert_records("gp-x", 1)


def test_gp_data_stage_writes_what_its_summary_says(tmp_path):
    sizes = GPDataSizes(eval_size=3, sft_text=6, sft_image=2, samples=5)
    summary = generate_gp_data(tmp_path, sizes)
    assert {name: item["records"] for name, item in summary["eval"].items()} == dict.fromkeys(GP_EVAL_SPLITS, 3)
    counts = {"gp-l-expert": 6, "gp-l-suboptimal": 3, "gp-vl-expert": 2, "gp-vl-suboptimal": 1}
    assert {name: item["records"] for name, item in summary["sft"].items()} == counts
    for name, item in summary["sft"].items():
        path = tmp_path / "generated" / f"{name}.jsonl"
        records = read_jsonl(path)
        assert item["path"] == str(path)
        assert len(records) == counts[name]
        assert {r["kind"] for r in records} == {name.rsplit("-", 1)[1]}
        images = [tmp_path / "generated" / image for r in records for image in r.get("images", [])]
        assert len(images) == (counts[name] if "-vl-" in name else 0)
        assert item["bytes"] == path.stat().st_size + sum(image.stat().st_size for image in images)
    assert_samples_show_eval_records(
        summary["samples"], tmp_path, list(GP_EVAL_SPLITS), 5, "gp-vl", lambda task: "-".join(task["hand"])
    )


def test_virl_data_stage_names_sets_and_samples_by_route(tmp_path):
    sizes = VirlDataSizes(eval_routes=2, visual_ood_routes=3, sft_text_routes=2, sft_image_routes=1, samples=4)
    summary = generate_virl_data(tmp_path, sizes)
    assert {name: item["records"] for name, item in summary["eval"].items()} == {
        "virl-id": 2,
        "virl-rule-ood": 2,
        "virl-fake-rule": 2,
        "virl-val-id": 2,
        "virl-val-rule-ood": 2,
        "virl-visual-ood": 3,
    }
    assert list(summary["sft"]) == ["virl-l-expert", "virl-l-suboptimal", "virl-vl-expert", "virl-vl-suboptimal"]
    assert summary["sft"]["virl-vl-suboptimal"]["records"] == 0  # half of one route
    assert_samples_show_eval_records(
        summary["samples"], tmp_path, list(VIRL_EVAL_SPLITS), 4, "virl-vl", lambda task: task["route"]["route_id"]
    )


def assert_samples_show_eval_records(samples, root, split_names, count, env_id, name_of):
    """Sample i is record i // len(splits) of split i % len(splits), as `env_id` shows it."""
    assert len(samples) == count
    for i, path in enumerate(samples):
        name = split_names[i % len(split_names)]
        record = read_jsonl(root / "eval" / f"{name}.jsonl")[i // len(split_names)]
        observation, _ = make(env_id, **record["env_config"]).reset(options={"task": record["task"]})
        assert Path(path).name == f"{name}-{name_of(record['task'])}.png"
        assert Image.open(path).tobytes() == observation.images[0].tobytes()


def test_frozen_sets_are_never_overwritten(tmp_path):
    """The same records again leave a set as it is; other records (another size) are
    refused before any file is written; the kit's own data/ sends another size elsewhere."""
    from sftrl_kit.data import DATA_ROOT, FrozenSetError, GPDataSizes, data_root_for, write_eval_sets

    splits = [ALL_SPLITS["gp-id"], ALL_SPLITS["gp-rule-ood"]]
    write_eval_sets(tmp_path, splits, lambda _: 5)
    written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((tmp_path / "eval").iterdir())}
    write_eval_sets(tmp_path, splits, lambda _: 5)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((tmp_path / "eval").iterdir())} == written
    (tmp_path / "eval" / "gp-rule-ood.jsonl").unlink()
    with pytest.raises(FrozenSetError, match=r"gp-id.jsonl is a frozen eval set with other records \(5 there, 7"):
        write_eval_sets(tmp_path, splits, lambda _: 7)
    assert not (tmp_path / "eval" / "gp-rule-ood.jsonl").exists()  # refused before anything was written
    assert data_root_for(DATA_ROOT, GPDataSizes(), tmp_path) == DATA_ROOT
    assert data_root_for(DATA_ROOT, GPDataSizes(eval_size=500), tmp_path) == tmp_path
    assert data_root_for(tmp_path / "mine", GPDataSizes(eval_size=500), tmp_path / "x") == tmp_path / "mine"


def test_eval_sets_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from sftrl_kit.data import eval_set_path

    monkeypatch.chdir(tmp_path)
    assert eval_set_path("gp-id") == REPO / "data" / "eval" / "gp-id.jsonl"
    with pytest.raises(FileNotFoundError, match="no eval set 'gp-idd' .* the sets there: gp-fake-rule, gp-id"):
        eval_set_path("gp-idd")
