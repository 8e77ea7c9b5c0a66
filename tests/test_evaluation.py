import json
import math

import pytest
from conftest import REPO  # noqa: E402
from scripted import ScriptedResponder

from sftrl_kit.episodes import Episode, Turn, read_episodes
from sftrl_kit.evaluation import episode_metrics, evaluate, evaluate_checkpoints, load_evaluations
from sftrl_kit.run_folder import evaluation_folder
from sftrl_kit.stats import compare_rates, wilson_interval

GP_ID = REPO / "data" / "eval" / "gp-id.jsonl"
GP_OOD = REPO / "data" / "eval" / "gp-rule-ood.jsonl"


def test_wilson_interval_matches_hand_computed_values():
    rate = wilson_interval(10, 40)
    assert rate["value"] == 0.25
    assert rate["low"] == pytest.approx(0.14190, abs=1e-4)
    assert rate["high"] == pytest.approx(0.40187, abs=1e-4)
    assert wilson_interval(0, 20)["low"] == 0.0
    assert wilson_interval(0, 20)["high"] == pytest.approx(0.16113, abs=1e-4)
    assert wilson_interval(0, 0)["value"] is None


def test_a_scripted_player_with_a_known_rate_is_measured_exactly(tmp_path):
    player = ScriptedResponder(lambda episode, attempt: episode % 4 == 0)  # 1 in 4, first try only
    metrics = evaluate(player, GP_ID, limit=40, run_dir=tmp_path, name="id", progress=False)
    success = metrics["success_rate"]
    assert (success["successes"], success["trials"]) == (10, 40)
    assert success["low"] == pytest.approx(wilson_interval(10, 40)["low"])
    assert metrics["first_attempt_success"]["successes"] == 10
    assert metrics["per_step_accuracy"]["trials"] == 10 * 1 + 30 * 5
    assert metrics["mean_attempts"] == pytest.approx((10 + 30 * 5) / 40)
    assert metrics["outcome_histogram"] == {"correct": 10, "unparseable": 150}
    assert metrics["mean_return"] == pytest.approx((10 * 5 + 30 * (5 * -3 - 1)) / 40)
    folder = evaluation_folder(tmp_path, metrics["key"])
    assert metrics["folder"] == str(folder)
    assert folder.parent == tmp_path / "eval" / "id"
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["success_rate"] == success
    assert saved["split"] == "gp-id"
    assert saved["key"] == {
        "eval_set": "id",
        "env_id": "gp-l",
        "limit": 40,
        "max_attempts": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": 256,
        "seed": 0,
        "engine": "hf",
        "env_overrides": {},
    }
    assert len(read_episodes(folder / "episodes.jsonl")) == 40


def test_revisions_count_for_success_but_not_first_attempt():
    player = ScriptedResponder(lambda episode, attempt: attempt == 2)
    metrics = evaluate(player, GP_OOD, limit=12, progress=False)
    assert metrics["success_rate"]["value"] == 1.0
    assert metrics["first_attempt_success"]["value"] == 0.0
    assert metrics["per_step_accuracy"]["value"] == 0.5
    assert metrics["mean_attempts"] == 2.0
    assert metrics["split"] == "gp-rule-ood"


def test_env_overrides_change_the_budget():
    player = ScriptedResponder(lambda episode, attempt: attempt == 2)
    metrics = evaluate(player, GP_ID, limit=6, max_attempts=1, progress=False)
    assert metrics["success_rate"]["value"] == 0.0
    assert metrics["mean_attempts"] == 1.0


def test_recognition_accuracy_counts_checked_answers_only():
    def turn(ok):
        return Turn("a", 0.0, "wrong_value", "f", {"recognition_correct": ok})

    episodes = [Episode("gp-vl", {}, {}, "p", [turn(True), turn(False)]), Episode("gp-vl", {}, {}, "p", [turn(True)])]
    assert episode_metrics(episodes)["recognition_accuracy"]["value"] == pytest.approx(2 / 3)
    text = [Episode("gp-l", {}, {}, "p", [Turn("a", 0.0, "wrong_value", "f", {"recognition_correct": None})])]
    assert episode_metrics(text)["recognition_accuracy"] is None


def test_compare_rates_two_proportion_test():
    comparison = compare_rates(wilson_interval(30, 100), wilson_interval(50, 100))
    assert comparison["difference"] == pytest.approx(-0.2)
    assert comparison["z"] == pytest.approx(-0.2 / math.sqrt(0.4 * 0.6 * 0.02))
    assert comparison["p_value"] == pytest.approx(0.00389, abs=1e-4)
    assert comparison["significant"]
    assert comparison["low"] < -0.2 < comparison["high"] < 0
    same = compare_rates(wilson_interval(12, 40), wilson_interval(12, 40))
    assert same["p_value"] == pytest.approx(1.0)
    assert not same["significant"]
    with pytest.raises(ValueError):
        compare_rates(wilson_interval(0, 0), wilson_interval(1, 2))


