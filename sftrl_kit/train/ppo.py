"""Multi-turn PPO against a verifier: the paper's RL, with critic-free options.

The paper's recipe (section 5, appendix), which is the default here:
  - one action = one whole response; its log-prob is the sum of its token log-probs
    (tokens before the answer field may be down-weighted: `thought_coef`);
  - per-turn rewards come from the verifier; a turn's state is the conversation so far;
  - the value head reads the hidden state of the last prompt token;
  - advantages by GAE over the turns of each episode (gamma 0.9, lambda 0.95);
  - clipped ratio (0.1), clipped value loss, gradient clipping, several epochs of
    minibatches with gradient accumulation; no KL term.
Options beyond the paper: a KL penalty to the initial policy (with LoRA the reference is
the base with adapters off, no second copy), an entropy bonus, and critic-free episode
advantages: "grpo" (return normalised within a group of episodes of the same deal) and
"rloo" (return minus the mean of the others in the group).

Precision: fp32 master weights always; forward passes under bf16 autocast on CUDA
(`mixed_precision`). The behaviour log-probs of the ratio are recomputed by the learner's
own forward pass after the rollout, so the first minibatch's ratio is 1 whatever the
generation numerics were (`ratio_deviation_first_minibatch` in the metrics checks it).
Both sides of the ratio are of the tempered, untruncated distribution (as TRL and verl
do); with top_p < 1 the episode files still record the nucleus log-probs actually
sampled from.

One update (`_ppo_update`) reads top to bottom as CleanRL's does: (1) collect episodes
with the current policy, each turn an action; (2) the learner's forward pass for the old
log-probs and values (and the reference log-probs when kl_coef > 0); (3) advantages, by
GAE over the turns of each episode or a group baseline per episode; (4) normalisation;
(5) ppo_epochs x minibatches x micro-batches (`_optimise`); (6) the generation engine
takes the new weights (`engine`: vLLM in this process, synced without a restart; HF
generate is the learner itself). Steps 2-4 fill a frozen
`RolloutBatch` of per-turn tensors (b_logprobs, b_advantages, b_values, b_returns,
b_ref_logprobs); nothing about a turn changes after it is collected. Per-token
log-probs, for HF rollouts, learner and reference alike, come from one function,
`models.response_token_logprobs`; vLLM's own are kept only to report their mean gap to
the learner's (`engine_logprob_gap`).

Every process plays its own episodes; advantages are normalised over all processes.
Every turn is trained in every epoch: each epoch splits the turns into
ceil(turns / minibatch_size) near-equal minibatches, each weighted as the mean over the
turns of all processes in that step, so no turn is dropped and D_RL counts exactly the
tokens that were trained.
Each update appends one row to run_dir/metrics.jsonl; every `save_every` updates a
checkpoint (weights, value head, checkpoint.json with tokens and FLOPs) and the trainer
state (optimizer as safetensors + JSON, no pickles) land in run_dir/checkpoints/ (the
layout: run_folder). A run resumes from its last checkpoint, dropping metric rows
logged after it.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import run_folder
from ..compute import gflops, rl_flops
from ..config import to_dict
from ..data import load_training_tasks, training_config, training_deal_seed
from ..engines import open_engine, resolve_engine
from ..envs import Observation, make
from ..envs.answers import field_offset
from ..episodes import Episode, chat_messages, write_episodes
from ..memory_plan import MemoryPlan, plan_for_settings
from ..models import (
    LoraSettings,
    MixedPrecision,
    Policy,
    SamplingConfig,
    autocast,
    load_policy,
    logit_scale,
    response_token_logprobs,
)
from ..process import releases_memory
from ..rollout import rollout
from . import checkpoints, distributed
from .timing import throughput, timed


@dataclass
class PPOSettings:
    """PPO settings; the defaults are the paper's recipe (section 5 and appendix). Counts
    of episodes and turns are per process."""

    # what to train, on what
    model: str = "default"
    """the SFT initialisation (a checkpoint folder), or a base model ('default', 'default-vl', 'tiny', 'tiny-vl')"""
    run_dir: str = "papermill_runs/ppo"
    """the run folder: metrics.jsonl, episodes/, checkpoints/; one run per folder (other settings are refused),
    which resumes from its last checkpoint. `sftrl ppo` gives a new papermill_runs/<time>-ppo unless --out names
    one"""
    env_id: str = "gp-l"
    """the environment trained on (gp-l, gp-vl, virl-l, virl-vl)"""
    env_config: dict[str, Any] = field(default_factory=lambda: training_config("gp-l"))
    """the environment's settings (its config dataclass's fields); the default is the GP training rule"""
    max_attempts: int | None = None
    """verification budget per episode; None: the environment's own (GP 5, V-IRL 2 per point)"""
    tasks: str | None = None
    """a JSONL of training tasks (eval-set format) to cycle through; None: fresh deals from the training seeds"""
    # rollouts, per process and update
    episodes_per_update: int = 16
    """episodes each process plays per update"""
    group_size: int = 1
    """episodes per deal (the group of grpo / rloo, which need >= 2)"""
    temperature: float = 1.0
    """sampling temperature of the rollouts (0: greedy); log-probs are of logits / temperature"""
    top_p: float = 1.0
    """nucleus sampling of the rollouts (1: the full distribution)"""
    max_new_tokens: int = 128
    """longest response, in tokens"""
    rollout_batch_size: int = 16
    """conversations per generate call of the HF engine (vLLM gets every running conversation at once)"""
    engine: str = "auto"
    """who writes the rollouts: 'vllm' (in this process; the learner's weights are copied in after every update),
    'hf' (transformers generate on the learner itself), or 'auto' (vLLM where it is installed)"""
    # optimisation
    updates: int = 20
    """PPO updates (rollout, then ppo_epochs of optimisation) in the whole run"""
    learning_rate: float = 1e-6
    """AdamW learning rate: the paper's for GP (V-IRL: 1e-7); the quickstart trains the 135M default model at 1e-5"""
    ppo_epochs: int = 4
    """passes over every turn of the update"""
    minibatch_size: int = 8
    """turns per optimizer step, per process (the turns split into near-equal minibatches; none dropped)"""
    micro_batch_size: int = 4
    """turns per forward pass: gradients accumulate over the micro-batches of a minibatch"""
    clip_range: float = 0.1
    """epsilon of the clipped surrogate: the ratio pi/pi_old is clipped to [1 - eps, 1 + eps]"""
    value_clip_range: float = 0.2
    """how far a new value may move from the old one in the clipped value loss"""
    value_coef: float = 0.5
    """weight of the value loss in the total loss"""
    max_grad_norm: float = 1.0
    """gradient clipping: the largest global gradient norm of an optimizer step"""
    gamma: float = 0.9
    """discount per turn"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation over the turns of an episode"""
    advantage: Literal["gae", "grpo", "rloo"] = "gae"
    """'gae' (value head and GAE: the paper's), or critic-free 'grpo' (return z-scored within its group) or
    'rloo' (return minus the mean of the group's other episodes)"""
    normalise_advantages: bool = True
    """normalise the advantages of an update to mean 0, std 1 over the turns of all processes"""
    bootstrap_truncated: bool = False
    """when a budget runs out, bootstrap from the value of the state after it (else 0); one-conversation envs only"""
    kl_coef: float = 0.0
    """weight of a KL penalty to the initial policy (the paper has none; with LoRA the reference is adapters-off)"""
    entropy_coef: float = 0.0
    """weight of an entropy bonus"""
    thought_coef: float = 1.0
    """weight of the tokens before the answer field in the action log-prob (1: every token counts fully)"""
    lora: LoraSettings | None = None
    """train LoRA adapters instead of every weight (lora={r: 16, alpha: 32}); None: full fine-tuning"""
    mixed_precision: MixedPrecision = "auto"
    """'auto': bf16 autocast over fp32 weights on a CUDA GPU, fp32 elsewhere; or 'fp32' / 'bf16'"""
    gradient_checkpointing: bool = False
    """recompute each layer's activations in the backward pass instead of keeping them: the learner's activation
    memory shrinks to about one layer's, a micro-batch costs about a third more time; the weights come out the same
    (so a run may resume with it switched on or off)"""
    save_every: int = 5
    """a checkpoint (weights, value head, optimizer, FLOPs) every this many updates, and at the last"""
    seed: int = 0
    """seeds the value head, the training deals (disjoint from evaluation seeds), sampling and minibatch order"""
    init_tokens: int | None = None
    """D_init: tokens of the shared SFT initialisation, counted in the FLOPs; None: the `model` checkpoint's own
    (its checkpoint.json), 0 for a base model"""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.init_tokens is None:
            self.init_tokens = run_folder.start_tokens(self.model)
        resolve_engine(self.engine)  # an unknown name, or vllm where it is missing, fails here
        check_advantage(self.advantage, self.group_size)
        if self.episodes_per_update % self.group_size:
            raise ValueError("episodes_per_update must be a multiple of group_size")
        if self.minibatch_size % self.micro_batch_size:
            raise ValueError("minibatch_size must be a multiple of micro_batch_size")
        for name in ("updates", "ppo_epochs", "minibatch_size", "micro_batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (or None for the environment's own budget)")

    @property
    def uses_critic(self) -> bool:
        return self.advantage == "gae"

    @property
    def logit_scale(self) -> float:
        """What the sampled tokens' logits are divided by (models.logit_scale)."""
        return logit_scale(self.temperature)


