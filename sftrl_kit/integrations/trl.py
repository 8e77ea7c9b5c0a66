"""The kit's multi-turn tasks in TRL's GRPOTrainer, token in and token out.

    from trl import GRPOConfig, GRPOTrainer
    from sftrl_kit.integrations.trl import EpisodeRollout, episode_return, grpo_dataset

    trainer = GRPOTrainer(
        model="path/to/start",
        args=GRPOConfig(num_generations=4, shuffle_dataset=False, ...),
        train_dataset=grpo_dataset("gp-l", size=256),
        reward_funcs=[episode_return],
        rollout_func=EpisodeRollout("gp-l"),
    )

Why `rollout_func`. TRL offers two ways to put an environment in the loop. Its
`environment_factory` exposes the environment's methods as tools the model must call in
the chat template's tool-call syntax; a 135M model does not write tool calls, and the
paper's task has the model answer in plain JSON and the verifier reply. `rollout_func`
hands the trainer finished sequences: prompt ids, completion ids, an `env_mask` and any
extra fields for the reward functions, which is the paper's sequential revision as it is.

One TRL sample is one whole episode, kept as tokens by `token_episodes.TokenEpisode`:
`prompt_ids` is the task's first prompt as the chat template renders it; `completion_ids`
is the model's first answer, then the verifier's message as the next user turn, the next
answer, and so on until the task is solved or the verification budget is spent.
`env_mask` is 1 on the model's tokens and 0 on the environment's, so TRL's loss and
completion lengths count the answers alone. Each answer is generated from exactly the
token ids the trainer scores it in (token in, token out).

The reward of an episode is its return, the sum of its turns' verifier rewards, as in the
kit's own GRPO (`train.ppo.group_advantages`); `episode_return` is that reward function.
Text environments only (gp-l, gp3-l, virl-l): the VL variants need their images in TRL's
scoring pass, which `rollout_func` does not carry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import training_config, training_deal_seed
from ..envs import Env, make
from ..models import Policy, SamplingConfig
from .token_episodes import TokenEpisode

TASK_FIELD = "sftrl_task"
"""The key of a prompt's user message that holds its task as JSON. TRL passes
`rollout_func` the prompts alone, not the dataset rows, so the task travels inside them."""

TEXT_ENVIRONMENTS = ("gp-l", "gp3-l", "virl-l")


Generate = Callable[[list[list[int]]], list[tuple[list[int], list[float] | None]]]
"""Contexts (token ids) -> each context's response ids and their sampling log-probs
(None where the generator does not report them)."""


def grpo_dataset(env_id: str, size: int, seed: int = 0, env_config: dict[str, Any] | None = None):
    """A `datasets.Dataset` of `size` training deals for GRPOTrainer, one row per deal:
    `prompt` (the conversational first prompt, its task under TASK_FIELD) and `task`.

    The deals are the kit's PPO training deals of run `seed` in order
    (`data.training_deal_seed`), so with `shuffle_dataset=False` a TRL run meets the same
    deals, update by update, as the kit's GRPO of that seed and group size."""
    from datasets import Dataset

    _check_text_environment(env_id)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    env = make(env_id, **(training_config(env_id) if env_config is None else env_config))
    rows = []
    for index in range(size):
        observation, info = env.reset(seed=training_deal_seed(seed, index))
        task = json.dumps(info["task"], sort_keys=True)
        rows.append({"prompt": [{"role": "user", "content": observation.text, TASK_FIELD: task}], "task": task})
    return Dataset.from_list(rows)


def episode_return(completions: Sequence[Any], episode_return: Sequence[float], **_: Any) -> list[float]:
    """The reward function of `EpisodeRollout`'s samples: each episode's return, which the
    rollout computed from the verifier (TRL forwards it as an extra field)."""
    if len(episode_return) != len(completions):
        raise ValueError(f"{len(episode_return)} episode returns for {len(completions)} completions")
    return [float(value) for value in episode_return]


@dataclass
class EpisodeRollout:
    """GRPOTrainer's `rollout_func`: plays one kit episode per prompt it is given.

    Returns, per prompt: `prompt_ids`, `completion_ids`, `logprobs` (vLLM's sampling
    log-probs, 0 on environment tokens; None with transformers generation, where TRL does
    not use them), `env_mask`, and the extra fields `episode_return` (float), `success`
    (bool) and `turns` (int) for reward functions and logs.
    """

    env_id: str = "gp-l"
    """the environment (a text one: gp-l, gp3-l, virl-l)"""
    env_config: dict[str, Any] = field(default_factory=dict)
    """the environment's settings over its training rule (`data.training_config`)"""
    max_attempts: int | None = None
    """verification budget per episode; None: the environment's own (GP 5)"""
    max_turn_tokens: int = 128
    """longest answer of one turn, in tokens (transformers generation; vLLM's cap per call is TRL's
    max_completion_length)"""
    sequence_tokens: int = field(default=0, init=False)
    """tokens of every sequence this process has handed the trainer (prompt + completion): each is one forward
    and backward pass per TRL iteration, so D_RL = sequence_tokens x num_iterations (summed over processes)"""

    def __post_init__(self) -> None:
        _check_text_environment(self.env_id)
        config = {**training_config(self.env_id), **self.env_config}
        if self.max_attempts is not None:
            if self.max_attempts < 1:
                raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
            config["max_attempts"] = self.max_attempts
        make(self.env_id, **config)  # an unknown field or value fails here, not mid-run
        self._config = config

    def __call__(self, prompts: list, trainer) -> dict[str, list]:
        tasks = [task_of(prompt) for prompt in prompts]
        envs = [make(self.env_id, **self._config) for _ in tasks]
        generate = trainer_generator(trainer, self.max_turn_tokens)
        played = play_episodes(envs, tasks, trainer.processing_class, generate, running_anywhere(trainer))
        self.sequence_tokens += sum(map(len, played["prompt_ids"])) + sum(map(len, played["completion_ids"]))
        return played


