"""The presets: one place that says how big each run is, and how a notebook's parameters
and `-p` change it."""

import dataclasses
import math

import pytest
from conftest import REPO

from sftrl_kit import presets, study
from sftrl_kit.notebook import notebook_start


def test_quickstart_sizes_are_the_measured_ones():
    """The quickstart's sizes, written out: the README's measured time and numbers are
    for exactly these (re-budgeted with the vLLM engine: 4 PPO updates, 100 deals per set)."""
    quickstart = presets.PRESETS["quickstart"].study
    assert dataclasses.asdict(quickstart) == {
        "task": "gp-l",
        "model": "default",
        "sft_records": 2000,
        "start_rules": "both",
        "start_steps": 24,
        "start_checkpoints": 1,
        "start_learning_rate": 1e-4,
        "sft_learning_rate": 1e-4,
        "sft_batch_size": 8,
        "prompt_variants": False,
        "reasoning": False,
        "sft_data": "expert",
        "sft_match": "flops",
        "ppo_updates": 6,
        "episodes_per_update": 8,
        "ppo_epochs": 1,
        "ppo_minibatch_size": None,
        "ppo_learning_rate": 1e-5,
        "advantage": "gae",
        "group_size": 1,
        "train_max_attempts": 2,
        "max_new_tokens": None,
        "temperature": 1.0,
        "checkpoints": 2,
        "eval_sets": None,
        "fake_rule": False,
        "eval_limit": 100,
        "eval_max_attempts": 2,
        "seed": 0,
        "engine": "auto",
    }
    assert quickstart.new_tokens == 64
    assert presets.PRESETS["quickstart"].notebooks == ("00_quickstart",)


def test_study_and_smoke_sizes_and_their_notebooks():
    study_preset, smoke = presets.PRESETS["study"], presets.PRESETS["smoke"]
    assert study_preset.notebooks == (
        "02_data_generation",
        "03_sft",
        "04_ppo_launch",
        "05_evaluation",
        "07_failure_cases",
        "08_ablations",
    )
    assert (
        study_preset.study.ppo_updates,
        study_preset.study.episodes_per_update,
        study_preset.study.eval_limit,
        study_preset.study.train_max_attempts,
        study_preset.study.new_tokens,
    ) == (20, 16, 100, 5, 64)  # the task's answer budget (presets.choose(..., {"task": "virl-l"}): 96)
    assert smoke.notebooks is None  # every notebook in the folder
    assert (smoke.study.model, smoke.study.start_steps, smoke.study.eval_limit, smoke.budgets) == ("tiny", 2, 4, (1, 3))
    assert smoke.data_root is None
    assert smoke.gp_data.eval_size == 8


def test_every_preset_maps_onto_ppo_settings(tmp_path):
    """ppo_settings maps each preset's sizes onto PPO: one minibatch per update's
    episodes, and the preset's number of checkpoints."""
    start = tmp_path / "start"
    start.mkdir()
    (start / "checkpoint.json").write_text('{"tokens": 1000, "step": 16}')
    for preset in presets.PRESETS.values():
        ppo = study.ppo_settings(preset.study, tmp_path, start)
        assert ppo.minibatch_size == ppo.episodes_per_update == preset.study.episodes_per_update
        assert ppo.save_every == math.ceil(preset.study.ppo_updates / preset.study.checkpoints)


def test_overrides_change_a_copy_and_none_keeps_the_presets_value():
    chosen = presets.choose(
        "study", {"eval_limit": 7, "ppo_updates": None, "budgets": [2, 4], "gp_data": {"sft_text": 10}}
    )
    assert (chosen.study.eval_limit, chosen.study.ppo_updates, chosen.budgets) == (7, 20, [2, 4])
    assert (chosen.gp_data.sft_text, chosen.gp_data.sft_image) == (10, presets.STUDY.gp_data.sft_image)
    chosen.study.eval_sets = ["gp-id"]
    assert presets.PRESETS["study"].study.eval_limit == 100  # the preset itself is untouched
    assert presets.PRESETS["study"].study.eval_set_names == ["gp-id", "gp-rule-ood"]
    virl = presets.choose("quickstart", {"task": "virl-l", "fake_rule": True})
    assert virl.study.eval_set_names == ["virl-id", "virl-rule-ood", "virl-fake-rule"]
    assert (virl.study.task_info.env_id, virl.study.task_info.metric) == ("virl-l", "per_step_accuracy")
    with pytest.raises(ValueError, match="unknown study task 'virl'"):
        presets.choose("quickstart", {"task": "virl"})
    with pytest.raises(ValueError, match=r"unknown preset field\(s\) \['eval_limt'\]"):
        presets.choose("study", {"eval_limt": 3})
    with pytest.raises(ValueError, match="unknown preset 'big'; presets: quickstart, study, smoke"):
        presets.choose("big")


