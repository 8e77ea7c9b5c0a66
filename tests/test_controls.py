"""The critiques' controls and the positive control's data: the fake rule, prompt
variants, reasoning answers, and SFT data that states both rules."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import REPO

from sftrl_kit.data import OTHER_RULE_SEED_OFFSET, eval_set_path, expert_records, load_eval_set
from sftrl_kit.envs import make
from sftrl_kit.envs.base import PROMPT_VARIANTS
from sftrl_kit.envs.general_points import rule_text
from sftrl_kit.envs.general_points.cards import Card, hand_values
from sftrl_kit.envs.general_points.solver import solve
from sftrl_kit.envs.virl.prompts import action_space_text
from sftrl_kit.study import StudySettings, choose_start, ppo_settings
from sftrl_kit.tasks import STUDY_TASKS

# the seed-11 prompt of each task under the other rule, from the kit at 210f486; V-IRL's since
# the generated cities' names became one token per word (71c3bbb's prompt with each place
# name replaced by the name at the same place in the new pools, byte for byte)
CANONICAL_SHA256 = {
    "gp-l": "88d6500d5cee078979823c9fcd13ca7c8474ed969eba9cd78af170a94e2e1e94",
    "virl-l": "5c630c63a106de75ae65d0e7f3e06a4b2604c5471a958dbb8bffe617e3cf0f41",
}


def _gp_answer(hand: list[Card], face_rule: str) -> str | None:
    """A formula making 24 from the hand valued under face_rule, or None."""
    values = hand_values(hand, face_rule)
    solutions = solve(values, 24)
    if not solutions:
        return None
    return json.dumps({"cards": [c.rank for c in hand], "number": values, "formula": f"{solutions[0]}=24"})


def test_the_gp_fake_rule_states_the_new_rule_and_scores_the_trained_one():
    records = load_eval_set(REPO / "data" / "eval" / "gp-fake-rule.jsonl")
    scored = 0
    for record in records[:40]:
        env = make("gp-l", **record["env_config"])
        observation, info = env.reset(options={"task": record["task"]})
        assert rule_text("ordinal") in observation.text
        assert rule_text("ten") not in observation.text
        hand = [Card.from_code(code) for code in record["task"]["hand"]]
        trained = _gp_answer(hand, "ten")
        assert trained is not None  # every deal is solvable under the verifier's (trained) rule
        _, _, terminated, _, step = env.step(trained)
        assert terminated
        assert step["verdict"]["outcome"] == "correct"
        followed_prompt = _gp_answer(hand, "ordinal")
        if followed_prompt is not None:  # the prompt's rule is scored as the other rule
            env.reset(options={"task": record["task"]})
            _, _, _, _, step = env.step(followed_prompt)
            assert step["verdict"]["outcome"] == "numbers_mismatch"
            assert step["verdict"]["other_rule_used"]
            scored += 1
    assert scored > 5


def test_the_virl_fake_rule_states_relative_actions_and_scores_absolute_ones():
    fake = load_eval_set(REPO / "data" / "eval" / "virl-fake-rule.jsonl")
    ids = load_eval_set(REPO / "data" / "eval" / "virl-id.jsonl")
    assert [r["task"] for r in fake] == [r["task"] for r in ids]  # paired with virl-id
    record = fake[0]
    env = make("virl-l", **record["env_config"])
    observation, _ = env.reset(options={"task": record["task"]})
    assert action_space_text("relative") in observation.text
    assert action_space_text("absolute") not in observation.text
    absolute = make("virl-l", action_space="absolute")
    absolute.reset(options={"task": record["task"]})
    relative = make("virl-l", action_space="relative")
    relative.reset(options={"task": record["task"]})
    turn, relative_turn = absolute.decisions[0].action, relative.decisions[0].action
    _, _, _, _, step = env.step(json.dumps({"action": turn}))
    assert step["verdict"]["outcome"] == "correct"
    env.reset(options={"task": record["task"]})
    _, _, _, _, step = env.step(json.dumps({"action": relative_turn}))
    assert step["verdict"]["outcome"] == "invalid_action"
    assert step["verdict"]["other_rule_used"]


@pytest.mark.parametrize("env_id", ["gp-l", "virl-l"])
def test_prompt_variants_differ_but_state_the_rule_and_only_that_rule(env_id):
    rule, other = (
        (rule_text("ordinal"), rule_text("ten"))
        if env_id == "gp-l"
        else (action_space_text("relative"), action_space_text("absolute"))
    )
    setting = {"face_rule": "ordinal"} if env_id == "gp-l" else {"action_space": "relative"}
    texts = []
    for variant in range(PROMPT_VARIANTS):
        observation, _ = make(env_id, **setting, prompt_variant=variant).reset(seed=11)
        assert rule in observation.text
        assert other not in observation.text
        texts.append(observation.text)
    assert len(set(texts)) == PROMPT_VARIANTS
    # variant 0 is the canonical prompt, byte for byte what the kit wrote before variants existed (210f486)
    assert hashlib.sha256(texts[0].encode()).hexdigest() == CANONICAL_SHA256[env_id]
    with pytest.raises(ValueError, match="prompt_variant"):
        make(env_id, prompt_variant=PROMPT_VARIANTS)


@pytest.mark.parametrize("env_id", ["gp-l", "virl-l"])
def test_both_rules_data_alternate_rules_and_every_answer_follows_its_prompt(env_id):
    task = STUDY_TASKS[env_id]
    records = list(expert_records(env_id, 6, rules="both", reasoning=True, prompt_variants=True))
    seeds = list(dict.fromkeys(r["seed"] for r in records))
    base = seeds[0]
    assert seeds == [base + i // 2 + (OTHER_RULE_SEED_OFFSET if i % 2 else 0) for i in range(6)]
    for seed in seeds:  # one deal, or every decision point of one route in order
        other = seed >= base + OTHER_RULE_SEED_OFFSET
        config = task.other_rule if other else {}
        env = make(env_id, **config)  # the environments' defaults are the trained rule
        group = [r for r in records if r["seed"] == seed]
        env.reset(options={"task": group[0]["task"]})
        for record in group:
            answer = json.loads(record["messages"][-1]["content"])
            assert list(answer)[0] == "thought"
            _, _, _, _, step = env.step(record["messages"][-1]["content"])
            assert step["verdict"]["outcome"] == "correct"
        if env_id == "gp-l":
            stated = rule_text(config.get("face_rule", "ten"))
            assert stated in group[0]["messages"][0]["content"]
            assert stated in answer["thought"]
    variants = {r["messages"][0]["content"].split("\n")[0] for r in records}
    assert len(variants) > 1  # the wording varies across deals / routes


def test_a_virl_study_trains_and_evaluates_on_virl(tmp_path):
    settings = StudySettings(task="virl-l", fake_rule=True)
    assert settings.eval_set_names == ["virl-id", "virl-rule-ood", "virl-fake-rule"]
    ppo = ppo_settings(settings, tmp_path, "tiny")
    assert (ppo.env_id, ppo.env_config["action_space"]) == ("virl-l", "absolute")
    assert StudySettings().eval_set_names == ["gp-id", "gp-rule-ood"]
    with pytest.raises(ValueError, match="start_rules"):
        StudySettings(start_rules="all")


@pytest.mark.parametrize("task", ["gp-l", "virl-l"])
@pytest.mark.parametrize("reasoning", [False, True])
def test_the_default_token_budget_holds_every_expert_answer(smollm2_tokenizer, task, reasoning):
    """A response cut short is unreadable: the study's default budget (new_tokens) must
    hold the longest expert answer of its task, with or without the reasoning field."""
    budget = StudySettings(task=task, reasoning=reasoning).new_tokens
    records = expert_records(STUDY_TASKS[task].env_id, 150, rules="both", reasoning=reasoning, prompt_variants=True)
    longest = max(len(smollm2_tokenizer(r["messages"][-1]["content"])["input_ids"]) for r in records)
    assert longest + 1 <= budget  # and the end-of-turn token


def test_the_start_is_the_most_rule_following_checkpoint_that_answers_in_format():
    def row(step, ood, in_format):
        return {"step": step, "ood": ood, "in format": in_format}

    window = [row(2, 0.9, False), row(4, 0.5, True), row(6, 0.7, True), row(8, 0.7, True), row(10, 0.2, True)]
    assert choose_start(window, "ood")["step"] == 6  # step 2 reads best but not in format; 6 and 8 tie: earliest
    assert choose_start([row(2, 0.1, False), row(4, 0.0, False)], "ood")["step"] == 4  # none in format: the last


@pytest.mark.parametrize("task", sorted(STUDY_TASKS))
def test_the_window_is_picked_on_validation_sets_of_the_same_kind_and_other_tasks(task):
    """pick_start reads settings.validation(): the reported sets' kinds of deals or routes
    (the same settings, rule for rule), none of them a reported one, so the pick cannot
    flatter the start the branches are measured against."""
    reported, validation = STUDY_TASKS[task].eval_sets, STUDY_TASKS[task].validation_sets
    assert StudySettings(task=task, fake_rule=True).validation().eval_set_names == list(validation)
    every_reported = [r for name in reported for r in load_eval_set(eval_set_path(name, REPO / "data"))]
    reported_tasks = {json.dumps(r["task"], sort_keys=True) for r in every_reported}
    reported_seeds = {r["seed"] for r in every_reported}
    for reported_name, validation_name in zip(reported, validation):
        records = load_eval_set(eval_set_path(validation_name, REPO / "data"))
        first_reported = load_eval_set(eval_set_path(reported_name, REPO / "data"))[0]
        assert len(records) >= 100
        assert all(r["env_config"] == first_reported["env_config"] for r in records)
        assert not reported_tasks & {json.dumps(r["task"], sort_keys=True) for r in records}
        assert not reported_seeds & {r["seed"] for r in records}


def test_the_number_field_shows_which_rule_an_answer_applies_whatever_its_formula():
    """numbers_rule reads the "number" field as a multiset: the scored rule's values,
    the other rule's, or neither; hands without a face card name no rule."""
    from sftrl_kit.envs.general_points.config import GPConfig
    from sftrl_kit.envs.general_points.verifier import verify

    hand = [Card.from_code(c) for c in ("KS", "3C", "JC", "7S")]
    ordinal_values = {"K": 13, "3": 3, "J": 11, "7": 7}  # written out, not computed by the kit

    def answer(numbers, formula="1+1=24"):
        return json.dumps({"cards": ["K", "3", "J", "7"], "number": numbers, "formula": formula})

    ordinal = GPConfig(face_rule="ordinal", colours="black")
    shuffled = [ordinal_values[r] for r in ("J", "7", "K", "3")]
    assert verify(answer(shuffled), hand, ordinal).numbers_rule == "scored"
    assert verify(answer(["10", 3, 10.0, 7]), hand, ordinal).numbers_rule == "other"  # strings and floats read
    assert verify(answer([10, 3, 10, 7]), hand, GPConfig(face_rule="ten")).numbers_rule == "scored"
    odd_lists = ([10, 3, 11, 7], [13, 3, 11], "13, 3, 11, 7", [True, 3, 11, 7], None, ["1e999999999", 3, 11, 7])
    for odd in (*odd_lists, ["\u0661\u0663", 3, 11, 7], [13.5, 3, 11, 7]):  # Arabic-Indic 13, a fraction
        assert verify(answer(odd), hand, ordinal).numbers_rule is None
    no_face = [Card.from_code(c) for c in ("2S", "3C", "4C", "7S")]
    assert verify(answer([2, 3, 4, 7]), no_face, ordinal).numbers_rule is None
    verdict = verify(answer([10, 3, 10, 7], "(10-7)*(10-3)=24"), hand, ordinal)
    assert verdict.outcome == "numbers_mismatch"
    assert verdict.numbers_rule == "other"


def test_the_picked_start_is_the_one_later_notebooks_start_from(tmp_path):
    from sftrl_kit.run_folder import PICKED_START
    from sftrl_kit.study import shared_start

    run = tmp_path / "sft-start"
    for step in (4, 8):
        (run / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step:06d}" / "checkpoint.json").write_text(json.dumps({"step": step}))
    assert shared_start(run).name == "step-000008"  # nothing picked: the last
    (run / PICKED_START).write_text(json.dumps({"picked": str(run / "checkpoints" / "step-000004")}))
    assert shared_start(run).name == "step-000004"
    (run / PICKED_START).write_text(json.dumps({"picked": str(run / "checkpoints" / "step-000002")}))
    with pytest.raises(FileNotFoundError, match="is gone"):
        shared_start(run)