def task_of(prompt: list[dict[str, Any]]) -> dict[str, Any]:
    """The task a `grpo_dataset` prompt carries (ValueError for a prompt from elsewhere)."""
    for message in prompt if isinstance(prompt, list) else []:
        if isinstance(message, dict) and TASK_FIELD in message:
            return json.loads(message[TASK_FIELD])
    raise ValueError(
        f"a prompt without its task ({TASK_FIELD!r} in a message): build the dataset with "
        "sftrl_kit.integrations.trl.grpo_dataset"
    )


def play_episodes(
    envs: Sequence[Env],
    tasks: Sequence[dict[str, Any]],
    tokenizer,
    generate: Generate,
    any_running: Callable[[bool], bool] = bool,
) -> dict:
    """Play each env's task to its end, every turn of all running episodes in one
    `generate` call; the rollout_func output (see `EpisodeRollout`).

    any_running(this process has episodes running) says whether to play another turn:
    with several processes sharing one generation server, every process calls `generate`
    (with no contexts once its own episodes are over) until all are done."""
    episodes = [TokenEpisode(env, task, tokenizer) for env, task in zip(envs, tasks, strict=True)]
    reported_logprobs = True
    while any_running(bool(running := [e for e in episodes if not e.done])):
        for episode, (response, logprobs) in zip(running, generate([e.context for e in running]), strict=True):
            reported_logprobs &= logprobs is not None
            episode.take_turn(response, logprobs)
    return {
        "prompt_ids": [e.prompt_ids for e in episodes],
        "completion_ids": [e.completion_ids for e in episodes],
        "logprobs": [e.logprobs for e in episodes] if reported_logprobs else None,
        "env_mask": [e.mask for e in episodes],
        "episode_return": [e.episode_return for e in episodes],
        "success": [e.success for e in episodes],
        "turns": [e.turns for e in episodes],
    }


def trainer_generator(trainer, max_turn_tokens: int) -> Generate:
    """Generation with the trainer's current weights: TRL's vLLM (colocate or server mode)
    when the trainer uses it, else transformers generate on the unwrapped model. Sampling
    is the trainer's temperature and top_p; other sampling settings are refused rather
    than silently ignored."""
    args = trainer.args
    for name, neutral in (("top_k", 0), ("min_p", None), ("repetition_penalty", 1.0)):
        if getattr(args, name, neutral) != neutral:
            raise ValueError(f"EpisodeRollout samples with temperature and top_p only; set {name}={neutral!r}")
    if getattr(trainer, "use_vllm", False):
        return _vllm_generator(trainer)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=max_turn_tokens)
    return _transformers_generator(trainer, sampling)


def _transformers_generator(trainer, sampling: SamplingConfig) -> Generate:
    from trl.models.utils import unwrap_model_for_generation

    def generate(contexts: list[list[int]]) -> list[tuple[list[int], None]]:
        with unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
        ) as model:
            policy = Policy(model, trainer.processing_class)
            return [(response, None) for response in policy.continue_token_ids(contexts, sampling)]

    return generate


def _vllm_generator(trainer) -> Generate:
    """TRL's own vLLM (`trainer.vllm_generation`, colocate or server mode); the trainer
    syncs its weights before it calls `rollout_func`."""

    def generate(contexts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        _, completion_ids, logprobs, _ = trainer.vllm_generation.generate(
            prompts=contexts, images=None, num_generations=1
        )
        return [(list(ids), [float(lp[0]) for lp in lps]) for ids, lps in zip(completion_ids, logprobs)]

    return generate


def running_anywhere(trainer) -> Callable[[bool], bool]:
    """`play_episodes`' any_running for the trainer's processes: on one process, whether
    its own episodes run; on several, whether any process's do (a sum over processes), as
    a vLLM server or tensor-parallel group needs every process in every generate call."""
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        return bool

    def any_running(running_here: bool) -> bool:
        import torch

        flag = torch.tensor([int(running_here)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item())

    return any_running


def _check_text_environment(env_id: str) -> None:
    if env_id not in TEXT_ENVIRONMENTS:
        raise ValueError(
            f"TRL's rollout_func carries text only: use one of {', '.join(TEXT_ENVIRONMENTS)}, not {env_id!r}"
        )