# ---------------------------------------------------------------------------------------
# The pure pieces: advantages and losses (unit-tested against hand-computed values)


ADVANTAGES = ("gae", "grpo", "rloo")


def check_advantage(advantage: str, group_size: int) -> None:
    """A ValueError for an unknown advantage estimator, or a critic-free one (grpo, rloo:
    a baseline from the other episodes of a group) with groups of fewer than 2."""
    if advantage not in ADVANTAGES:
        raise ValueError(f"advantage must be 'gae', 'grpo' or 'rloo', got {advantage!r}")
    if advantage != "gae" and group_size < 2:
        raise ValueError(f"advantage={advantage!r} needs group_size >= 2, got {group_size}")


def gae(rewards: Sequence[float], values: Sequence[float], last_value: float, gamma: float, lam: float):
    """Generalised advantage estimates and returns over one episode's turns.

    last_value is V of the state after the last turn: 0 when the episode ended.
    """
    advantages = [0.0] * len(rewards)
    running, next_value = 0.0, last_value
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    returns = [a + v for a, v in zip(advantages, values)]
    return advantages, returns


def group_advantages(returns: Sequence[float], groups: Sequence[int], method: str) -> list[float]:
    """Critic-free episode advantages: 'grpo' (z-score within the group) or 'rloo'
    (return minus the mean return of the group's other episodes)."""
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    advantages = [0.0] * len(returns)
    for indices in members.values():
        group_returns = [returns[i] for i in indices]
        total, count = sum(group_returns), len(group_returns)
        mean = total / count
        std = math.sqrt(sum((r - mean) ** 2 for r in group_returns) / count)
        for i in indices:
            if method == "grpo":
                advantages[i] = (returns[i] - mean) / (std + 1e-6)
            elif method == "rloo":
                advantages[i] = returns[i] - (total - returns[i]) / (count - 1) if count > 1 else 0.0
            else:
                raise ValueError(f"unknown group advantage {method!r}")
    return advantages


