import json

import pytest
from conftest import REPO, synthetic_run
from scripted import ScriptedResponder

from sftrl_kit import plots, study, tables
from sftrl_kit.evaluation import evaluate, evaluate_model, evaluation_key, load_evaluations, select_evaluation
from sftrl_kit.models import SamplingConfig
from sftrl_kit.run_folder import checkpoint_dir, key_digest, write_counters

GP_ID = REPO / "data" / "eval" / "gp-id.jsonl"
SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=64)


def test_what_moved_compares_each_run_to_its_start_and_the_branches_ends(tmp_path):
    rl = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8), (30, 30)])
    sft = synthetic_run(tmp_path, "sft", "sft", [(10, 6), (30, 4), (40, 2)])
    rows = tables.what_moved([rl, sft], ["id", "ood"])
    by_label = {(r["comparison"], r["eval_set"]): r for r in rows}
    assert len(rows) == 6
    ood_rl = by_label[("rl: end - start", "ood")]
    assert ood_rl["A"].startswith("30/50 = 60.0%")
    assert ood_rl["B"].startswith("6/50 = 12.0%")
    assert ood_rl["A - B (points)"].startswith("+48.0 [")
    assert ood_rl["significant"]
    assert ood_rl["p"] < 0.001
    assert ood_rl["test"] == "McNemar exact (paired by task)"
    assert ood_rl["max_attempts"] == 5
    same = by_label[("rl: end - start", "id")]
    assert same["A - B (points)"].startswith("+40.0")
    assert same["GFLOPs A"] == 20.0
    assert same["GFLOPs B"] == 0.0
    assert same["p"] == pytest.approx(2 * 0.5**20)  # 20 tasks solved at the end only: McNemar's exact p
    ends = by_label[("rl end - sft end", "ood")]
    assert ends["A"].startswith("30/50")
    assert ends["B"].startswith("2/50")
    assert ends["significant"]
    per_answer = tables.what_moved([rl], ["ood"], metric="per_step_accuracy")[0]
    assert per_answer["test"].startswith("paired z, cluster-robust")


def test_what_moved_skips_runs_with_one_evaluated_checkpoint(tmp_path):
    lone = synthetic_run(tmp_path, "lone", "ppo", [(10, 6)])
    assert tables.what_moved([lone], ["id"]) == []


def test_tables_and_figures_refuse_evaluations_at_mixed_budgets(tmp_path):
    run = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8)], budget={"id": 5, "ood": 2})
    rows = tables.checkpoint_rows([run])
    with pytest.raises(ValueError, match="max_attempts: 5, 2"):
        plots.plot_curves(rows, eval_sets=["id", "ood"])
    with pytest.raises(ValueError, match="max_attempts: 5, 2"):
        tables.what_moved([run], ["id", "ood"])
    with pytest.raises(ValueError, match="max_attempts: 5, 2"):
        tables.write_table(rows, tmp_path, "mixed")
    tables.write_table(rows, tmp_path, "budgets", vary=["max_attempts"])  # a table meant to compare budgets
    assert len(tables.what_moved([run], ["id"])) == 1  # one budget per set: fine
    assert len(tables.change_from_start(rows, "ood")) == 1


def test_a_second_budget_on_the_same_checkpoints_is_kept_apart_by_the_keys(tmp_path):
    run = synthetic_run(tmp_path, "rl", "ppo", [(10, 6), (20, 8)], budget=5)
    synthetic_run(tmp_path, "rl", "ppo", [(1, 1), (2, 2)], budget=2)  # the same checkpoints, evaluated at budget 2
    with pytest.raises(ValueError, match="max_attempts: 2, 5"):
        tables.what_moved([run], ["id"])
    with pytest.raises(ValueError, match="max_attempts: 2, 5"):
        tables.change_from_start(tables.checkpoint_rows([run]), "id")
    at_5 = tables.what_moved([run], ["id"], keys={"id": {"max_attempts": 5}})
    assert at_5[0]["A"].startswith("20/50")
    assert at_5[0]["max_attempts"] == 5
    rows = tables.checkpoint_rows([run], keys={"id": {"max_attempts": 2}})
    assert [r["success_rate_successes"] for r in rows] == [1, 2]
    assert {r["eval_set"] for r in rows} == {"id"}


