"""Episode records and the sequential-revision conversation.

`chat_messages` is the one function that turns a prompt and the exchanges so far into
transformers chat messages; rollouts, SFT data and viewers all call it. Text-only
prompts give string contents (what text-model chat templates expect); prompts with
images give content-part lists with {"type": "image"} placeholders, the images
themselves travelling beside the messages (as processors and TRL expect).

Episodes round-trip through JSONL. Images are not stored in them: `task` holds what the
environment needs to redraw the observation (`env.reset(options={"task": task})`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .envs.base import Observation
from .files import write_atomically


@dataclass
class Turn:
    response: str
    reward: float
    outcome: str
    feedback: str  # the observation text the environment answered with
    verdict: dict[str, Any] = field(default_factory=dict)
    prompt_token_ids: list[int] | None = None
    response_token_ids: list[int] | None = None
    response_logprobs: list[float] | None = None
    images: list = field(default_factory=list, repr=False, compare=False)  # the turn's prompt images; not saved

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("images")
        return record


@dataclass
class Episode:
    env_id: str
    env_config: dict[str, Any]
    task: dict[str, Any]
    prompt: str
    turns: list[Turn] = field(default_factory=list)
    success: bool = False
    split: str | None = None
    seed: int | None = None
    sampling: dict[str, Any] | None = None
    engine: str | None = None  # the generation engine that wrote the responses ("hf", "vllm")
    images: list = field(default_factory=list, repr=False, compare=False)

    @property
    def total_reward(self) -> float:
        return sum(turn.reward for turn in self.turns)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("images")
        record["turns"] = [turn.to_json() for turn in self.turns]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Episode:
        known = {f.name for f in fields(cls)} - {"images"}
        unknown = set(record) - known
        if unknown:
            raise ValueError(f"episode record has unknown keys {sorted(unknown)}")
        record = dict(record)
        record["turns"] = [Turn(**turn) for turn in record.get("turns", [])]
        return cls(**record)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line, the file whole or not at all (files.write_atomically);
    returns the number of records."""
    lines = [json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records]
    write_atomically(path, "".join(lines))
    return len(lines)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
    return records


def write_episodes(path: str | Path, episodes: Iterable[Episode]) -> int:
    return write_jsonl(path, (episode.to_json() for episode in episodes))


def read_episodes(path: str | Path) -> list[Episode]:
    return [Episode.from_json(record) for record in read_jsonl(path)]


def chat_messages(
    prompt: Observation,
    exchanges: Sequence[tuple[str, str]] = (),
    final_response: str | None = None,
) -> list[dict[str, Any]]:
    """[user: prompt] + [assistant: answer, user: feedback]* + [assistant: final]?"""
    with_parts = bool(prompt.images)
    messages = [_message("user", prompt.text, with_parts, num_images=len(prompt.images))]
    for response, feedback in exchanges:
        messages.append(_message("assistant", response, with_parts))
        messages.append(_message("user", feedback, with_parts))
    if final_response is not None:
        messages.append(_message("assistant", final_response, with_parts))
    return messages


def _message(role: str, text: str, with_parts: bool, num_images: int = 0) -> dict[str, Any]:
    if not with_parts:
        return {"role": role, "content": text}
    parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    parts.append({"type": "text", "text": text})
    return {"role": role, "content": parts}
