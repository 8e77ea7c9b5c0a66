import sys

import pytest
import torch
import yaml

from sftrl_kit.launch import pick_accelerate_config, stream


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choice")
def test_a_cpu_machine_gets_two_gloo_processes_ddp_or_zero2():
    config, processes = pick_accelerate_config()
    assert config.name == "cpu-2proc.yaml"
    assert processes == 2
    assert yaml.safe_load(config.read_text())["num_processes"] == 2
    assert pick_accelerate_config(1)[1] == 1
    config, processes = pick_accelerate_config(deepspeed=True)
    assert yaml.safe_load(config.read_text())["deepspeed_config"]["zero_stage"] == 2
    assert processes == 2


def test_stream_logs_every_line_and_reports_a_failure_with_its_last_lines(tmp_path, capsys):
    log = tmp_path / "job.log"
    stream([sys.executable, "-c", "print('one'); print('two')"], log)
    assert capsys.readouterr().out == "one\ntwo\n"
    assert log.read_text().splitlines()[1:] == ["one", "two"]
    with pytest.raises(RuntimeError, match="exited with status 3") as failure:
        stream([sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)"], log, echo=False)
    assert "about to fail" in str(failure.value)
    assert capsys.readouterr().out == ""


def test_a_given_accelerate_config_runs_as_many_processes_as_it_says(tmp_path, monkeypatch):
    """Without num_processes the config's own count holds (it used to be forced to 1)."""
    from sftrl_kit import launch
    from sftrl_kit.train.ppo import PPOSettings

    commands = []
    monkeypatch.setattr(launch, "stream", lambda command, log, echo=True: commands.append(command))
    settings = PPOSettings(model="tiny", run_dir=str(tmp_path / "ppo"))
    config = tmp_path / "eight.yaml"
    config.write_text("num_processes: 8\n")
    launch.launch_training("ppo", settings, tmp_path, accelerate_config=config)
    launch.launch_training("ppo", settings, tmp_path, accelerate_config=config, num_processes=3)
    assert "--num_processes" not in commands[0]
    assert commands[1][commands[1].index("--num_processes") + 1] == "3"