def test_two_evaluations_of_one_checkpoint_at_budgets_2_and_5_both_survive(tmp_path):
    player = ScriptedResponder(lambda episode, attempt: attempt == 3)
    sets = {"gp-id": GP_ID}
    at_2 = evaluate_model(player, tmp_path, sets, limit=6, progress=False, max_attempts=2)["gp-id"]
    at_5 = evaluate_model(player, tmp_path, sets, limit=6, progress=False, max_attempts=5)["gp-id"]
    assert at_2["success_rate"]["value"] == 0.0
    assert at_5["success_rate"]["value"] == 1.0
    kept = {m["key"]["max_attempts"]: m["success_rate"]["value"] for m in load_evaluations(tmp_path, "gp-id")}
    assert kept == {2: 0.0, 5: 1.0}
    with pytest.raises(ValueError, match="differ in max_attempts: 2, 5"):
        select_evaluation(tmp_path, "gp-id")
    assert select_evaluation(tmp_path, "gp-id", {"max_attempts": 2})["success_rate"]["value"] == 0.0
    with pytest.raises(FileNotFoundError, match="max_attempts=3"):
        select_evaluation(tmp_path, "gp-id", {"max_attempts": 3})
    assert select_evaluation(tmp_path, "gp-id", at_5["key"])["folder"] == at_5["folder"]


def test_an_identical_key_is_reused_not_run_again(tmp_path):
    calls = []
    player = ScriptedResponder(lambda episode, attempt: calls.append(episode) or episode % 2 == 0)
    sets = {"gp-id": GP_ID}
    first = evaluate_model(player, tmp_path, sets, limit=4, progress=False, max_attempts=2)["gp-id"]
    played = len(calls)
    again = evaluate_model(player, tmp_path, sets, limit=4, progress=False, max_attempts=2)["gp-id"]
    assert played > 0
    assert len(calls) == played
    assert again["success_rate"] == first["success_rate"]
    assert again["folder"] == first["folder"]
    with pytest.raises(FileExistsError, match="already holds this evaluation"):
        evaluate(player, GP_ID, limit=4, run_dir=tmp_path, name="gp-id", progress=False, max_attempts=2)
    assert len(calls) == played


def test_keys_resolve_defaults_so_equal_evaluations_get_equal_keys():
    records = [json.loads(line) for line in GP_ID.read_text().splitlines()]
    key = evaluation_key("gp-id", records, "gp-l", SamplingConfig(temperature=0, max_new_tokens=64), engine="hf")
    assert key["limit"] == len(records) == 300
    assert key["max_attempts"] == 5
    assert key["temperature"] == 0.0
    same = evaluation_key(
        "gp-id",
        records,
        "gp-l",
        SamplingConfig(temperature=0.0, max_new_tokens=64),
        limit=1000,
        engine="hf",
        max_attempts=5,
    )
    assert key_digest(same) == key_digest(key)
    for changed in ({"limit": 40}, {"max_attempts": 2}):
        other = evaluation_key(
            "gp-id", records, "gp-l", SamplingConfig(temperature=0, max_new_tokens=64), engine="hf", **changed
        )
        assert key_digest(other) != key_digest(key)
    assert key_digest(evaluation_key("gp-id", records, "gp-l", SAMPLING, engine="vllm")) != key_digest(
        evaluation_key("gp-id", records, "gp-l", SAMPLING, engine="hf")
    )


