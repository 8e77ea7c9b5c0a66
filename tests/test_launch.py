import sys

import pytest
import torch
import yaml

from sftrl_kit.launch import pick_accelerate_config, stream


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choice")
def test_a_cpu_machine_gets_two_gloo_processes_and_no_deepspeed():
    config, processes = pick_accelerate_config()
    assert config.name == "cpu-2proc.yaml"
    assert processes == 2
    assert yaml.safe_load(config.read_text())["num_processes"] == 2
    assert pick_accelerate_config(1)[1] == 1
    with pytest.raises(ValueError, match="DeepSpeed needs a GPU"):
        pick_accelerate_config(deepspeed=True)


def test_stream_logs_every_line_and_reports_a_failure_with_its_last_lines(tmp_path, capsys):
    log = tmp_path / "job.log"
    stream([sys.executable, "-c", "print('one'); print('two')"], log)
    assert capsys.readouterr().out == "one\ntwo\n"
    assert log.read_text().splitlines()[1:] == ["one", "two"]
    with pytest.raises(RuntimeError, match="exited with status 3") as failure:
        stream([sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)"], log, echo=False)
    assert "about to fail" in str(failure.value)
    assert capsys.readouterr().out == ""
