"""The V-IRL prompt and answer format: the one place either is worded.

Sections: task (with the action space, which is the rule that changes between ID and
OOD), the route instruction, the observation (places in view as text for V-IRL-L, a
2x2 street-view grid for V-IRL-VL) with the recent history, and the JSON output schema
(the action space repeated).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .config import VirlConfig
from .routes import COMPASS, RELATIVE_TURNS, Landmark, relation_phrase

ANSWER_FIELDS = ("current observation", "current instruction", "action")


def action_space_text(space: str) -> str:
    if space == "absolute":
        directions = ", ".join(COMPASS)
        return f"turn_direction(x) with x one of {directions}; forward(); stop()"
    turns = ", ".join(
        f"{name} ({abs(angle)} degrees)"
        for angle, name in sorted(RELATIVE_TURNS.items(), key=lambda kv: (abs(kv[0]), kv[0]))
    )
    return f"turn_direction(x) with x one of {turns}, relative to where you face; forward(); stop()"


def valid_actions(space: str) -> set[str]:
    names = COMPASS if space == "absolute" else tuple(RELATIVE_TURNS.values())
    return {f"turn_direction({name})" for name in names} | {"forward()", "stop()"}


def describe_landmarks(landmarks: Sequence[Landmark]) -> str:
    if not landmarks:
        return "No named places in view."
    return "; ".join(f"{m.name} is {relation_phrase(m.relation)}" for m in landmarks) + "."


def build_prompt(instruction: str, observation: str, history: Sequence[tuple[str, str]], config: VirlConfig) -> str:
    """The prompt in config.prompt_variant's wording and layout (0: task, instruction,
    observation, output), stating config.stated_action_space."""
    space = action_space_text(config.stated_action_space)
    recent = list(history)[-config.history :] if config.history else []
    steps = " ".join(f"O_{i}: {o} A_{i}: {a}" for i, (o, a) in enumerate(recent, len(history) - len(recent) + 1))
    if config.modality == "image":
        seen = (
            "The image shows the street around you: front (top left), right (top right), back (bottom left), "
            'left (bottom right). In "current observation", name every place whose sign you see and no other, '
            'as in "PLACE A is on your left; PLACE B is in front of you." '
            '("No named places in view." if there is none).'
        )
    else:
        seen = f"Current observation: {observation}"
    return _VARIANTS[config.prompt_variant](instruction, steps or "none yet.", seen, space)


_SCHEMA = (
    '{{"current observation": "the places you see and where", '
    '"current instruction": "the sentence of the instruction you are following now", '
    '"action": "one action: {space}"}}'
)


def _canonical(instruction: str, history: str, seen: str, space: str) -> str:
    return "\n".join(
        [
            "[Task]",
            "You are an expert at finding your way through a city. Follow the route instruction to the "
            f"destination, one action at a time. Actions: {space}.",
            "",
            "[Instruction]",
            instruction,
            "",
            "[Observation]",
            f"History: {history}",
            seen,
            "",
            "[Output]",
            "Reply with one JSON object and nothing else:",
            _SCHEMA.format(space=space),
        ]
    )


def _reworded(instruction: str, history: str, seen: str, space: str) -> str:
    return "\n".join(
        [
            "## Goal",
            "You navigate city streets well. Walk to the destination by following the directions below, "
            f"taking one action per reply. The actions you may take: {space}.",
            "",
            "## Directions",
            instruction,
            "",
            "## Where you are",
            f"Earlier steps: {history}",
            seen,
            "",
            "## Answer format",
            "A single JSON object only:",
            _SCHEMA.format(space=space),
        ]
    )


def _observation_first(instruction: str, history: str, seen: str, space: str) -> str:
    return "\n".join(
        [
            "[Observation]",
            seen,
            f"History: {history}",
            "",
            "[Instruction]",
            instruction,
            "",
            "[Task]",
            f"Take the next action on the way to the destination, as an expert navigator would. Actions: {space}.",
            "",
            "[Output]",
            "One JSON object, nothing else:",
            _SCHEMA.format(space=space),
        ]
    )


def _plain(instruction: str, history: str, seen: str, space: str) -> str:
    return "\n".join(
        [
            f"You are walking through a city along this route: {instruction}",
            f"So far: {history} {seen}",
            f"What is your next action? You can use: {space}. Write only a JSON object:",
            _SCHEMA.format(space=space),
        ]
    )


_VARIANTS = (_canonical, _reworded, _observation_first, _plain)  # envs.base.PROMPT_VARIANTS of them


def instruction_sentences(instruction: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", instruction.strip()) if s]


def format_answer(observation: str, instruction_sentence: str, action: str, thought: str | None = None) -> str:
    """A well-formed answer, as the expert writes it; with `thought`, a short reasoning field comes first."""
    answer = {"current observation": observation, "current instruction": instruction_sentence, "action": action}
    return json.dumps({"thought": thought, **answer} if thought is not None else answer)


def action_thought(instruction_sentence: str, action: str, space: str) -> str:
    """The expert's reasoning before its answer: the sentence it follows, read in the stated action space."""
    kind = "compass directions" if space == "absolute" else "turns relative to where I face"
    return f'I am at "{instruction_sentence}" Actions are {kind}, so: {action}.'


def sentence_per_decision(decisions, instruction: str) -> list[str]:
    """The instruction sentence each decision follows: turns follow 'First/Then, turn'
    sentences, forward() the next 'Move forward' one, stop() the last; free-form
    instructions (real routes) fall back to the nearest sentence."""
    sentences = instruction_sentences(instruction) or [instruction]
    out, current = [], 0
    for decision in decisions:
        if decision.action == "stop()":
            out.append(sentences[-1])
            continue
        turning = decision.action.startswith("turn_direction")
        starts = ("First", "Then") if turning else ("Move",)
        found = next((j for j in range(current, len(sentences)) if sentences[j].startswith(starts)), None)
        index = min(current, len(sentences) - 1) if found is None else found
        out.append(sentences[index])
        current = index + 1 if turning and found is not None else index
    return out
