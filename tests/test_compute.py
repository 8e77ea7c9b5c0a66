import pytest

from sftrl_kit.compute import buffer_lambda_for, gflops, rl_flops, sft_flops


def test_paper_formulas():
    n = 1_000_000
    assert sft_flops(n, 100, 50) == 6 * n * 150
    assert rl_flops(n, 100, 50, 6.0) == 6 * n * 150 + 2 * n * 6.0 * 50
    assert gflops(rl_flops(n, 0, 10, 0.0)) == pytest.approx(0.06)


def test_lambda_per_task_and_bad_input():
    assert buffer_lambda_for("gp-l") == 6.0
    assert buffer_lambda_for("gp-vl") == 6.0
    assert buffer_lambda_for("virl-vl") == 5.1
    with pytest.raises(ValueError, match="known families"):
        buffer_lambda_for("chess")
    with pytest.raises(ValueError):
        sft_flops(0, 1, 1)
    with pytest.raises(ValueError):
        rl_flops(10, 1, -1, 6.0)
