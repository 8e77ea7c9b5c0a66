"""The critiques' arms of the SFT branch (issue 26, part 2): face-card mappings stated in
the prompt, rejection-sampled self-SFT, and SFT matched on PPO's rollouts or correct ones."""

import json
import re
import shutil

import pytest
from scripted import ScriptedResponder

from sftrl_kit import study
from sftrl_kit.data import SFT_MAPPINGS, expert_records, load_sft_dataset, sft_seed
from sftrl_kit.envs import make
from sftrl_kit.envs.general_points import Card, GPConfig, card_value, rule_text, verify
from sftrl_kit.envs.general_points.cards import face_values
from sftrl_kit.episodes import Episode, Turn, write_jsonl
from sftrl_kit.run_folder import checkpoint_dir, episodes_file, read_counters, write_counters


def test_a_mapping_values_the_face_cards_as_written_and_the_prompt_states_it():
    assert face_values("5-6-7") == (5, 6, 7)
    assert [card_value(rank, "2-4-6") for rank in ("J", "Q", "K", "7", "A")] == [2, 4, 6, 7, 1]
    assert face_values("10-10-10") == face_values("ten")
    assert face_values("11-12-13") == face_values("ordinal")
    assert rule_text("5-6-7") == "J counts as 5, Q as 6 and K as 7"
    assert rule_text("3-3-3") == "J, Q and K each count as 3"
    assert rule_text("ten") == "J, Q and K each count as 10"  # the paper's wordings, unchanged
    assert rule_text("ordinal") == "J counts as 11, Q as 12 and K as 13"
    env = make("gp-l", face_rule="2-4-6")
    observation, _ = env.reset(seed=3)
    assert "J counts as 2, Q as 4 and K as 6" in observation.text


@pytest.mark.parametrize(
    "bad", ["", "5-5", "0-1-2", "14-1-1", "a-b-c", "5-5-5-5", " 5-5-5", "-1-2-3", "٥-٥-٥", None, 7]
)
def test_a_face_rule_that_is_no_rule_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="face_rule must be one of"):
        GPConfig(face_rule=bad)
    if bad is not None:  # prompt_face_rule=None: the prompt states face_rule
        with pytest.raises(ValueError, match="face_rule must be one of"):
            GPConfig(prompt_face_rule=bad)


def test_the_verifier_scores_a_mapping_and_marks_answers_that_keep_the_trained_tens():
    hand = [Card.from_code(code) for code in ("QS", "3H", "2C", "AD")]  # Q = 4 under 2-4-6
    config = GPConfig(face_rule="2-4-6")
    right = json.dumps({"cards": ["Q", "3", "2", "A"], "number": [4, 3, 2, 1], "formula": "4*3*2*1=24"})
    tens = json.dumps({"cards": ["Q", "3", "2", "A"], "number": [10, 3, 2, 1], "formula": "(10+2)*(3-1)=24"})
    assert verify(right, hand, config).outcome == "correct"
    kept_tens = verify(tens, hand, config)
    assert kept_tens.outcome == "numbers_mismatch"
    assert kept_tens.other_rule_used
    assert kept_tens.numbers_rule == "other"  # the signature the study counts: the trained rule's values


def _stated_rule(prompt: str) -> str:
    """The face-card rule a prompt states, read back from its words (not from the kit's record)."""
    equal = re.search(r"J, Q and K each count as (\d+)", prompt)
    if equal:
        return "-".join([equal.group(1)] * 3)
    j, q, k = re.search(r"J counts as (\d+), Q as (\d+) and K as (\d+)", prompt).groups()
    return f"{j}-{q}-{k}"


def test_mapping_records_take_every_mapping_in_turn_hold_out_11_12_13_and_answer_each_prompts_rule():
    records = list(expert_records("gp-l", 40, rules="mappings"))
    assert len(records) == 40
    stated = [_stated_rule(r["messages"][0]["content"]) for r in records]
    assert stated[: len(SFT_MAPPINGS)] == ["-".join(map(str, face_values(m))) for m in SFT_MAPPINGS]
    assert "11-12-13" not in stated
    assert len(set(stated)) == len(SFT_MAPPINGS)
    for record, rule in zip(records, stated):
        hand = [Card.from_code(code) for code in record["task"]["hand"]]
        answer = record["messages"][-1]["content"]
        assert verify(answer, hand, GPConfig(face_rule=rule)).outcome == "correct", (rule, answer)
        if rule != "10-10-10":
            assert any(card.rank in "JQK" for card in hand)  # the stated values are needed
    assert len({r["seed"] for r in records}) == 40  # forty different deals
    assert records == list(expert_records("gp-l", 40, rules="mappings"))