def test_preset_fields_and_study_fields_do_not_collide():
    own = {f.name for f in dataclasses.fields(presets.Preset)}
    assert not own & {f.name for f in dataclasses.fields(study.StudySettings)}
    assert set(presets.override_fields()) == (own | {f.name for f in dataclasses.fields(study.StudySettings)}) - {
        "name",
        "notebooks",
        "study",
        "vision_notebooks",
    }


def test_a_notebook_starts_with_its_preset_and_smoke_wins_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # notebook_start moves to the kit's folder; monkeypatch moves back
    monkeypatch.delenv("SFTRL_SMOKE", raising=False)
    run_dir, chosen = notebook_start(
        "00", str(tmp_path / "run"), "quickstart", {"ppo_epochs": 3}, eval_limit=9, seed=None
    )
    assert run_dir == (tmp_path / "run").resolve()
    assert run_dir.is_dir()
    assert (chosen.name, chosen.study.eval_limit, chosen.study.ppo_epochs, chosen.study.seed) == ("quickstart", 9, 3, 0)
    # a field in `overrides` that is also a parameter left at None keeps the overrides' value
    _, chosen = notebook_start(
        "00", str(tmp_path / "run"), "quickstart", {"start_steps": 4, "seed": 2}, start_steps=None, seed=None
    )
    assert (chosen.study.start_steps, chosen.study.seed) == (4, 2)
    _, chosen = notebook_start("00", str(tmp_path / "run"), "quickstart", {"start_steps": 4}, start_steps=5)
    assert chosen.study.start_steps == 5  # a parameter that is set wins over overrides
    monkeypatch.setenv("SFTRL_SMOKE", "1")
    _, chosen = notebook_start("00", str(tmp_path / "run"), "quickstart", {}, eval_limit=None)
    assert (chosen.name, chosen.study.model, chosen.study.eval_limit) == ("smoke", "tiny", 4)


@pytest.mark.parametrize("name, settings_class", [("ppo-gp-l", "PPOSettings"), ("sft-gp-l", "SFTSettings")])
def test_train_configs_hold_only_what_differs_from_the_defaults(name, settings_class):
    """configs/train/*.yaml, nanoGPT style: every key an override, and the file loads."""
    import yaml
    from conftest import REPO

    from sftrl_kit.config import load_yaml
    from sftrl_kit.train import ppo, sft

    cls = getattr(ppo if settings_class == "PPOSettings" else sft, settings_class)
    path = REPO / "configs" / "train" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    defaults = dataclasses.asdict(cls())
    assert data
    assert {key: value for key, value in data.items() if defaults[key] == value} == {}
    assert dataclasses.asdict(load_yaml(cls, path)) == {**defaults, **data}


def test_the_preset_values_notebook_comments_quote_are_the_presets():
    """A parameters cell's comment that quotes a preset's value ("None: the preset's
    (study: 20)", "(quickstart: 24)", or the notebook's own preset's "(0)") says what
    presets.py holds, so that the two cannot drift apart."""
    import ast
    import json
    import re

    from sftrl_kit.presets import PRESETS

    quoted = re.compile(r"^(\w+) = None  #.*?(?:\((quickstart|study|smoke): |None: the preset's \()(.+)\)\s*$")
    checked = 0
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", [])]
        source = "".join(cells[0]["source"])
        own = re.search(r'^preset = "(\w+)"', source, re.MULTILINE).group(1)
        for line in source.splitlines():
            match = quoted.match(line)
            if not match:
                continue
            name, preset, text = match.group(1), PRESETS[match.group(2) or own], match.group(3)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                continue  # words, not a value ("the embedded SmolLM2-135M-Instruct; ...")
            actual = getattr(preset.study, name) if hasattr(preset.study, name) else getattr(preset, name)
            assert (list(actual) if isinstance(actual, tuple) else actual) == value, f"{path.name}: {line}"
            checked += 1
    assert checked >= 15  # 19 today
