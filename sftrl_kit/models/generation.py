"""What every generation engine speaks: how to sample (`SamplingConfig`), what to answer
(`Conversation`) and what came back (`Generation`). A leaf: it needs no model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class SamplingConfig:
    """How responses are sampled; recorded in every episode. temperature 0 is greedy.

    Nothing else shapes the distribution: no top-k, no repetition penalty, whatever the
    checkpoint's generation_config says (see `generation_config`).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logit_scale(self) -> float:
        """Log-probs are taken of logits / temperature (of raw logits when greedy)."""
        return logit_scale(self.temperature)


def logit_scale(temperature: float) -> float:
    """What logits are divided by before the log-softmax of a sampled token's log-prob:
    the temperature, or 1 for greedy decoding (temperature 0: raw logits)."""
    return 1.0 if temperature == 0 else temperature


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class Generation:
    """One response. response_logprobs: log-prob of each sampled token under the
    distribution it was sampled from (logits / temperature, renormalised over the top_p
    nucleus; raw logits when greedy)."""

    text: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_logprobs: list[float] | None = None