def ppo_losses(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    new_values: torch.Tensor | None = None,
    old_values: torch.Tensor | None = None,
    returns: torch.Tensor | None = None,
    value_clip_range: float = 0.2,
) -> dict[str, torch.Tensor]:
    """Clipped surrogate and clipped value loss over a batch of actions (turns), keyed as
    in metrics.jsonl: policy_loss (pg_loss), clip_fraction (clipfrac), approx_kl (the
    (ratio - 1) - log ratio estimator) and, given values, value_loss (v_loss)."""
    logratio = new_logprobs - old_logprobs
    ratio = logratio.exp()
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
    clipfrac = ((ratio - 1).abs() > clip_range).float().mean()
    approx_kl = ((ratio - 1) - logratio).mean()
    out = {"policy_loss": pg_loss, "clip_fraction": clipfrac, "approx_kl": approx_kl}
    if new_values is not None:
        v_loss_unclipped = (new_values - returns) ** 2
        v_clipped = old_values + (new_values - old_values).clamp(-value_clip_range, value_clip_range)
        v_loss_clipped = (v_clipped - returns) ** 2
        out["value_loss"] = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    return out


def answer_token_weights(tokenizer, response_ids: Sequence[int], answer_field: str | None, coef: float) -> list[float]:
    """Per-token weights of the action log-prob: `coef` before the answer field, 1 from
    it on. The field is found in the decoded text, never by token ids, and read as the
    verifier reads it (`answers.field_offset`: any quoting of the key); an answer without
    the field is all 'thought'."""
    if coef == 1.0 or not response_ids:
        return [1.0] * len(response_ids)
    text = tokenizer.decode(response_ids, skip_special_tokens=False)
    position = field_offset(text, answer_field) if answer_field else None
    if position is None:
        return [coef] * len(response_ids)
    weights = []
    for i in range(len(response_ids)):
        end = len(tokenizer.decode(response_ids[: i + 1], skip_special_tokens=False))
        weights.append(1.0 if end > position else coef)
    return weights


# ---------------------------------------------------------------------------------------
# Training


