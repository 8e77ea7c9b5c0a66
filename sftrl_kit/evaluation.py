"""Evaluation on frozen sets, with honest statistics.

Metrics (the only place they are computed):
  success_rate            episodes solved within the verification budget
  first_attempt_success   episodes whose first answer was correct
  per_step_accuracy       correct answers / all answers, revisions included (the
                          paper's per-step accuracy: each attempt is a sample)
  recognition_accuracy    VL: answers whose recognised cards were right / answers checked
  mean_attempts, mean_return, outcome_histogram

Rates come with 95% Wilson score intervals. `compare_rates` tests whether two success
rates differ (two-proportion z-test, and a Newcombe interval for the difference).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .data import load_eval_set
from .envs import make
from .episodes import Episode, write_episodes
from .models import SamplingConfig
from .rollout import Responder, rollout

Z_95 = 1.959963984540054
EVAL_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=256, seed=0)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> dict[str, float | int | None]:
    """Rate with its Wilson score interval; value/low/high are None when trials == 0."""
    if trials == 0:
        return {"value": None, "low": None, "high": None, "successes": 0, "trials": 0}
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return {"value": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half),
            "successes": successes, "trials": trials}


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, Any]:
    turns = [turn for episode in episodes for turn in episode.turns]
    checked = [t.verdict.get("recognition_correct") for t in turns if t.verdict.get("recognition_correct") is not None]
    return {
        "episodes": len(episodes),
        "success_rate": wilson_interval(sum(e.success for e in episodes), len(episodes)),
        "first_attempt_success": wilson_interval(
            sum(bool(e.turns) and e.turns[0].outcome == "correct" for e in episodes), len(episodes)
        ),
        "per_step_accuracy": wilson_interval(sum(t.outcome == "correct" for t in turns), len(turns)),
        "recognition_accuracy": wilson_interval(sum(bool(c) for c in checked), len(checked)) if checked else None,
        "mean_attempts": len(turns) / len(episodes) if episodes else None,
        "mean_return": sum(e.total_reward for e in episodes) / len(episodes) if episodes else None,
        "outcome_histogram": dict(sorted(Counter(t.outcome for t in turns).items())),
    }


RAMBLING_CHARS = 600  # an unreadable answer this long is rambling, not a slip of format


def failure_modes(episodes: Sequence[Episode]) -> dict[str, Any]:
    """How answers failed, with the memorisation signature counted on its own:

    trained_rule_used   the answer applied the other rule: GP numbers valued under the
                        other face-card rule, or a V-IRL action of the other action space
    unparseable         no answer object could be read
    rambling            unreadable and at least RAMBLING_CHARS long (typical of RL
                        without an SFT start)
    Each count comes with its share of all answers (and that share's Wilson interval,
    `rate`) and example episode indices.
    """
    turns = [(i, t) for i, e in enumerate(episodes) for t in e.turns]
    checks = {
        "trained_rule_used": lambda t: bool(t.verdict.get("other_rule_used") or t.verdict.get("other_space_used")),
        "unparseable": lambda t: t.outcome == "unparseable",
        "rambling": lambda t: t.outcome == "unparseable" and len(t.response) >= RAMBLING_CHARS,
    }
    out: dict[str, Any] = {"answers": len(turns)}
    for name, check in checks.items():
        hits = [i for i, t in turns if check(t)]
        out[name] = {"count": len(hits), "share": len(hits) / len(turns) if turns else None,
                     "rate": wilson_interval(len(hits), len(turns)), "examples": sorted(set(hits))[:10]}
    return out


def failure_examples(episodes: Sequence[Episode], modes: Sequence[str] = ("trained_rule_used", "unparseable"),
                     ) -> list[Episode]:
    """The example episodes failure_modes found for the given modes, in their order."""
    found = failure_modes(episodes)
    return [episodes[i] for i in sorted({i for mode in modes for i in found[mode]["examples"]})]


def evaluate(
    policy: Responder,
    eval_set: str | Path | Sequence[dict[str, Any]],
    env_id: str = "gp-l",
    sampling: SamplingConfig = EVAL_SAMPLING,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    run_dir: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
    **env_overrides: Any,
) -> dict[str, Any]:
    """Play every task of a frozen eval set once; metrics, and files in run_dir/eval/name/.

    env_overrides change settings for the whole set (e.g. max_attempts=1 for an
    ablation); the rule and colours come from each record.
    """
    records = load_eval_set(eval_set) if isinstance(eval_set, (str, Path)) else list(eval_set)
    records = records[:limit] if limit is not None else records
    if not records:
        raise ValueError("the evaluation set is empty")
    envs = [make(env_id, **{**r["env_config"], **env_overrides}) for r in records]
    started = time.perf_counter()
    episodes = rollout(
        policy, envs, sampling,
        tasks=[r["task"] for r in records], seeds=[r["seed"] for r in records], splits=[r["split"] for r in records],
        batch_size=batch_size, with_logprobs=False, progress=progress,
    )
    split_names = sorted({r["split"] for r in records})
    metrics = {
        "split": split_names[0] if len(split_names) == 1 else split_names,
        "env_id": env_id,
        "model": getattr(policy, "name", type(policy).__name__),
        "sampling": asdict(sampling),
        "env_overrides": env_overrides,
        "limit": limit,
        "seconds": round(time.perf_counter() - started, 2),
        **episode_metrics(episodes),
        "failure_modes": failure_modes(episodes),
    }
    if run_dir is not None:
        folder = Path(run_dir) / "eval" / (name or f"{env_id}-{metrics['split']}")
        write_episodes(folder / "episodes.jsonl", episodes)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        metrics["folder"] = str(folder)
    return metrics


def compare_rates(a: dict[str, Any], b: dict[str, Any], z: float = Z_95) -> dict[str, Any]:
    """Is rate a different from rate b? Each is a wilson_interval dict (or metrics' entry).

    Returns the difference a - b, its 95% Newcombe (hybrid Wilson) interval, and the
    two-sided p-value of the pooled two-proportion z-test.
    """
    k1, n1, k2, n2 = a["successes"], a["trials"], b["successes"], b["trials"]
    if n1 == 0 or n2 == 0:
        raise ValueError("both rates need at least one trial")
    p1, p2 = k1 / n1, k2 / n2
    w1, w2 = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - w1["low"]) ** 2 + (w2["high"] - p2) ** 2)
    high = difference + math.sqrt((w1["high"] - p1) ** 2 + (p2 - w2["low"]) ** 2)
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z_score = 0.0 if se == 0 else difference / se
    p_value = math.erfc(abs(z_score) / math.sqrt(2))
    return {"difference": difference, "low": low, "high": high, "z": z_score, "p_value": p_value,
            "significant": p_value < 0.05}


def evaluate_checkpoints(
    run_dir: str | Path,
    eval_sets: dict[str, str | Path],
    env_id: str = "gp-l",
    sampling: SamplingConfig = EVAL_SAMPLING,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every checkpoint in run_dir/checkpoints/ on every eval set: one row each.

    A checkpoint is a folder with the model and a checkpoint.json of counters (step,
    tokens, flops). Rows are flat dicts, ready for pandas.DataFrame(rows).
    """
    from .models import load_policy

    folders = sorted(p for p in (Path(run_dir) / "checkpoints").glob("*") if (p / "config.json").is_file())
    if not folders:
        raise FileNotFoundError(f"no checkpoints under {Path(run_dir) / 'checkpoints'}")
    rows = []
    for folder in folders:
        counters = _read_counters(folder)
        policy = load_policy(folder)
        for set_name, path in eval_sets.items():
            metrics = evaluate(policy, path, env_id, sampling, limit=limit, batch_size=batch_size,
                               run_dir=folder, name=set_name, progress=progress)
            rows.append({"checkpoint": folder.name, "eval_set": set_name, **counters, **flatten_metrics(metrics)})
    return rows


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """{"success_rate": {"value", "low", ...}} -> {"success_rate", "success_rate_low", ...}."""
    flat = {}
    for key in ("success_rate", "first_attempt_success", "per_step_accuracy", "recognition_accuracy"):
        entry = metrics.get(key)
        flat[key] = entry["value"] if entry else None
        flat[f"{key}_low"] = entry["low"] if entry else None
        flat[f"{key}_high"] = entry["high"] if entry else None
        flat[f"{key}_trials"] = entry["trials"] if entry else 0
    flat.update(episodes=metrics["episodes"], mean_attempts=metrics["mean_attempts"], mean_return=metrics["mean_return"])
    return flat


def _read_counters(folder: Path) -> dict[str, Any]:
    path = folder / "checkpoint.json"
    if not path.is_file():
        return {}
    try:
        counters = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg})") from error
    return {k: v for k, v in counters.items() if isinstance(v, (int, float, str))}