def test_study_settings_name_the_evaluations_they_write(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    settings = study.StudySettings(
        eval_sets=["gp-id"], eval_limit=3, eval_max_attempts=2, max_new_tokens=16, engine="hf"
    )  # a scripted responder's evaluations are recorded as the HF engine's
    player = ScriptedResponder(lambda episode, attempt: True)
    evaluate_model(
        player, tmp_path, {"gp-id": GP_ID}, "gp-l", settings.eval_sampling(), limit=3, progress=False, max_attempts=2
    )
    assert select_evaluation(tmp_path, "gp-id", settings.eval_keys()["gp-id"])["success_rate"]["value"] == 1.0
    assert study.eval_episodes(tmp_path, "gp-id", settings.eval_keys()["gp-id"])[0].success


def test_an_old_layout_folder_is_an_error_not_a_number(tmp_path):
    old = tmp_path / "eval" / "gp-id"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text(json.dumps({"success_rate": {"successes": 1, "trials": 2}}))
    with pytest.raises(ValueError, match="old layout"):
        load_evaluations(tmp_path)
    with pytest.raises(ValueError, match="old layout"):
        evaluate_model(ScriptedResponder(lambda e, a: True), tmp_path, {"gp-id": GP_ID}, limit=2, progress=False)


def test_the_start_is_copied_to_step_zero_without_overwriting(tmp_path):
    start = checkpoint_dir(synthetic_run(tmp_path, "start", "sft", [(5, 5)]), "sft", 0)
    run = checkpoint_dir(synthetic_run(tmp_path, "ppo", "ppo", [(9, 9)], budget=2), "ppo", 0)
    study._copy_evaluations(start, run)
    kept = {(m["key"]["eval_set"], m["key"]["max_attempts"]): m for m in load_evaluations(run)}
    assert set(kept) == {("id", 2), ("ood", 2), ("id", 5), ("ood", 5)}
    assert kept[("id", 5)]["copied_from"] == str(start)
    assert "copied_from" not in kept[("id", 2)]
    assert kept[("id", 2)]["success_rate"]["successes"] == 9


def test_evaluate_runs_copies_the_start_to_step_zero_and_reuses_what_is_there(tmp_path, tiny_policy, monkeypatch):
    monkeypatch.chdir(REPO)
    settings = study.StudySettings(eval_sets=["gp-id"], eval_limit=2, eval_max_attempts=1, max_new_tokens=8)
    start = tiny_policy.save(tmp_path / "start" / "checkpoints" / "step-000004")
    write_counters(start, {"method": "sft", "step": 4, "gflops": 1.0})
    for step in (0, 2):
        write_counters(
            tiny_policy.save(checkpoint_dir(tmp_path / "ppo", "ppo", step)),
            {"method": "ppo", "step": step, "gflops": 1.0 + step},
        )
    rows = study.evaluate_runs(settings, [tmp_path / "ppo"], start=start, progress=False)
    assert [(r["run"], r["checkpoint"], r["step"], r["eval_set"]) for r in rows] == [
        ("ppo", "update-0000", 0, "gp-id"),
        ("ppo", "update-0002", 2, "gp-id"),
    ]
    assert (rows[0]["limit"], rows[0]["max_attempts"], rows[0]["success_rate_trials"]) == (2, 1, 2)
    at_start = select_evaluation(start, "gp-id", settings.eval_keys()["gp-id"])
    step_zero = select_evaluation(tmp_path / "ppo" / "checkpoints" / "update-0000", "gp-id")
    assert step_zero["copied_from"] == str(start)
    assert step_zero["success_rate"] == at_start["success_rate"]
    assert "copied_from" not in select_evaluation(tmp_path / "ppo" / "checkpoints" / "update-0002", "gp-id")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded: an evaluation with the same settings was not reused")

    monkeypatch.setattr("sftrl_kit.models.load_policy", no_model)
    assert study.evaluate_runs(settings, [tmp_path / "ppo"], start=start, progress=False) == rows


def test_sft_steps_match_a_flops_target(tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    (start / "checkpoint.json").write_text(json.dumps({"step": 10, "tokens": 1000, "num_parameters": 1_000_000}))
    # X_SFT = 6 N (D_init + D): 6e6 * (1000 + 300 * steps) flops; 100 tokens per step
    target_gflops = 6e6 * (1000 + 2450) / 1e9
    assert study.sft_steps_for(target_gflops, start) == 25  # 24.5 steps, rounded up
    assert study.sft_steps_for(0.0, start) == 1


def test_find_runs_reads_the_folder_then_its_subfolders_and_never_another_study(tmp_path, monkeypatch):
    """A notebook opened by hand must chain or refuse: a newer study (a smoke run, say)
    under the runs root is never picked up in place of the folder it was given."""
    monkeypatch.setenv("SFTRL_RUNS", str(tmp_path / "runs"))
    other = tmp_path / "runs" / "20260101-000000-smoke"
    synthetic_run(other, "ppo", "ppo", [(1, 1), (2, 2)])
    here = tmp_path / "here"
    synthetic_run(here / "quickstart-gp-l", "ppo", "ppo", [(1, 1), (2, 2)])
    synthetic_run(here / "quickstart-gp-l", "sft-start", "sft", [(1, 1)])
    runs, start = study.find_runs(here)
    assert runs == [here / "quickstart-gp-l" / "ppo"]
    assert start.name == "step-000000"
    synthetic_run(here, "sft", "sft", [(1, 1), (2, 2)])
    runs, start = study.find_runs(here)
    assert runs == [here / "sft"]  # the folder's own runs come before its subfolders'
    assert start is None
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no training runs in .*nothing: 03_sft and 04_ppo_launch"):
        study.find_runs(tmp_path / "nothing")


def test_find_runs_of_a_task_passes_over_the_studies_of_other_tasks(tmp_path):
    """The smoke batch runs 06 (a GP-VL study) after 00 (GP-L) in one folder: 07 on gp-l
    must not pick up 06's runs, nor a PPO run of another environment."""
    here = tmp_path / "study"
    synthetic_run(study.quickstart_dir(here, study.StudySettings(task="gp-l")), "ppo", "ppo", [(1, 1)])
    synthetic_run(study.quickstart_dir(here, study.StudySettings(task="gp-vl")), "ppo", "ppo", [(1, 1)])
    virl = synthetic_run(here / "virl", "ppo", "ppo", [(1, 1)])
    (virl / "ppo.yaml").write_text("env_id: virl-l\nengine: vllm\nfield_of_a_later_version: 1\n")
    corrupt = synthetic_run(here / "corrupt", "ppo", "ppo", [(1, 1)])
    (corrupt / "ppo.yaml").write_text("env_id: [gp-l\n")  # unreadable: passed over, not fatal
    assert study.find_runs(here, "gp-l")[0] == [here / "quickstart-gp-l" / "ppo"]
    assert study.find_runs(here, "gp-vl")[0] == [here / "quickstart-gp-vl" / "ppo"]
    assert study.find_runs(here, "virl-l")[0] == [virl]
    with pytest.raises(FileNotFoundError, match="of task 'virl-vl'"):
        study.find_runs(here, "virl-vl")


def test_shared_start_names_the_notebook_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shared start in .*sft-start: 03_sft"):
        study.shared_start(tmp_path / "sft-start")


def test_compute_match_says_when_two_runs_are_not_at_matched_gflops(tmp_path):
    ppo = synthetic_run(tmp_path, "ppo", "ppo", [(1, 1), (2, 2)])
    sft = synthetic_run(tmp_path, "sft", "sft", [(1, 1), (2, 2)])
    line = study.compute_match([ppo, sft])
    assert line.endswith(": matched")
    last = study.last_checkpoint(sft) / "checkpoint.json"
    counters = json.loads(last.read_text())
    last.write_text(json.dumps({**counters, "gflops": 1.5 * counters["gflops"]}))
    assert "NOT matched" in study.compute_match([ppo, sft])
    assert "33.3% apart" in study.compute_match([ppo, sft])


def test_tables_are_written_as_csv_and_json(tmp_path):
    path = tables.write_table([{"a": 1, "b": "x"}, {"a": 2, "c": True}], tmp_path, "t")
    assert path.read_text().splitlines() == ["a,b,c", "1,x,", "2,,True"]
    assert json.loads((tmp_path / "tables" / "t.json").read_text())[1] == {"a": 2, "c": True}


def test_ppo_settings_are_the_branchs_and_04s_one_source(tmp_path):
    """ppo_branch and notebook 04 build PPOSettings through study.ppo_settings: the study's
    sizes mapped onto PPO's fields, D_init from the start checkpoint, overrides last."""
    start = tmp_path / "sft-start" / "checkpoints" / "step-000016"
    start.mkdir(parents=True)
    write_counters(start, {"method": "sft", "step": 16, "tokens": 12345, "gflops": 1.0})
    settings = study.StudySettings(ppo_updates=7, episodes_per_update=12, checkpoints=3, train_max_attempts=4)
    ppo = study.ppo_settings(settings, tmp_path, start, advantage="grpo", group_size=2)
    assert (ppo.model, ppo.run_dir, ppo.init_tokens) == (str(start), str(tmp_path / "ppo"), 12345)
    assert (ppo.updates, ppo.episodes_per_update, ppo.rollout_batch_size, ppo.minibatch_size) == (7, 12, 12, 12)
    assert (ppo.save_every, ppo.max_attempts, ppo.advantage, ppo.group_size) == (3, 4, "grpo", 2)  # ceil(7 / 3)
    assert study.ppo_settings(settings, tmp_path, "tiny").init_tokens == 0  # a base model has no D_init


def test_the_image_tasks_add_a_visual_ood_set_and_their_own_models(tmp_path):
    gp_vl = study.StudySettings(task="gp-vl")
    assert gp_vl.task_info.vision
    assert gp_vl.task_info.env_id == "gp-vl"
    assert gp_vl.eval_set_names == ["gp-id", "gp-rule-ood", "gp-visual-ood"]
    assert gp_vl.headline_sets == gp_vl.eval_set_names
    assert study.StudySettings(task="gp-vl", fake_rule=True).eval_set_names[-1] == "gp-fake-rule"
    assert gp_vl.validation().eval_set_names == ["gp-val-id", "gp-val-rule-ood"]  # the pick reads no visual set
    assert study.StudySettings(task="virl-vl").task_info.visual_ood_set == "virl-visual-ood"
    assert (gp_vl.base_model, study.StudySettings(task="gp-vl", model="tiny").base_model) == ("default-vl", "tiny-vl")
    assert study.StudySettings(task="gp-l", model="tiny").base_model == "tiny"
    assert study.StudySettings(task="gp-vl", model="/my/folder").base_model == "/my/folder"
    assert gp_vl.eval_keys()["gp-visual-ood"]["engine"] == "hf"  # what evaluate_model records for a VLM
    assert study.quickstart_dir(tmp_path, gp_vl) != study.quickstart_dir(tmp_path, study.StudySettings())


def test_an_image_task_refuses_a_text_model_before_training(tmp_path):
    from sftrl_kit.models import resolve_model

    text_model = str(resolve_model("tiny"))  # a folder: taken as it is
    settings = study.StudySettings(task="gp-vl", model=text_model)
    with pytest.raises(ValueError, match="task gp-vl shows images; .* is a text-only model"):
        study.sft_start(settings, tmp_path, tmp_path / "d.jsonl")
    assert not (tmp_path / "sft-start").exists()


class FirstAnswerCards:
    """A GP-VL player whose first answers name the cards it is shown (the deals of even
    position in the set) or four aces (odd position); every retry is unreadable."""

    def __init__(self, records):
        self.hands = [r["task"]["hand"] for r in records]
        self.first_call = True

    def respond(self, conversations, sampling, with_logprobs=True):
        from sftrl_kit.models import Generation

        out = []
        for position, _conversation in enumerate(conversations):
            ranks = [card[:-1] for card in self.hands[position]] if position % 2 == 0 else ["A"] * 4
            text = json.dumps({"cards": ranks, "number": [1, 1, 1, 1], "formula": "1+1+1+1=24"})
            out.append(Generation(text if self.first_call else "I am not sure.", [1], [2], None))
        self.first_call = False
        return out


def test_misread_episodes_are_those_whose_reading_failed(tmp_path):
    from sftrl_kit.data import load_eval_set

    path = REPO / "data" / "eval" / "gp-visual-ood.jsonl"
    records = load_eval_set(path)[:4]
    assert all(r["task"]["hand"].count("A") < 4 for r in records)  # four aces misread every hand
    evaluate_model(
        FirstAnswerCards(records),
        tmp_path,
        {"gp-visual-ood": path},
        env_id="gp-vl",
        limit=4,
        progress=False,
        max_attempts=2,
    )
    misread = study.misread_episodes(tmp_path, "gp-visual-ood")
    assert [e.seed for e in misread] == [records[1]["seed"], records[3]["seed"]]
    metrics = select_evaluation(tmp_path, "gp-visual-ood")
    # every answer is checked: the two right readings of 8 answers (the retries are unreadable)
    assert (metrics["recognition_accuracy"]["successes"], metrics["recognition_accuracy"]["trials"]) == (2, 8)