class ActorCritic(nn.Module):
    """The policy network and its value head as one module, so DDP syncs both."""

    def __init__(
        self, model: nn.Module, value_head: nn.Module | None, autocast_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.autocast_dtype = autocast_dtype

    def forward(self, batch: dict[str, torch.Tensor], responses: list[list[int]], images: dict, logit_scale: float):
        """Per-token log-probs and entropies of each row's response, and V of each row's
        state (read at its last prompt token), or None without a critic."""
        scores = response_token_logprobs(
            self.model,
            batch,
            responses,
            images,
            logit_scale,
            autocast_dtype=self.autocast_dtype,
            entropies=True,
            last_hidden=self.value_head is not None,
        )
        values = None
        if self.value_head is not None:
            input_ids = batch["input_ids"]
            last_prompt_index = torch.tensor(
                [input_ids.shape[1] - len(r) - 1 for r in responses], device=input_ids.device
            )
            with autocast(input_ids.device, self.autocast_dtype):
                values = self.value_head(scores.last_hidden, last_prompt_index).float()
        return scores.logprobs, scores.entropies, values


@dataclass(frozen=True)
class _Turn:
    """One action (a whole response) and its state, flattened out of its episode."""

    prompt_ids: list[int]
    response_ids: list[int]
    images: list
    weights: list[float]  # per-token weights of the action log-prob (thought_coef)
    engine_logprobs: list[float] | None = None  # the generation engine's own, per token (diagnostic only)


@dataclass(frozen=True)
class RolloutBatch:
    """One update's per-turn tensors, in turn order (CleanRL's b_* arrays), fixed before
    the first gradient step."""

    logprobs: torch.Tensor  # log pi_old(a|s): the learner's weighted sum over the response tokens
    advantages: torch.Tensor  # float64; normalised over all processes if normalise_advantages
    values: torch.Tensor | None = None  # V_old(s); None without a critic
    returns: torch.Tensor | None = None  # GAE returns, the value targets; None without a critic
    ref_logprobs: list[torch.Tensor] | None = None  # per-token log pi_ref(a|s) for the KL term; None without one


LENGTH_FIELDS = ("updates",)
"""what a continuation of a run may raise (recorded in settings-history.jsonl)"""
OUTSIDE_RESULT = ("run_dir", "save_every", "gradient_checkpointing")
"""settings that change which checkpoints are written, or memory and time, not the weights"""


@releases_memory
def train_ppo(settings: PPOSettings) -> Path:
    """Run, resume or continue PPO in settings.run_dir; returns the run folder. A folder
    holding a run with other settings is refused (run_folder.claim_run_folder)."""
    distributed.check_launch()  # FSDP, ZeRO-3 and accelerate's own mixed precision are refused before anything loads
    accelerator = distributed.make_accelerator()
    run_dir = Path(settings.run_dir)
    tasks = load_training_tasks(settings.tasks)
    start_update, resume_folder = checkpoints.resume_point(run_dir)
    continued = run_folder.claim_run_folder(
        run_dir,
        "ppo",
        to_dict(settings),
        done=start_update,
        length_fields=LENGTH_FIELDS,
        outside_result=OUTSIDE_RESULT,
    )
    if start_update >= settings.updates:
        if continued and accelerator.is_main_process:
            run_folder.record_run_settings(run_dir, "ppo", to_dict(settings), start_update, continued)
        return run_dir  # complete: run again, it trains and rewrites nothing
    # Before anything loads: a run its GPU cannot hold stops here, not at its first optimizer step.
    plan = _memory_plan(settings, accelerator, run_dir)
    torch.manual_seed(settings.seed)  # a fresh value head is initialised from it
    policy = checkpoints.load_learner(
        settings.model,
        resume_folder,
        accelerator.device,
        lora=settings.lora,
        value_head=settings.uses_critic,
        mixed_precision=settings.mixed_precision,
    )
    if settings.gradient_checkpointing:  # only in training mode: generation and the no-grad passes keep activations
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    actor_critic = ActorCritic(policy.model, policy.value_head, policy.autocast_dtype)
    trainable = [p for p in actor_critic.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, eps=1e-5)
    distributed.configure_deepspeed(accelerator, settings.micro_batch_size, settings.max_grad_norm)
    actor_critic, optimizer = accelerator.prepare(actor_critic, optimizer)
    if resume_folder is not None:  # after prepare: under DeepSpeed the state is its optimizer's, one part per process
        checkpoints.load_optimizer(optimizer, resume_folder, *checkpoints.optimizer_shard(accelerator))
    reference = _reference_logprobs_fn(settings, policy, accelerator.device)
    engine = resolve_engine(settings.engine, policy.is_vision, accelerator.num_processes)
    generator = open_engine(policy, engine, **_engine_options(settings, plan, accelerator.device))
    probe = make(settings.env_id, **settings.env_config)
    if settings.bootstrap_truncated and not probe.single_conversation:
        raise ValueError(f"bootstrap_truncated needs one growing conversation; {settings.env_id} starts new ones")
    answer_field = probe.answer_field
    buffer_lambda = _buffer_lambda(probe)
    counters = checkpoints.running_totals(resume_folder)

    if accelerator.is_main_process:
        run_folder.record_run_settings(run_dir, "ppo", to_dict(settings), start_update, continued)
        run_folder.drop_metrics_after(run_dir, start_update)
    if start_update == 0:
        checkpoints.save_ppo_checkpoint(
            run_dir, 0, policy, optimizer, _counter_row(0, counters, policy, settings, buffer_lambda), accelerator
        )
    accelerator.wait_for_everyone()

    from tqdm.auto import tqdm

    bar = tqdm(
        range(start_update + 1, settings.updates + 1), desc="ppo updates", disable=not accelerator.is_main_process
    )
    for update in bar:
        started = time.perf_counter()
        timing: dict[str, float] = {}
        episodes, turns, stats = _ppo_update(
            update,
            actor_critic,
            optimizer,
            policy,
            generator,
            reference,
            settings,
            accelerator,
            tasks,
            answer_field,
            timing,
        )
        counters["tokens"] += int(stats["trained_tokens"])
        counters["generated_tokens"] += int(
            distributed.global_sum(accelerator, sum(len(t.response_ids) for t in turns))
        )
        counters["seconds"] += time.perf_counter() - started  # the checkpoint's writing is not training time
        row = {
            **_counter_row(update, counters, policy, settings, buffer_lambda),
            **distributed.episode_stats(episodes, accelerator),
            **stats,
        }
        if update % settings.save_every == 0 or update == settings.updates:
            with timed(timing, "save_checkpoint"):
                checkpoints.save_ppo_checkpoint(run_dir, update, policy, optimizer, row, accelerator)
        timing["timing_s/step"] = time.perf_counter() - started
        update_tokens = distributed.global_sum(accelerator, sum(len(t.prompt_ids) + len(t.response_ids) for t in turns))
        row.update(timing, **throughput(int(update_tokens), timing, accelerator.num_processes))
        if accelerator.is_main_process:
            run_folder.append_metrics(run_dir, row)
            write_episodes(run_folder.episodes_file(run_dir, update), episodes)
            bar.set_postfix(success=f"{row['success_rate']:.2f}", reward=f"{row['mean_return']:.2f}")
        accelerator.wait_for_everyone()
    distributed.record_process_agreement(run_dir, actor_critic, accelerator)
    return run_dir


def _memory_plan(settings: PPOSettings, accelerator, run_dir: Path) -> MemoryPlan:
    """The run's memory plan on this process's device (a MemoryPlanError on a GPU that
    cannot hold it), written into the run folder. DeepSpeed on a CPU (the suite's test of
    its path) is planned as DDP: the plan's ZeRO rows are of GPUs."""
    zero_stage = None if accelerator.device.type == "cuda" else 0
    plan = plan_for_settings("ppo", settings, accelerator.num_processes, accelerator.device, zero_stage=zero_stage)
    if accelerator.is_main_process:
        run_folder.write_memory_plan(run_dir, plan.format())
    return plan


def _engine_options(settings: PPOSettings, plan: MemoryPlan, device: torch.device) -> dict[str, Any]:
    """vLLM's options for PPO on a GPU: a KV cache for one rollout (episodes x the longest
    sequence the plan measured), and sleep mode where the plan needs it. On a CPU the
    engine keeps its defaults (its cache is host memory; the quickstart's numbers were
    measured with them)."""
    if device.type != "cuda":
        return {}
    longest = plan.request.prompt_tokens + settings.max_new_tokens
    return {"rollout": (settings.episodes_per_update, longest), "sleep_mode": plan.sleep_mode}


def _buffer_lambda(env) -> float:
    """The environment's D_buffer / D_RL, which PPO's FLOPs count (Env.buffer_lambda)."""
    value = getattr(env, "buffer_lambda", None)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"{env.env_id}: the environment states no buffer_lambda (found {value!r}): the inference tokens per "
            "trained token that PPO's FLOPs count (GeneralPoints 6, V-IRL 5.1). Give its class one."
        )
    return float(value)