def test_the_mapping_and_self_arms_are_generalpoints_arms():
    with pytest.raises(ValueError, match="has none"):
        list(expert_records("virl-l", 4, rules="mappings"))
    with pytest.raises(ValueError, match="no face cards"):
        study.StudySettings(task="virl-l", sft_data="self")
    with pytest.raises(ValueError, match="sft_data must be one of"):
        study.StudySettings(sft_data="rft")
    with pytest.raises(ValueError, match="sft_match must be one of"):
        study.StudySettings(sft_match="tokens")


def test_each_arm_trains_into_a_folder_of_its_own():
    def name(**fields):
        return study.StudySettings(**fields).sft_branch_name

    assert name() == "sft"  # the paper's branch keeps its folder
    assert name(sft_data="mappings") == "sft-mappings"
    assert name(sft_match="rollouts") == "sft-per-rollouts"
    assert name(sft_data="self", sft_match="correct") == "sft-self-per-correct"


def _ppo_run_with_episodes(root, wins_per_update):
    """A PPO run folder holding, per update, episodes of which the first k succeeded."""
    run = root / "ppo"
    for update, (played, won) in enumerate(wins_per_update, start=1):
        episodes = [
            Episode("gp-l", {}, {}, "p", [Turn("a", 5.0 if i < won else -3.0, "x", "f")], success=i < won)
            for i in range(played)
        ]
        write_jsonl(episodes_file(run, update), (e.to_json() for e in episodes))
    write_counters(checkpoint_dir(run, "ppo", len(wins_per_update)), {"method": "ppo", "step": 2, "gflops": 1.0})
    return run


def test_sft_matched_on_rollouts_takes_one_sequence_per_episode_and_on_correct_one_per_win(tmp_path):
    ppo_run = _ppo_run_with_episodes(tmp_path, [(8, 1), (5, 2)])  # 13 episodes, 3 won
    start = tmp_path / "start"
    settings = study.StudySettings(sft_batch_size=4)
    assert study.matched_sft_steps(study.StudySettings(sft_batch_size=4, sft_match="rollouts"), start, ppo_run) == 4
    assert study.matched_sft_steps(study.StudySettings(sft_batch_size=4, sft_match="correct"), start, ppo_run) == 1
    write_counters(start, {"step": 10, "tokens": 1000, "num_parameters": 1_000_000, "method": "sft"})
    assert study.matched_sft_steps(settings, start, ppo_run) == study.sft_steps_for(1.0, start)
    lost = _ppo_run_with_episodes(tmp_path / "lost", [(8, 0)])
    with pytest.raises(ValueError, match="no correct episodes to match"):
        study.matched_sft_steps(study.StudySettings(sft_match="correct"), start, lost)


class _Refuses:
    def respond(self, conversations, sampling, with_logprobs=True):
        raise AssertionError("a stored self-SFT file was sampled again")


def test_self_sft_keeps_exactly_the_answers_the_verifier_scores_correct(tmp_path):
    settings = study.StudySettings(sft_data="self", sft_records=12, max_new_tokens=64)
    start = checkpoint_dir(tmp_path / "sft-start", "sft", 24)  # the trainers' layout
    player = ScriptedResponder(lambda episode, attempt: episode % 3 == 0)  # right on 4 of 12 deals
    path = study.self_sft_data(settings, tmp_path, start, responder=player)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 4
    assert {r["kind"] for r in records} == {"self"}
    deals = {sft_seed("gp-l") + i for i in range(12)}  # the expert records' deals
    for record in records:
        assert record["seed"] in deals
        env = make("gp-l", **study.training_config("gp-l"))
        observation, _ = env.reset(seed=record["seed"])
        assert record["messages"][0]["content"] == observation.text
        hand = [Card.from_code(code) for code in record["task"]["hand"]]
        answer = record["messages"][-1]["content"]
        assert verify(answer, hand, GPConfig()).outcome == "correct"
        assert json.loads(answer)["number"] == [card_value(c.rank, "ten") for c in hand]
    assert path.name == "gp-l-self-sft-start-step-000024-12.jsonl"  # named after its start
    assert json.loads(path.with_suffix(".json").read_text())["kept"] == 4
    assert len(load_sft_dataset(path)) == 4  # what the SFT trainer reads
    assert study.self_sft_data(settings, tmp_path, start, responder=_Refuses()) == path


