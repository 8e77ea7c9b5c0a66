"""drift.forward_kl: KL(pi_start || pi) on the task distribution, checked against a
plain transformers forward pass written out here."""

import json

import pytest
import torch

from sftrl_kit import drift
from sftrl_kit.models import load_policy
from sftrl_kit.run_folder import DRIFT_SAMPLES, write_counters


def test_the_log_ratio_estimate_is_the_sample_mean_with_its_standard_error():
    mean, se = drift.log_ratio_estimate([-3.0, -5.0, -2.0, -6.0], [-4.0, -5.5, -2.0, -9.0])
    ratios = torch.tensor([1.0, 0.5, 0.0, 3.0])
    assert mean == pytest.approx(ratios.mean().item())
    assert se == pytest.approx((ratios.std(unbiased=True) / 2).item())
    with pytest.raises(ValueError, match="no samples"):
        drift.log_ratio_estimate([], [])


def _independent_logprob(model, prompt, response):
    """log pi(response | prompt) by one unbatched forward pass, no padding."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).sum().item()


def test_forward_kl_is_zero_at_the_start_and_matches_an_independent_forward_pass(tmp_path):
    start = load_policy("tiny")
    start_dir = start.save(tmp_path / "start" / "checkpoints" / "step-000000")
    write_counters(start_dir, {"step": 0, "gflops": 1.0})
    moved = load_policy("tiny")
    with torch.no_grad():
        for parameter in moved.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter, generator=torch.Generator().manual_seed(0)))
    moved_dir = moved.save(tmp_path / "run" / "checkpoints" / "step-000004")
    write_counters(moved_dir, {"step": 4, "gflops": 2.0})
    results = drift.forward_kl(start_dir, [start_dir, moved_dir], "gp-id", "gp-l", limit=6, max_new_tokens=8)
    assert results[0]["forward_kl"] == pytest.approx(0.0, abs=1e-6)
    assert results[0]["samples"] == 6

    samples = json.loads(next((start_dir / DRIFT_SAMPLES).glob("*.json")).read_text())
    start_model, moved_model = load_policy(start_dir).model, load_policy(moved_dir).model
    ratios = [
        _independent_logprob(start_model, p, r) - _independent_logprob(moved_model, p, r)
        for p, r in zip(samples["prompts"], samples["responses"])
    ]
    assert results[1]["forward_kl"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-4, abs=1e-4)
    assert results[1]["forward_kl"] > 0  # the moved weights put less mass on the start's samples

    again = drift.forward_kl(start_dir, [moved_dir], "gp-id", "gp-l", limit=6, max_new_tokens=8)
    assert again == results[1:]  # read back, not re-measured
    other = drift.forward_kl(start_dir, [moved_dir], "gp-id", "gp-l", limit=4, max_new_tokens=8)
    assert other[0]["samples"] == 4  # another setting is another measurement


def test_drift_rows_name_each_checkpoint_of_each_run():
    from sftrl_kit.tables import drift_rows

    entry = {"checkpoint": "/r/ppo/checkpoints/update-0002", "step": 2, "gflops": 5.0, "forward_kl": 0.3}
    entry |= {"se": 0.1, "per_token": 0.01, "samples": 64, "key": {"start": "/r/start"}}
    assert drift_rows({"ppo": [entry]}) == [
        {"run": "ppo", "checkpoint": "update-0002", "step": 2, "gflops": 5.0, "forward_kl": 0.3}
        | {"se": 0.1, "per_token": 0.01, "samples": 64}
    ]
