"""A kit episode kept as tokens: the one implementation behind the TRL rollout and the
verl agent loop.

Trainers that score a multi-turn episode as one sequence (TRL's rollout_func, verl's
agent loops) need the episode as token ids: the first prompt, then each answer exactly
as sampled, with the environment's turns between them. `TokenEpisode` grows that
sequence turn by turn. Each answer is generated from `context`, the very ids the trainer
will score it in, and is never re-rendered from text, so no answer is trained in a
context other than the one it was sampled in (a decoded and re-encoded answer can differ
from the sampled ids).

The environment's turns come from the chat template itself (`user_turn_ids`), and the
episode's return is the sum of the verifier's rewards, as in the kit's own rollouts.
When an environment moves to a new decision point (V-IRL's `info["new_prompt"]`), the
kit's rollouts start a new conversation; one sequence cannot, so here the next point's
prompt continues the conversation as a user turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..envs import Env

_SENTINEL = "\u2063SFTRL-ANSWER\u2063"


class TokenEpisode:
    """One episode of `env` on `task`, as the token ids of one sequence.

    Attributes:
        prompt_ids: the first prompt, as the chat template renders it with the
            generation prompt (the assistant turn's opening).
        completion_ids: everything after it: answers and the environment's turns.
        mask: 1 on each answer token, 0 on each environment token (over completion_ids).
        logprobs: the sampling log-probs of the answer tokens as the generator reported
            them, 0.0 on environment tokens (and on answers reported without any).
        episode_return: the sum of the verifier's rewards so far.
        success: the task was solved.
        turns: answers given.
        done: the episode is over (solved, or the verification budget spent).
    """

    def __init__(self, env: Env, task: dict[str, Any], tokenizer) -> None:
        observation, _ = env.reset(options={"task": task})
        if observation.images:
            raise ValueError(f"{env.env_id} observes images; a token episode carries text only")
        self.env, self.tokenizer = env, tokenizer
        prompt = _render(tokenizer, [{"role": "user", "content": observation.text}], add_generation_prompt=True)
        self.prompt_ids: list[int] = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        self.completion_ids: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.episode_return = 0.0
        self.success = False
        self.turns = 0
        self.done = False

    @property
    def context(self) -> list[int]:
        """What the next answer is generated from: the whole sequence so far."""
        return self.prompt_ids + self.completion_ids

    def take_turn(self, response_ids: Sequence[int], logprobs: Sequence[float] | None = None) -> None:
        """Hand the environment one answer (its text decoded from `response_ids`, special
        tokens dropped, as the kit's engines decode), and append it and, unless the episode
        ended, the environment's reply as the next user turn."""
        if self.done:
            raise RuntimeError("the episode is over")
        response = list(response_ids)
        if logprobs is not None and len(logprobs) != len(response):
            raise ValueError(f"{len(logprobs)} log-probs for {len(response)} answer tokens")
        text = self.tokenizer.decode(response, skip_special_tokens=True)
        observation, reward, terminated, truncated, info = self.env.step(text)
        self._append(response, 1, list(logprobs) if logprobs is not None else [0.0] * len(response))
        self.episode_return += float(reward)
        self.turns += 1
        if terminated or truncated:
            self.done, self.success = True, bool(info.get("success", False))
            return
        stop = self.tokenizer.eos_token_id
        ended = bool(response) and stop is not None and response[-1] == stop
        following = user_turn_ids(self.tokenizer, observation.text, after_stop_token=ended)
        self._append(following, 0, [0.0] * len(following))

    def _append(self, ids: list[int], mask: int, logprobs: list[float]) -> None:
        self.completion_ids += ids
        self.mask += [mask] * len(ids)
        self.logprobs += logprobs


def user_turn_ids(tokenizer, text: str, after_stop_token: bool) -> list[int]:
    """The tokens between an answer and the next one: the chat template's close of the
    assistant turn, `text` as a user turn, and the next assistant turn's opening.

    The template is rendered around a sentinel answer and cut after it, so whatever a
    template writes (Llama 3's headers, ChatML's <|im_start|>) comes from the template
    itself. When the answer ended with its stop token (`after_stop_token`), that token is
    the close's first token and is not repeated; an answer cut off by the token cap gets
    the whole close."""
    messages = [
        {"role": "user", "content": "-"},
        {"role": "assistant", "content": _SENTINEL},
        {"role": "user", "content": text},
    ]
    rendered = _render(tokenizer, messages, add_generation_prompt=True)
    if rendered.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not render an assistant answer verbatim")
    following = rendered.split(_SENTINEL, 1)[1]
    if after_stop_token:
        stop_text = tokenizer.eos_token or ""
        if not stop_text or not following.startswith(stop_text):
            raise ValueError(
                f"the chat template closes an assistant turn with {following[:20]!r}, not with the stop token "
                f"{stop_text!r}: the answer's own stop token cannot stand for the close"
            )
        following = following[len(stop_text) :]
    return list(tokenizer(following, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, add_generation_prompt=add_generation_prompt, tokenize=False)
