"""How big each run of the study is, in one place: the presets.

A preset is one complete set of sizes for every notebook: the study's (StudySettings,
which study.py turns into SFTSettings and PPOSettings), plus the few sizes a single
notebook has of its own (the SFT branches and budgets of 08, the data of 02, the
episodes 01 plays). `sftrl run <preset>` executes the preset's notebooks and passes each
one `preset=<name>`; a notebook opened in JupyterLab names its preset in its parameters
cell. SFTRL_SMOKE=1 in the environment picks `smoke` whatever the notebook says.

    quickstart   00 on the embedded default model in about 25 minutes on a 2-core CPU
                 (and 06, recognition probing, when the task shows images: gp-vl, virl-vl)
    study        02, 03, 04, 05, 07 and 08 on one run folder, sized for a GPU machine
                 (06 is the image tasks' notebook: `sftrl run quickstart -p task gp-vl`)
    smoke        every notebook in seconds on the tiny model (CI)

A notebook's parameters that are not None, and the `overrides` dict of its parameters
cell (any field of StudySettings or of Preset), replace the preset's values: `choose`.
To add a preset, add an entry to PRESETS built the same way (`replace` from a preset
whose sizes are close).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .data import GPDataSizes, VirlDataSizes
from .study import StudySettings

STUDY_NOTEBOOKS = ("02_data_generation", "03_sft", "04_ppo_launch", "05_evaluation", "07_failure_cases", "08_ablations")


@dataclass
class Preset:
    """A complete set of sizes: the study's, and each notebook's own."""

    name: str
    """the preset's name (quickstart, study, smoke)"""
    notebooks: tuple[str, ...] | None
    """what `sftrl run <name>` executes; None: every notebook in the folder"""
    study: StudySettings
    """the study's sizes and design: 00, 03, 04, 05, 07 and 08"""
    sft_branch_steps: int = 0
    """08: SFT steps of its branches; 0: as many as reach PPO's GFLOPs (matched compute)"""
    budgets: tuple[int, ...] = (1, 3, 5, 10)
    """08: verification budgets of the PPO ablation"""
    played_episodes: int = 6
    """01: GP episodes the model plays (and a third as many V-IRL ones)"""
    data_root: str | None = "data"
    """02: where eval sets and SFT data go (another size goes to another root); None: the run folder's data/"""
    gp_data: GPDataSizes = field(default_factory=GPDataSizes)
    """02: the GeneralPoints data's sizes"""
    virl_data: VirlDataSizes = field(default_factory=VirlDataSizes)
    """02: the V-IRL data's sizes"""
    vision_notebooks: tuple[str, ...] = ()
    """what `sftrl run <name>` adds when the task shows images"""


QUICKSTART = Preset("quickstart", ("00_quickstart",), StudySettings(), vision_notebooks=("06_recognition_probing",))

STUDY = Preset(
    "study",
    STUDY_NOTEBOOKS,
    replace(
        QUICKSTART.study,
        start_rules="trained",  # the paper's design, for a backbone that already follows stated rules
        start_steps=64,
        sft_learning_rate=2e-5,
        ppo_updates=20,
        episodes_per_update=16,
        ppo_epochs=2,
        ppo_learning_rate=1e-6,
        train_max_attempts=5,
        checkpoints=4,
        eval_limit=100,
        eval_max_attempts=5,
    ),
)

SMOKE = Preset(
    "smoke",
    None,
    replace(
        QUICKSTART.study,
        model="tiny",
        sft_records=32,
        start_steps=2,
        sft_batch_size=4,
        ppo_updates=2,
        episodes_per_update=4,
        max_new_tokens=16,
        eval_limit=4,
        checkpoints=2,
    ),
    sft_branch_steps=2,
    budgets=(1, 3),
    played_episodes=2,
    data_root=None,
    gp_data=GPDataSizes(eval_size=8, sft_text=16, sft_image=4, samples=2),
    virl_data=VirlDataSizes(eval_routes=4, visual_ood_routes=2, sft_text_routes=4, sft_image_routes=2, samples=1),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (QUICKSTART, STUDY, SMOKE)}

_FIXED = ("name", "notebooks", "study", "vision_notebooks")  # a preset's identity, not sizes to override


def override_fields() -> dict[str, str]:
    """{name: type} of every size an override may change: StudySettings' fields and the
    preset's own; the type as written in the dataclass ('dict' for a nested dataclass,
    which an override changes field by field)."""
    own = {f.name: f for f in dataclasses.fields(Preset) if f.name not in _FIXED}
    study = {f.name: f for f in dataclasses.fields(StudySettings)}
    return {name: "dict" if f.name in ("gp_data", "virl_data") else str(f.type) for name, f in {**study, **own}.items()}


def overrides_help() -> str:
    """What `sftrl run --help` lists: every field an override may change, with its
    default (the quickstart's), type and meaning (config.settings_help's format)."""
    from .config import settings_help

    own = settings_help(Preset).split("\n\n")[0].splitlines()  # the preset's own fields, not the nested ones
    kept = [pair for pair in zip(own[::2], own[1::2]) if pair[0].split()[0] not in _FIXED]
    return (
        "StudySettings fields (the study's sizes and design):\n"
        + settings_help(StudySettings)
        + "\n\nPreset fields (one notebook's own sizes):\n"
        + "\n".join(line for pair in kept for line in pair)
    )


def choose(name: str, overrides: Mapping[str, Any] | None = None) -> Preset:
    """A copy of the preset `name` with `overrides` applied ({field: value}; None values
    are skipped, so a notebook parameter left at None keeps the preset's value; a dict
    for gp_data / virl_data changes only the fields it names)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    preset = copy.deepcopy(PRESETS[name])
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(changes) - set(override_fields()))
    if unknown:
        raise ValueError(f"unknown preset field(s) {unknown}; valid: {', '.join(sorted(override_fields()))}")
    study_names = {f.name for f in dataclasses.fields(StudySettings)}
    own = {}
    for key, value in changes.items():
        current = getattr(preset, key, None)
        own[key] = replace(current, **value) if dataclasses.is_dataclass(current) and isinstance(value, dict) else value
    study = replace(preset.study, **{k: v for k, v in own.items() if k in study_names})
    return replace(preset, study=study, **{k: v for k, v in own.items() if k not in study_names})
