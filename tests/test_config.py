import pytest

from sftrl_kit.config import ConfigError, from_dict, load_yaml, save_yaml, to_dict
from sftrl_kit.envs.general_points import GPConfig


def test_nested_dicts_and_yaml_round_trip(tmp_path):
    config = from_dict(GPConfig, {"target": 12, "rewards": {"correct": 2.0}})
    assert config.target == 12
    assert config.rewards.correct == 2.0
    assert config.rewards.illegal == -3.0
    path = tmp_path / "gp.yaml"
    save_yaml(config, path)
    assert load_yaml(GPConfig, path) == config
    assert to_dict(config)["rewards"]["correct"] == 2.0


def test_errors_name_the_field_and_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"GPConfig.rewards: unknown field\(s\) \['corect'\]"):
        from_dict(GPConfig, {"rewards": {"corect": 1}})
    with pytest.raises(ConfigError, match="target must be a positive integer"):
        from_dict(GPConfig, {"target": -1})
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(GPConfig, tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("target: [1\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_yaml(GPConfig, broken)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- target\n- 12\n")
    with pytest.raises(ConfigError, match="listed.yaml: expected a mapping of field: value, found list"):
        load_yaml(GPConfig, listed)
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(GPConfig, tmp_path / "empty.yaml") == GPConfig()


def test_sftrl_train_reads_its_config_through_the_same_checks(tmp_path, capsys):
    from sftrl_kit.cli import main

    (tmp_path / "listed.yaml").write_text("- 1\n")
    assert main(["sft", "--config", str(tmp_path / "listed.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "expected a mapping of field: value" in capsys.readouterr().err


def test_numbers_written_as_text_are_coerced_or_rejected():
    from sftrl_kit.train.ppo import PPOSettings

    settings = from_dict(PPOSettings, {"learning_rate": "5e-5", "updates": "3", "init_tokens": "10"})
    assert settings.learning_rate == 5e-5
    assert settings.updates == 3
    assert settings.init_tokens == 10
    with pytest.raises(ConfigError, match=r"PPOSettings.learning_rate: expected a number, got 'fast'"):
        from_dict(PPOSettings, {"learning_rate": "fast"})
    assert from_dict(PPOSettings, {"tasks": "123"}).tasks == "123"  # a str | None field stays text


@pytest.mark.parametrize(
    "where",
    [
        "sftrl_kit.study:StudySettings",
        "sftrl_kit.presets:Preset",
        "sftrl_kit.train.sft:SFTSettings",
        "sftrl_kit.train.ppo:PPOSettings",
        "sftrl_kit.models:LoraSettings",
        "sftrl_kit.engines.vllm_engine:VLLMOptions",
        "sftrl_kit.models.default_vl:EyesSettings",
        "sftrl_kit.data:GPDataSizes",
        "sftrl_kit.data:VirlDataSizes",
    ],
)
def test_every_settings_field_has_a_docstring_that_help_can_print(where):
    import importlib

    from sftrl_kit.config import field_docs

    module, name = where.split(":")
    undocumented = [f for f, doc in field_docs(getattr(importlib.import_module(module), name)).items() if not doc]
    assert undocumented == []


def test_sftrl_run_help_lists_every_size_an_override_may_change(capsys):
    from sftrl_kit.cli import main
    from sftrl_kit.presets import override_fields

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    listed = {
        line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ") and " = " in line
    }
    assert listed == set(override_fields())
