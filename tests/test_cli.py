import json

from sftrl_kit.cli import main


def test_sftrl_data_gp_writes_eval_sets_datasets_and_samples(tmp_path, capsys):
    args = ["data", "gp", "--root", str(tmp_path), "--eval-size", "6", "--sft-text", "4", "--sft-image", "2", "--samples", "3"]
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {name: item["records"] for name, item in summary["eval"].items()} == {
        "gp-id": 6, "gp-rule-ood": 6, "gp-visual-ood": 6}
    assert summary["sft"]["gp-l-expert"]["records"] == 4 and summary["sft"]["gp-vl-suboptimal"]["records"] == 1
    assert len(list((tmp_path / "generated" / "samples").glob("*.png"))) == 3
    assert len(list((tmp_path / "generated" / "gp-vl-expert").glob("*.png"))) == 2
    assert main(args) == 0
    assert "frozen evaluation sets" in capsys.readouterr().out


def test_bad_arguments_get_a_clear_error(tmp_path, capsys):
    assert main(["data", "gp", "--root", str(tmp_path), "--eval-size", "-1"]) == 2
    assert "--eval-size must be >= 0" in capsys.readouterr().err


def test_sftrl_data_virl_writes_eval_sets_datasets_and_samples(tmp_path, capsys):
    args = ["data", "virl", "--root", str(tmp_path), "--eval-routes", "3", "--visual-ood-routes", "9",
            "--sft-text-routes", "2", "--sft-image-routes", "2", "--samples", "1", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {n: i["records"] for n, i in summary["eval"].items()} == {"virl-id": 3, "virl-rule-ood": 3, "virl-visual-ood": 9}
    assert summary["sft"]["virl-l-expert"]["records"] > 2 and summary["sft"]["virl-vl-suboptimal"]["records"] > 0
    assert len(list((tmp_path / "generated" / "virl-vl-expert").glob("*.png"))) == summary["sft"]["virl-vl-expert"]["records"]
    assert len(summary["samples"]) == 1


def test_sftrl_run_explains_what_it_needs(tmp_path, capsys):
    assert main(["run"]) == 2
    assert "name a preset (quickstart, smoke, study)" in capsys.readouterr().err
    assert main(["run", "09_nothing"]) == 2
    assert "unknown notebook or preset '09_nothing'" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a batch run folder" in capsys.readouterr().err
