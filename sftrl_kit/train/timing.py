"""Where a PPO update's time goes, named and defined as verl and NeMo-RL report it, so a
run's numbers compare with those frameworks' published ones.

Per update, in metrics.jsonl (seconds of wall clock on the main process; on CUDA each
stage ends with a device synchronisation, so queued kernels are counted where they ran):
  timing_s/gen              the rollout: every episode of the update, generated and verified
  timing_s/old_log_prob     the learner's forward pass for log pi_old and V (PPO step 2)
  timing_s/ref              the reference's log-probs (with a KL term)
  timing_s/adv              advantages (GAE's bootstrap passes included)
  timing_s/update_actor     ppo_epochs of optimisation, policy and value head together
  timing_s/update_weights   the generation engine taking the new weights (vLLM only)
  timing_s/save_checkpoint  writing a checkpoint (updates that write one)
  timing_s/step             the whole update, all of the above and the bookkeeping
and the throughput over the update's tokens (prompt + response of every turn, over all
processes, each counted once):
  perf/total_num_tokens     that count
  perf/time_per_step        timing_s/step
  perf/throughput           tokens / (timing_s/step x devices): verl's tokens/s per GPU
  perf/throughput/<stage>   tokens / (timing_s/<stage> x devices) for gen, old_log_prob and
                            update_actor: NeMo-RL's per-stage tokens/s/GPU (the update
                            passes over its tokens ppo_epochs times; they count once)
On CUDA, also the peak of memory allocated by torch during each stage, on this process's
device (the allocator's peak is reset as a stage starts):
  perf/max_memory_allocated_gib/<stage>   e.g. gen: after the rollout; update_actor: with
                                          AdamW's state, made at the first optimizer step
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

STAGES_WITH_THROUGHPUT = ("gen", "old_log_prob", "update_actor")


@contextlib.contextmanager
def timed(timing: dict[str, float], stage: str) -> Iterator[None]:
    """Add the seconds of the block to timing['timing_s/<stage>'] (and on CUDA its peak
    allocated memory to timing['perf/max_memory_allocated_gib/<stage>'])."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize()
            peak = f"perf/max_memory_allocated_gib/{stage}"
            timing[peak] = max(timing.get(peak, 0.0), torch.cuda.max_memory_allocated() / 2**30)
        key = f"timing_s/{stage}"
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - started


def throughput(total_tokens: int, timing: dict[str, float], devices: int) -> dict[str, float]:
    """The perf/ metrics of one update from its token count (over all processes), its
    timing_s/ entries (timing_s/step included) and the number of devices."""
    step = timing["timing_s/step"]
    metrics = {
        "perf/total_num_tokens": total_tokens,
        "perf/time_per_step": step,
        "perf/throughput": total_tokens / (step * devices),
    }
    for stage in STAGES_WITH_THROUGHPUT:
        seconds = timing.get(f"timing_s/{stage}")
        if seconds:
            metrics[f"perf/throughput/{stage}"] = total_tokens / (seconds * devices)
    return metrics
