"""What a study needs to know about each task: its environment, its rule and the other
rule, its reported and validation sets, its headline metric and the signatures of
answers that follow the rule not in force (`StudySettings.task` names one).

A new task joins the study notebooks with an entry here (docs/extending.md); its
environment, eval sets and SFT data come from `envs` and `data`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class StudyTask:
    """What a study needs to know about its task (study.StudySettings.task)."""

    env_id: str
    rule_field: str  # the environment setting that is the task's rule
    other_rule: dict[str, Any]  # the settings that put the other (rule-OOD) rule in force
    eval_sets: tuple[str, str]  # ID, rule-OOD
    validation_sets: tuple[str, str]  # ID, rule-OOD of other deals/routes: what choices (the window's pick) read
    fake_rule_set: str  # rule-OOD's prompt, the trained rule's verifier
    metric: str  # the headline rate: what one number per checkpoint should be
    unit: str  # what one SFT record count counts (deals or routes)
    answer_tokens: int  # room for the longest expert answer (GP: 52 tokens, V-IRL: 72, SmolLM2's tokenizer)
    signatures: tuple[str, ...]  # evaluation.failure_modes that count answers following the rule not in force
    visual_ood_set: str | None = None  # the vision tasks: the trained rule in visuals never trained on

    @property
    def id_set(self) -> str:
        """The frozen set of the trained rule (ID)."""
        return self.eval_sets[0]

    @property
    def rule_ood_set(self) -> str:
        """The frozen set of the other rule (rule-OOD)."""
        return self.eval_sets[1]

    @property
    def vision(self) -> bool:
        """Whether the task shows images (gp-vl, virl-vl): its model must see."""
        return self.visual_ood_set is not None


STUDY_TASKS = {
    "gp-l": StudyTask(
        "gp-l",
        "face_rule",
        {"face_rule": "ordinal", "sampling": "with_face"},
        ("gp-id", "gp-rule-ood"),
        ("gp-val-id", "gp-val-rule-ood"),
        "gp-fake-rule",
        "success_rate",
        "deals",
        64,
        ("other_rule_used", "other_rule_numbers"),
    ),
    "virl-l": StudyTask(
        "virl-l",
        "action_space",
        {"action_space": "relative"},
        ("virl-id", "virl-rule-ood"),
        ("virl-val-id", "virl-val-rule-ood"),
        "virl-fake-rule",
        "per_step_accuracy",
        "routes",
        96,
        ("other_rule_used",),
    ),
}
# GP3-L: GeneralPoints with three cards and target 12, an easier variant of the paper's
# task that the 135M default model partly solves (so that RL has successes to learn from
# on a CPU); the same face-card rules and signatures, its own frozen sets.
STUDY_TASKS["gp3-l"] = replace(
    STUDY_TASKS["gp-l"],
    env_id="gp3-l",
    eval_sets=("gp3-id", "gp3-rule-ood"),
    validation_sets=("gp3-val-id", "gp3-val-rule-ood"),
    fake_rule_set="gp3-fake-rule",
)
# The image versions: the same rules, sets and signatures; the cards or street views are
# shown, not written, and a third set changes the visuals only (red suits, other cities).
STUDY_TASKS |= {
    "gp-vl": replace(STUDY_TASKS["gp-l"], env_id="gp-vl", visual_ood_set="gp-visual-ood"),
    "virl-vl": replace(STUDY_TASKS["virl-l"], env_id="virl-vl", visual_ood_set="virl-visual-ood"),
}


def study_task(name: str) -> StudyTask:
    if name not in STUDY_TASKS:
        raise ValueError(f"unknown study task {name!r}; tasks: {', '.join(STUDY_TASKS)}")
    return STUDY_TASKS[name]
