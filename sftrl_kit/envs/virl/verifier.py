"""The V-IRL verifier: one answer at one decision point in, one Verdict out.

Outcomes and rewards follow the paper's appendix B.3 (values in `VirlRewards`):
    correct          the expert's action at this point
    wrong_action     a legal action of the space, but not the right one here
    invalid_action   not an action of the active space (e.g. "turn_direction(north)"
                     under the relative space: the trained rule applied to the new one)
    unparseable      no answer object with an "action" field
All but `correct` earn the wrong-action reward. V-IRL-VL adds `landmark_missed` when
the point shows named places and "current observation" names none of them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..answers import AnswerError, parse_answer
from .config import VirlConfig
from .prompts import ANSWER_FIELDS, valid_actions
from .routes import COMPASS, Decision

OUTCOMES = ("correct", "wrong_action", "invalid_action", "unparseable")
_CALL = re.compile(r"^\s*([a-z_]+)\s*\(\s*['\"]?\s*([a-z ]*?)\s*['\"]?\s*\)\s*$")


@dataclass(frozen=True)
class Verdict:
    reward: float
    outcome: str
    feedback: str
    action: str | None = None
    landmarks_found: bool | None = None  # None when landmarks are not checked here
    other_space_used: bool = False  # an action of the other action space

    @property
    def success(self) -> bool:
        return self.outcome == "correct"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise_action(text: Any) -> str:
    """'Turn_Direction( North East )' -> 'turn_direction(northeast)'; 'forward' -> 'forward()'."""
    raw = " ".join(str(text).strip().lower().split())
    if raw in ("forward", "stop"):
        return raw + "()"
    match = _CALL.match(raw)
    if not match:
        return raw
    name, argument = match.groups()
    if argument.replace(" ", "") in COMPASS:
        argument = argument.replace(" ", "")
    return f"{name}({argument})"


def verify(answer_text: str, decision: Decision, config: VirlConfig) -> Verdict:
    rewards = config.rewards
    try:
        answer = parse_answer(answer_text, fields=ANSWER_FIELDS, required=("action",))
    except AnswerError as error:
        return Verdict(rewards.wrong_action, "unparseable",
                       f'I could not read your answer ({error}). Reply with one JSON object with "current observation", '
                       '"current instruction" and "action".',
                       landmarks_found=False if config.checks_landmarks and decision.landmarks else None)
    action = normalise_action(answer.get("action", ""))
    allowed = valid_actions(config.action_space)
    if action not in allowed:
        other = "relative" if config.action_space == "absolute" else "absolute"
        verdict = Verdict(rewards.wrong_action, "invalid_action",
                          f"{action or 'an empty action'} is not an action here; use one of: {', '.join(sorted(allowed))}.",
                          action, other_space_used=action in valid_actions(other))
    elif action != decision.action:
        verdict = Verdict(rewards.wrong_action, "wrong_action", f"{action} is not the right action at this point.", action)
    else:
        verdict = Verdict(rewards.correct, "correct", f"Correct: {action}.", action)
    if config.checks_landmarks and decision.landmarks:
        seen = str(answer.get("current observation", "")).lower()
        found = any(m.name.lower() in seen for m in decision.landmarks)
        verdict = replace(verdict, landmarks_found=found)
        if not found:
            verdict = replace(verdict, reward=verdict.reward + rewards.landmark_missed,
                              feedback=verdict.feedback + " You also missed the named places in view.")
    return verdict
