"""The plan of a run without its advice (`_plan`: the rows, the peak, whether it fits, vLLM's
sleep mode chosen where needed), and `MemoryPlan`, its table."""

from __future__ import annotations

from dataclasses import dataclass

from .request import PlanRequest
from .rows import GIB, Row, _phase_sums, peak_bytes, plan_rows
from .shape import model_shape


class MemoryPlanError(ValueError):
    """A run that does not fit its device: the message holds the plan's table and what would make it fit."""


@dataclass(frozen=True)
class Advice:
    """A change that makes the run fit, and the request it gives (re-planned: it fits)."""

    text: str
    request: PlanRequest


@dataclass(frozen=True)
class MemoryPlan:
    """A run's memory per GPU: rows, the peak (`total`), the capacity, whether it fits,
    whether vLLM sleeps between rollout and update, and what would make it fit."""

    request: PlanRequest
    rows: tuple[Row, ...]
    total: int
    capacity: int | None
    fits: bool
    sleep_mode: bool
    advice: tuple[Advice, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def format(self) -> str:
        """The plan as a table, then whether it fits, then the advice."""
        r = self.request
        layout = "DDP" if r.zero_stage == 0 else f"ZeRO-{r.zero_stage}"
        tuning = "LoRA" if r.lora is not None else "full fine-tuning"
        lines = [
            f"memory plan: {r.method.upper()} of {r.model} ({tuning}), {r.gpus} x {r.device} ({layout}), "
            f"{'bf16 autocast' if r.autocast_bf16 else 'fp32'}" + (f", engine {r.engine}" if r.method == "ppo" else ""),
            f"  {'row':<38}{'GiB/GPU':>9}  {'when':<14}note",
        ]
        for row in self.rows:
            lines.append(f"  {row.name:<38}{row.gib:>9.2f}  {row.phase:<14}{row.note}")
        held, transient = _phase_sums(self.rows)
        phases = ", ".join(f"{name} {size / GIB:.2f}" for name, size in transient.items())
        lines.append(
            f"  {'peak = held + max(rollout, train, step)':<38}{self.total_gib:>9.2f}  (held {held / GIB:.2f}, {phases})"
        )
        if self.capacity is None:
            lines.append("  capacity: not limited (no GPU memory given)")
        else:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            lines.append(f"  capacity {self.capacity / GIB:.2f} GiB per GPU: {verdict}")
        if r.method == "ppo" and r.engine == "vllm":
            lines.append(
                f"  vLLM sleep mode: {'on (level 2, between rollout and update)' if self.sleep_mode else 'off'}"
            )
        lines += [f"  note: {note}" for note in self.notes]
        if not self.fits:
            if self.advice:
                lines.append("  would fit with:")
                lines += [f"    - {advice.text}" for advice in self.advice]
            else:
                lines.append("  no change the plan knows makes it fit")
        return "\n".join(lines)


def _plan(request: PlanRequest) -> MemoryPlan:
    """The plan without advice; sleep mode chosen here when it is asked for by None."""
    shape = model_shape(request.model, request.lora)
    capacity = None if request.gpu_memory_gib is None else int(request.gpu_memory_gib * GIB)
    notes = list(request.notes)
    uses_vllm = request.method == "ppo" and request.engine == "vllm"
    sleep = bool(request.sleep_mode) and uses_vllm
    if request.sleep_mode and uses_vllm and not request.sleep_available:
        raise ValueError("vLLM's sleep mode needs CUDA (its cumem allocator); vLLM's CPU build has none")
    rows = plan_rows(request, shape, sleep)
    total = peak_bytes(rows)
    if request.sleep_mode is None and uses_vllm and capacity is not None and total > capacity:
        asleep = plan_rows(request, shape, True)
        if request.sleep_available and peak_bytes(asleep) <= capacity:
            rows, total, sleep = asleep, peak_bytes(asleep), True
            notes.append(
                "sleep mode chosen: the run fits only with vLLM's weights and KV cache freed during the update"
            )
    if uses_vllm and not request.sleep_available:
        notes.append(
            "vLLM's CPU build has no sleep mode (it needs CUDA's cumem allocator): the engine stays awake "
            "during the update"
        )
    fits = capacity is None or total <= capacity
    return MemoryPlan(request, tuple(rows), total, capacity, fits, sleep, notes=tuple(notes))