def _ppo_update(
    update: int,
    actor_critic,
    optimizer,
    policy: Policy,
    generator,
    reference,
    settings: PPOSettings,
    accelerator,
    tasks,
    answer_field,
    timing: dict[str, float],
) -> tuple[list[Episode], list[_Turn], dict[str, float]]:
    """One PPO update, top to bottom: this update's episodes, their turns and its
    statistics; each stage's seconds are added to `timing` (verl's timing_s/ names)."""
    # 1. Rollout: every process plays its own episodes with the current policy (written
    #    by the generation engine, which holds the same weights).
    with timed(timing, "gen"):
        episodes = _collect(generator, settings, update, accelerator, tasks)
        if generator is not policy:
            generator.sleep()  # vLLM's sleep mode, where the plan chose it: memory for the update; the sync wakes it
    turns = _turns(policy, episodes, settings, answer_field)

    # 2. The learner's own forward pass: log pi_old(a|s) and V(s) of every turn (so the
    #    first minibatch's ratio is 1 whatever the generation numerics), and log pi_ref.
    with timed(timing, "old_log_prob"):
        b_logprobs, b_values, token_logprobs = _old_logprobs_and_values(actor_critic, policy, turns, settings)
    stats = _engine_logprob_gap(turns, token_logprobs)
    b_ref_logprobs = None
    if reference is not None:
        with timed(timing, "ref"):
            b_ref_logprobs = [lp for chunk in _chunks(turns, settings.micro_batch_size) for lp in reference(chunk)]

    # 3. Advantages: GAE over the turns of each episode, or a group baseline per episode.
    with timed(timing, "adv"):
        if settings.uses_critic:
            b_advantages, b_returns = _episode_gae(actor_critic, policy, episodes, b_values, settings)
        else:
            b_advantages, b_returns = _episode_group_advantages(episodes, settings), None
    stats["advantage_mean_raw"] = float(b_advantages.mean()) if len(b_advantages) else 0.0

    # 4. Normalisation over the turns of all processes.
    if settings.normalise_advantages:
        mean, std = distributed.global_mean_std(accelerator, b_advantages)
        b_advantages = (b_advantages - mean) / (std + 1e-8)

    # 5. ppo_epochs x minibatches x micro-batches over every turn.
    batch = RolloutBatch(b_logprobs, b_advantages, b_values, b_returns, b_ref_logprobs)
    with timed(timing, "update_actor"):
        stats.update(_optimise(actor_critic, optimizer, policy, turns, batch, settings, accelerator, update))

    # 6. The generation engine takes the new weights (the HF engine is the learner itself).
    if generator is not policy:
        with timed(timing, "update_weights"):
            generator.sync(policy)
    return episodes, turns, stats


