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
    space = action_space_text(config.action_space)
    recent = list(history)[-config.history :] if config.history else []
    lines = [f"O_{i}: {o} A_{i}: {a}" for i, (o, a) in enumerate(recent, len(history) - len(recent) + 1)]
    if config.modality == "image":
        seen = (
            "The image shows the street around you: front (top left), right (top right), back (bottom left), "
            'left (bottom right). In "current observation", name every place whose sign you see and no other, '
            'as in "PLACE A is on your left; PLACE B is in front of you." '
            '("No named places in view." if there is none).'
        )
    else:
        seen = f"Current observation: {observation}"
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
            "History: " + (" ".join(lines) if lines else "none yet."),
            seen,
            "",
            "[Output]",
            "Reply with one JSON object and nothing else:",
            '{"current observation": "the places you see and where", '
            '"current instruction": "the sentence of the instruction you are following now", '
            f'"action": "one action: {space}"}}',
        ]
    )


def instruction_sentences(instruction: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+", instruction.strip()) if s]


def format_answer(observation: str, instruction_sentence: str, action: str) -> str:
    return json.dumps(
        {"current observation": observation, "current instruction": instruction_sentence, "action": action}
    )


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
