"""The V-IRL verifier: one answer at one decision point in, one Verdict out.

Outcomes and rewards follow the paper's appendix B.3 (values in `VirlRewards`):
    correct          the expert's action at this point
    wrong_action     a legal action of the space, but not the right one here
    invalid_action   not an action of the active space (e.g. "turn_direction(north)"
                     under the relative space: the trained rule applied to the new one)
    unparseable      no answer object with an "action" field
All but `correct` earn the wrong-action reward. An invalid action that belongs to the
other action space sets `other_rule_used`, as a GP formula valued under the other face
rule does: the answer followed the rule that is not in force.

V-IRL-VL also checks landmark recognition wherever the route knows what is in view
(every point of a generated route, the intersections of a real one): the answer's
"current observation" must name exactly the places in view, every one of them and no
other (`claimed_places`; names compared after `normalise_place`). The verdict reports it
as `recognition_correct` (None where not checked; an unreadable answer recognised
nothing), the key evaluation's recognition accuracy reads, as in GP-VL; a failed
recognition adds `landmark_missed`.
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
_NOTHING_SEEN = ("", "none", "no named places in view", "no landmark nearby", "no landmarks nearby")


@dataclass(frozen=True)
class Verdict:
    reward: float
    outcome: str
    feedback: str
    action: str | None = None
    recognised_places: list[str] | None = None  # normalised names the observation claims (VL)
    recognition_correct: bool | None = None  # None when recognition is not checked here
    other_rule_used: bool = False  # an action of the other action space (the space is V-IRL's rule)

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
        return Verdict(
            rewards.wrong_action,
            "unparseable",
            f'I could not read your answer ({error}). Reply with one JSON object with "current observation", '
            '"current instruction" and "action".',
            recognition_correct=False if _checks_recognition(decision, config) else None,
        )
    action = normalise_action(answer.get("action", ""))
    allowed = valid_actions(config.action_space)
    if action not in allowed:
        other = "relative" if config.action_space == "absolute" else "absolute"
        verdict = Verdict(
            rewards.wrong_action,
            "invalid_action",
            f"{action or 'an empty action'} is not an action here; use one of: {', '.join(sorted(allowed))}.",
            action,
            other_rule_used=action in valid_actions(other),
        )
    elif action != decision.action:
        verdict = Verdict(
            rewards.wrong_action, "wrong_action", f"{action} is not the right action at this point.", action
        )
    else:
        verdict = Verdict(rewards.correct, "correct", f"Correct: {action}.", action)
    if not _checks_recognition(decision, config):
        return verdict
    claimed = claimed_places(answer.get("current observation"))
    correct = claimed == {normalise_place(m.name) for m in decision.landmarks}
    verdict = replace(verdict, recognised_places=sorted(claimed), recognition_correct=correct)
    if not correct:
        verdict = replace(
            verdict,
            reward=verdict.reward + rewards.landmark_missed,
            feedback=verdict.feedback + " Also, the places you named are not the places in view.",
        )
    return verdict


def _checks_recognition(decision: Decision, config: VirlConfig) -> bool:
    return config.checks_landmarks and decision.view_known


def normalise_place(name: str) -> str:
    """'St. Ives  Osteria' -> 'st ives osteria': case, punctuation and spacing dropped."""
    return " ".join(re.sub(r"[\W_]+", " ", str(name).casefold()).split())


def claimed_places(observation: Any) -> set[str]:
    """The places an observation names, normalised.

    The observation is read in the format the prompt shows and `describe_landmarks`
    writes: clauses "NAME is on your RELATION" separated by ";" or line breaks (a list
    is read item by item). A clause's place is the text before its first " is ", or
    the whole clause; "No named places in view." (or nothing) names none. So an answer
    that lists extra places, or runs every name into one clause, claims places that are
    not in view."""
    items = observation if isinstance(observation, list) else re.split(r"[;\n]", str(observation or ""))
    claimed = set()
    for item in items:
        clause = str(item).strip().rstrip(".").strip()
        if clause.lower() in _NOTHING_SEEN:
            continue
        name = normalise_place(re.split(r"\s+is\s+", clause, maxsplit=1, flags=re.IGNORECASE)[0])
        if name:
            claimed.add(name)
    return claimed