def test_self_sft_from_a_start_that_never_wins_is_an_error_and_writes_nothing(tmp_path):
    settings = study.StudySettings(sft_data="self", sft_records=6, max_new_tokens=64)
    start = checkpoint_dir(tmp_path / "sft-start", "sft", 24)  # the trainers' layout
    with pytest.raises(ValueError, match="answered none of 6 training deals correctly"):
        study.self_sft_data(settings, tmp_path, start, responder=ScriptedResponder(lambda e, a: False))
    assert not list((tmp_path / "data").glob("*self*"))


def test_an_arm_runs_beside_the_papers_branch_and_reuses_its_start_and_ppo(tmp_path):
    """The smoke study (tiny model, evaluation left out) with the paper's branch, then the
    mapping arm matched on rollouts in the same folder: the start and PPO are reused."""
    from sftrl_kit.presets import SMOKE

    base = study.replace(SMOKE.study, engine="hf", ppo_updates=1, eval_sets=[], checkpoints=1)
    first = study.run_study(base, tmp_path, progress=False)
    trained = {run: read_counters(study.last_checkpoint(run)) for run in (first.start.parents[1], first.ppo)}
    arm = study.replace(base, sft_data="mappings", sft_match="rollouts")
    second = study.run_study(arm, tmp_path, progress=False)
    assert (second.start, second.ppo) == (first.start, first.ppo)
    assert {run: read_counters(study.last_checkpoint(run)) for run in (second.start.parents[1], second.ppo)} == trained
    assert (first.sft.name, second.sft.name) == ("sft", "sft-mappings-per-rollouts")
    assert study.list_checkpoints(first.sft)  # the paper's branch is still there
    rollouts = base.ppo_updates * base.episodes_per_update
    assert read_counters(study.last_checkpoint(second.sft))["step"] == -(-rollouts // base.sft_batch_size)
    assert (tmp_path / "data" / f"gp-l-expert-mappings-{base.sft_records}.jsonl").is_file()


def test_an_arms_flops_match_counts_its_own_records_as_the_sft_trainer_does(tmp_path):
    """Self-SFT's records are shorter than the start's, so its steps come from its own
    records: the estimate is checked against what TRL's SFT trainer counts when it trains
    on them (every record the same, so a step's tokens are exact)."""
    from sftrl_kit.data import write_sft_dataset
    from sftrl_kit.models.loading import resolve_model
    from sftrl_kit.train.sft import SFTSettings, train_sft

    tiny = resolve_model("tiny")
    dataset = tmp_path / "self.jsonl"
    write_sft_dataset(dataset, [next(iter(expert_records("gp-l", 1)))] * 8)
    estimate = study.dataset_tokens_per_step(dataset, tiny, batch_size=4)
    run = train_sft(
        SFTSettings(
            model=str(tiny),
            dataset=str(dataset),
            run_dir=str(tmp_path / "sft"),
            max_steps=2,
            batch_size=4,
            save_steps=2,
            logging_steps=1,
        )
    )
    counted = read_counters(study.last_checkpoint(run))
    assert counted["tokens"] / counted["step"] == pytest.approx(estimate)

    # The start measured 1,000 tokens a step; the arm's records give `estimate`.
    start = tmp_path / "start"
    shutil.copytree(tiny, start)  # a checkpoint with the tiny model's tokenizer
    write_counters(start, {"step": 10, "tokens": 10_000, "num_parameters": 1_000_000, "method": "sft"})
    ppo_run = _ppo_run_with_episodes(tmp_path / "ppo", [(8, 1)])
    target = read_counters(study.last_checkpoint(ppo_run))["gflops"]
    arm = study.StudySettings(sft_data="self", sft_batch_size=4)
    assert study.matched_sft_steps(arm, start, ppo_run, dataset) == study.sft_steps_for(target, start, estimate)
    paper = study.StudySettings(sft_batch_size=4)
    assert study.matched_sft_steps(paper, start, ppo_run, dataset) == study.sft_steps_for(target, start)
