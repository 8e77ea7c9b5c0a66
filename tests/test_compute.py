from types import SimpleNamespace

import pytest

from sftrl_kit.compute import gflops, rl_flops, sft_flops, sft_tokens_for
from sftrl_kit.envs import make
from sftrl_kit.train.ppo import _buffer_lambda


def test_paper_formulas():
    n = 1_000_000
    assert sft_flops(n, 100, 50) == 6 * n * 150
    assert rl_flops(n, 100, 50, 6.0) == 6 * n * 150 + 2 * n * 6.0 * 50
    assert gflops(rl_flops(n, 0, 10, 0.0)) == pytest.approx(0.06)


def test_sft_tokens_for_inverts_the_sft_formula():
    n, d_init = 134_515_008, 32_768
    assert sft_tokens_for(sft_flops(n, d_init, 50_000), n, d_init) == pytest.approx(50_000)
    assert sft_tokens_for(6 * n * 10, n, 100) == -90  # the start alone is past the target


def test_lambda_comes_from_the_environment_and_bad_input():
    assert [_buffer_lambda(make(env_id)) for env_id in ("gp-l", "gp-vl", "virl-l", "virl-vl")] == [6.0, 6.0, 5.1, 5.1]
    assert _buffer_lambda(SimpleNamespace(env_id="chess-l", buffer_lambda=4)) == 4.0  # any id: no prefix table
    for missing in (SimpleNamespace(env_id="chess-l"), SimpleNamespace(env_id="chess-l", buffer_lambda=-1.0)):
        with pytest.raises(ValueError, match="chess-l: the environment states no buffer_lambda"):
            _buffer_lambda(missing)
    with pytest.raises(ValueError):
        sft_flops(0, 1, 1)
    with pytest.raises(ValueError):
        rl_flops(10, 1, -1, 6.0)
