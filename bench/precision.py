"""Does one PPO update reach the weights? Writes JSON.

    python bench/precision.py [--out bench/results/precision.json]

One PPO update at the paper's learning rate (1e-6) from the tiny model rescaled to
SmolLM2-135M's weight scale (std 0.02), in three configurations:
  - fp32: fp32 weights, no autocast (the CPU default);
  - bf16-autocast: fp32 master weights under bf16 autocast (the CUDA default, forced);
  - bf16-weights: the weights themselves in bf16 (what the kit did on CUDA before),
    by loading the start in bf16 and giving AdamW the same update as in fp32.
Reports the share of weights that changed (all, and without the embedding matrix, whose
rows of unseen tokens get gradients too small for any precision) and the first
minibatch's largest |ratio - 1|.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import REPO, RESULTS, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sftrl_kit.models import load_policy  # noqa: E402
from sftrl_kit.run_folder import checkpoint_dir, read_metrics  # noqa: E402
from sftrl_kit.train.ppo import PPOSettings, train_ppo  # noqa: E402

SETTINGS = dict(
    episodes_per_update=8,
    max_new_tokens=16,
    max_attempts=2,
    minibatch_size=4,
    micro_batch_size=2,
    ppo_epochs=1,
    updates=1,
    learning_rate=1e-6,
    save_every=1,
)


def shares_changed(before: dict, after: dict) -> dict[str, float]:
    def share(names):
        changed = sum(int((before[n] != after[n].to(before[n].dtype)).sum()) for n in names)
        return changed / sum(before[n].numel() for n in names)

    return {"all": share(list(before)), "without_embeddings": share([n for n in before if "embed_tokens" not in n])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "precision.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sftrl-precision-"))
    start = load_policy("tiny")
    with torch.no_grad():
        for parameter in start.model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(0.02 / 0.3)
    start.save(work / "start")
    report = {"machine": machine(), "settings": SETTINGS, "configurations": {}}
    for name in ("fp32", "bf16"):
        run = train_ppo(
            PPOSettings(model=str(work / "start"), run_dir=str(work / name), mixed_precision=name, **SETTINGS)
        )
        before = load_file(checkpoint_dir(run, "ppo", 0) / "model.safetensors")
        after = load_file(checkpoint_dir(run, "ppo", 1) / "model.safetensors")
        row = read_metrics(run)[-1]
        report["configurations"]["fp32" if name == "fp32" else "bf16-autocast"] = {
            "weights_changed": shares_changed(before, after),
            "ratio_deviation_first_minibatch": row["ratio_deviation_first_minibatch"],
            "trained_turns": row["trained_turns"],
            "tokens": row["tokens"],
        }
        if name == "fp32":  # the same update applied to bf16 weights, as a pure-bf16 AdamW step would
            rounded = {k: (before[k].bfloat16().float() + (after[k] - before[k])).bfloat16() for k in before}
            report["configurations"]["bf16-weights"] = {
                "weights_changed": shares_changed({k: v.bfloat16() for k, v in before.items()}, rounded)
            }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