def test_every_checkpoint_on_every_set_becomes_a_row(tmp_path, tiny_policy):
    for step in (10, 20):
        folder = tiny_policy.save(tmp_path / "checkpoints" / f"step-{step:06d}")
        (folder / "checkpoint.json").write_text(json.dumps({"step": step, "flops": step * 1e9, "tokens": 5 * step}))
    from sftrl_kit.models import SamplingConfig

    rows = evaluate_checkpoints(
        tmp_path,
        {"id": GP_ID, "ood": GP_OOD},
        limit=2,
        progress=False,
        sampling=SamplingConfig(temperature=0.0, max_new_tokens=8),
    )
    assert [(r["checkpoint"], r["eval_set"], r["step"]) for r in rows] == [
        ("step-000010", "id", 10),
        ("step-000010", "ood", 10),
        ("step-000020", "id", 20),
        ("step-000020", "ood", 20),
    ]
    assert rows[0]["flops"] == 1e10
    assert rows[0]["success_rate_trials"] == 2
    assert (rows[0]["limit"], rows[0]["max_attempts"], rows[0]["max_new_tokens"]) == (2, 5, 8)
    assert len(load_evaluations(tmp_path / "checkpoints" / "step-000020", "ood")) == 1
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        evaluate_checkpoints(tmp_path / "empty", {"id": GP_ID})


def test_failure_modes_count_the_trained_rule_leaking_into_the_new_one():
    from sftrl_kit.evaluation import failure_modes

    episodes = [
        Episode(
            "gp-l",
            {},
            {},
            "p",
            [
                Turn("x" * 700, -3.0, "unparseable", "f"),
                Turn("a", -2.0, "numbers_mismatch", "f", {"other_rule_used": True}),
            ],
        ),
        Episode(
            "virl-l",
            {},
            {},
            "p",
            [Turn("b", -1.0, "invalid_action", "f", {"other_rule_used": True}), Turn("c", -3.0, "unparseable", "f")],
        ),
    ]
    modes = failure_modes(episodes)
    assert modes["answers"] == 4
    assert modes["other_rule_used"]["count"] == 2
    assert modes["other_rule_used"]["examples"] == [0, 1]
    assert modes["unparseable"]["count"] == 2
    assert modes["rambling"]["count"] == 1
    assert failure_modes([])["unparseable"]["share"] is None
    assert modes["other_rule_used"]["rate"]["successes"] == 2
    assert modes["other_rule_used"]["rate"]["trials"] == 4


def test_failure_examples_pick_the_episodes_of_the_asked_modes():
    from sftrl_kit.evaluation import failure_examples

    clean = Episode("gp-l", {}, {}, "p", [Turn("a", 5.0, "correct", "ok")], True)
    leaked = Episode("gp-l", {}, {}, "p", [Turn("a", -1.0, "wrong_value", "f", {"other_rule_used": True})])
    garbled = Episode("gp-l", {}, {}, "p", [Turn("zzz", -3.0, "unparseable", "f")])
    episodes = [clean, leaked, garbled]
    assert failure_examples(episodes) == [leaked, garbled]
    assert failure_examples(episodes, modes=["other_rule_used"]) == [leaked]


def test_the_validity_rate_counts_well_formed_answers_under_the_scored_rule_apart_from_success():
    """Five answers to one rule-OOD hand through the real verifier: right; each card's
    number under J=11.. once but another value (valid, not right); the trained rule's 10
    for the face card (the memorisation signature: invalid); an illegal formula; prose."""
    from sftrl_kit.envs import make
    from sftrl_kit.episodes import Episode, Turn
    from sftrl_kit.evaluation import failure_modes

    env = make("gp-l", face_rule="ordinal")
    task = {"hand": ["QS", "2C", "AS", "10H"], "image_seed": 0}  # 12, 2, 1, 10 under J=11, Q=12, K=13
    answers = {
        '{"formula": "12*2*1+10-10"}': None,  # uses 10 twice: not each card once
        '{"formula": "(12+10+2)*1"}': "correct",
        '{"formula": "12+2+1+10"}': "wrong_value",
        '{"formula": "(10+10+2)*1"}': "numbers_mismatch",
        '{"formula": "12+2+(1+10"}': "illegal_formula",
        "twenty-four": "unparseable",
    }
    turns = []
    for text, expected in answers.items():
        env.reset(options={"task": task})
        _, reward, *_, info = env.step(text)
        if expected is not None:
            assert info["verdict"]["outcome"] == expected
        turns.append(Turn(text, reward, info["verdict"]["outcome"], "f", info["verdict"]))
    modes = failure_modes([Episode("gp-l", {}, {}, "p", turns)])
    assert modes["valid"]["count"] == 2  # correct and wrong_value: success is 1 of them
    assert modes["valid"]["rate"]["trials"] == len(answers)