def _collect(generator, settings: PPOSettings, update: int, accelerator, tasks) -> list[Episode]:
    """This process's episodes for one update: distinct deals per process and update."""
    deals = settings.episodes_per_update // settings.group_size
    first = ((update - 1) * accelerator.num_processes + accelerator.process_index) * deals
    config = dict(settings.env_config)
    if settings.max_attempts is not None:
        config["max_attempts"] = settings.max_attempts
    envs = [make(settings.env_id, **config) for _ in range(settings.episodes_per_update)]
    sampling = SamplingConfig(
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=training_deal_seed(settings.seed, first),
    )
    # The learner recomputes the old log-probs (step 2): the HF engine skips its own pass;
    # vLLM's come free and are kept for the gap diagnostic.
    with_logprobs = generator.engine != "hf"
    if tasks:
        picked = [tasks[(first + i // settings.group_size) % len(tasks)] for i in range(len(envs))]
        where = {"tasks": [t["task"] for t in picked]}
    else:
        where = {
            "seeds": [training_deal_seed(settings.seed, first + i // settings.group_size) for i in range(len(envs))]
        }
    return rollout(
        generator,
        envs,
        sampling,
        batch_size=settings.rollout_batch_size,
        progress=False,
        with_logprobs=with_logprobs,
        **where,
    )


def _turns(policy: Policy, episodes: list[Episode], settings: PPOSettings, answer_field) -> list[_Turn]:
    """Every turn of every episode, in order."""
    return [
        _Turn(
            turn.prompt_token_ids,
            turn.response_token_ids,
            turn.images,
            answer_token_weights(policy.tokenizer, turn.response_token_ids, answer_field, settings.thought_coef),
            turn.response_logprobs,
        )
        for episode in episodes
        for turn in episode.turns
    ]


def _actor_critic_pass(actor_critic, policy: Policy, turns: list[_Turn], settings: PPOSettings):
    """The learner on turns: per-token log-probs and entropies of each response, and V of
    each turn's state (None without a critic). Gradients flow if enabled."""
    responses = [t.response_ids for t in turns]
    batch = policy.pack([t.prompt_ids for t in turns], responses)
    return actor_critic(batch, responses, policy.image_inputs([t.images for t in turns]), settings.logit_scale)


def _action_logprobs(token_logprobs: list[torch.Tensor], turns: list[_Turn]) -> torch.Tensor:
    """log pi(a|s) of each turn: its token log-probs summed with their weights."""
    return torch.stack([(lp * torch.tensor(t.weights, device=lp.device)).sum() for lp, t in zip(token_logprobs, turns)])


@torch.no_grad()
def _old_logprobs_and_values(actor_critic, policy, turns, settings):
    """b_logprobs, b_values (None without a critic) and each turn's per-token log-probs,
    micro-batch by micro-batch."""
    logprobs, values, per_token = [], [], []
    for chunk in _chunks(turns, settings.micro_batch_size):
        token_logprobs, _, chunk_values = _actor_critic_pass(actor_critic, policy, chunk, settings)
        logprobs.append(_action_logprobs(token_logprobs, chunk))
        per_token += token_logprobs
        if chunk_values is not None:
            values.append(chunk_values)
    return torch.cat(logprobs), (torch.cat(values) if values else None), per_token


def _engine_logprob_gap(turns: list[_Turn], token_logprobs: list[torch.Tensor]) -> dict[str, float]:
    """Mean |log-prob by the generation engine - log-prob by the learner| over the
    update's response tokens (engines that report their own). Numerics only when
    top_p is 1: with a nucleus the engine's are renormalised over it, the learner's not."""
    gaps = [
        (torch.tensor(t.engine_logprobs, dtype=torch.float64) - lp.detach().double().cpu()).abs()
        for t, lp in zip(turns, token_logprobs)
        if t.engine_logprobs is not None and len(t.engine_logprobs) == len(lp) and len(lp)
    ]
    if not gaps:
        return {}
    return {"engine_logprob_gap": float(torch.cat(gaps).mean())}


def _episode_gae(actor_critic, policy, episodes, b_values, settings) -> tuple[torch.Tensor, torch.Tensor]:
    """b_advantages (float64) and b_returns: GAE over the turns of each episode."""
    advantages, returns, start = [], [], 0
    for episode in episodes:
        values = b_values[start : start + len(episode.turns)].tolist()
        start += len(episode.turns)
        last_value = _bootstrap_value(actor_critic, policy, episode, settings) if _truncated(episode, settings) else 0.0
        episode_advantages, episode_returns = gae(
            [t.reward for t in episode.turns], values, last_value, settings.gamma, settings.gae_lambda
        )
        advantages += episode_advantages
        returns += episode_returns
    return torch.tensor(advantages, dtype=torch.float64), torch.tensor(returns, dtype=torch.float32)


def _truncated(episode: Episode, settings: PPOSettings) -> bool:
    """An episode in one conversation that did not succeed ran out of budget."""
    return settings.bootstrap_truncated and not episode.success


@torch.no_grad()
def _bootstrap_value(actor_critic, policy, episode: Episode, settings) -> float:
    """V(conversation after the last feedback), for bootstrap_truncated."""
    exchanges = [(t.response, t.feedback) for t in episode.turns]
    text = policy.prompt_text(chat_messages(Observation(episode.prompt, episode.images), exchanges))
    prompt_ids = policy.encode([text], [episode.images])["input_ids"][0].tolist()
    _, _, values = _actor_critic_pass(actor_critic, policy, [_Turn(prompt_ids, [], episode.images, [])], settings)
    return float(values[0])


def _episode_group_advantages(episodes: list[Episode], settings: PPOSettings) -> torch.Tensor:
    """b_advantages (float64): each episode's group advantage, given to all its turns."""
    episode_returns = [sum(t.reward for t in e.turns) for e in episodes]
    groups = [index // settings.group_size for index in range(len(episodes))]
    advantages = group_advantages(episode_returns, groups, settings.advantage)
    return torch.tensor([a for e, a in zip(episodes, advantages) for _ in e.turns], dtype=torch.float64)


def _optimise(
    actor_critic,
    optimizer,
    policy,
    turns: list[_Turn],
    batch: RolloutBatch,
    settings: PPOSettings,
    accelerator,
    update: int,
) -> dict[str, float]:
    """ppo_epochs passes over every turn in shuffled minibatches. Every process takes the
    same number of optimizer steps (DDP needs it): ceil(largest turn count over processes
    / minibatch_size), each process splitting its turns into that many near-equal parts.
    A step's loss is the mean over the turns of all processes in it; its micro-batches
    accumulate gradients, synchronised at the last one."""
    rng = random.Random(settings.seed * 7919 + update)
    steps_per_epoch = max(1, math.ceil(distributed.global_max(accelerator, len(turns)) / settings.minibatch_size))
    logs: dict[str, list[float]] = {}
    trained_turns = trained_tokens = 0
    for epoch in range(settings.ppo_epochs):
        b_inds = rng.sample(range(len(turns)), len(turns))
        minibatches = _split_evenly(b_inds, steps_per_epoch)
        step_sizes = distributed.global_sums(accelerator, [len(mb_inds) for mb_inds in minibatches])
        for step, (mb_inds, step_size) in enumerate(zip(minibatches, step_sizes)):
            # Scaled so the processes' gradients, averaged by DDP, are the mean over the step's turns.
            scale = accelerator.num_processes / step_size
            micro_batches = list(_chunks(mb_inds, settings.micro_batch_size)) or [[]]
            for index, micro_inds in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                accelerator.sync_gradients = last  # accumulation boundary (DeepSpeed steps only there)
                # A process with no turn in this step still joins the gradient sync, with zero weight.
                inds = micro_inds or [0]
                micro = [turns[i] for i in inds]
                with accelerator.no_sync(actor_critic) if not last else contextlib.nullcontext():
                    losses, ratio_deviation = _micro_batch_losses(actor_critic, policy, micro, inds, batch, settings)
                    accelerator.backward(losses["loss"] * (len(micro_inds) * scale))
                if micro_inds:
                    for key, value in losses.items():
                        logs.setdefault(key, []).append(float(value.detach()))
                    trained_turns += len(micro)
                    trained_tokens += sum(len(t.prompt_ids) + len(t.response_ids) for t in micro)
                    if epoch == 0 and step == 0 and index == 0:  # 0 up to numerics: the learner made b_logprobs
                        logs["ratio_deviation_first_minibatch"] = [float(ratio_deviation)]
            grad_norm = accelerator.clip_grad_norm_(actor_critic.parameters(), settings.max_grad_norm)
            if grad_norm is not None:
                logs.setdefault("grad_norm", []).append(float(grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    accelerator.sync_gradients = True
    stats = {key: sum(values) / len(values) for key, values in logs.items()}
    stats["trained_turns"] = int(distributed.global_sum(accelerator, trained_turns))
    stats["trained_tokens"] = int(distributed.global_sum(accelerator, trained_tokens))
    if batch.values is not None:
        stats["explained_variance"] = _explained_variance(batch.values.cpu(), batch.returns.cpu())
    return stats


def _micro_batch_losses(
    actor_critic, policy: Policy, micro: list[_Turn], inds: list[int], batch: RolloutBatch, settings: PPOSettings
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The loss of one micro-batch (turns `micro`, at rows `inds` of the rollout batch)
    and its parts, as ppo_losses names them, with entropy, kl_to_initial (with a KL term)
    and loss = policy_loss - entropy_coef * entropy (+ value_coef * value_loss, + kl_coef
    * kl); and max |ratio - 1| over the micro-batch (0 up to numerics on the first one)."""
    token_logprobs, entropies, newvalues = _actor_critic_pass(actor_critic, policy, micro, settings)
    newlogprobs = _action_logprobs(token_logprobs, micro)
    device = newlogprobs.device
    mb_logprobs = batch.logprobs[inds].to(device)
    losses = ppo_losses(
        newlogprobs,
        mb_logprobs,
        batch.advantages[inds].to(device, newlogprobs.dtype),
        settings.clip_range,
        new_values=newvalues,
        old_values=batch.values[inds].to(device) if newvalues is not None else None,
        returns=batch.returns[inds].to(device) if newvalues is not None else None,
        value_clip_range=settings.value_clip_range,
    )
    entropy = torch.stack([e.mean() for e in entropies]).mean()
    loss = losses["policy_loss"] - settings.entropy_coef * entropy
    if newvalues is not None:
        loss = loss + settings.value_coef * losses["value_loss"]
    if settings.kl_coef > 0:
        kl = torch.stack([_k3(lp, batch.ref_logprobs[i].to(device)) for lp, i in zip(token_logprobs, inds)]).mean()
        loss = loss + settings.kl_coef * kl
        losses["kl_to_initial"] = kl
    losses.update(entropy=entropy, loss=loss)
    ratio_deviation = (newlogprobs.detach() - mb_logprobs).exp().sub(1).abs().max()
    return losses, ratio_deviation


def _split_evenly(items: list, parts: int) -> list[list]:
    """`parts` consecutive pieces whose sizes differ by at most one (some empty if
    there are fewer items than parts)."""
    size, extra = divmod(len(items), parts)
    pieces, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        pieces.append(items[start:end])
        start = end
    return pieces


def _reference_logprobs_fn(settings: PPOSettings, policy: Policy, device):
    """turns -> per-token log pi_ref of their responses (the initial policy: with LoRA
    the base with adapters off, else a frozen copy), or None without a KL term."""
    if settings.kl_coef <= 0:
        return None
    if settings.lora is not None:

        def reference(turns):
            with policy.model.disable_adapter():
                return _token_logprobs(policy.model, policy, turns, settings)

        return reference
    frozen = load_policy(settings.model, device=device, mixed_precision=settings.mixed_precision).model.eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return lambda turns: _token_logprobs(frozen, policy, turns, settings)


def _token_logprobs(model, policy: Policy, turns: list[_Turn], settings: PPOSettings) -> list[torch.Tensor]:
    """Per-token log-probs of the turns' responses under `model` (the reference)."""
    prompts, responses = [t.prompt_ids for t in turns], [t.response_ids for t in turns]
    return policy.score(
        prompts, responses, policy.image_inputs([t.images for t in turns]), settings.logit_scale, model=model
    )


def _k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Unbiased, non-negative per-token KL(pi || ref) estimate, summed over the response."""
    log_ratio = ref_logprobs - logprobs
    return (log_ratio.exp() - log_ratio - 1).sum()


# ---------------------------------------------------------------------------------------
# Bookkeeping: statistics, checkpoints, resume


def _counter_row(
    update: int, counters: dict, policy: Policy, settings: PPOSettings, buffer_lambda: float
) -> dict[str, Any]:
    flops = rl_flops(policy.num_parameters, settings.init_tokens, counters["tokens"], buffer_lambda)
    return {
        "method": "ppo",
        "update": update,
        "step": update,
        "tokens": counters["tokens"],
        "generated_tokens": counters["generated_tokens"],
        "init_tokens": settings.init_tokens,
        "num_parameters": policy.num_parameters,
        "buffer_lambda": buffer_lambda,
        "flops": flops,
        "gflops": gflops(flops),
        "seconds": round(counters["seconds"], 2),
    }


def _explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): how much of the returns the critic explains."""
    if len(target) < 2:
        return float("nan")
    variance = target.var()
    return float("nan") if variance == 0 else float(1 - (target - predicted).var() / variance)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]
