"""The paper's comparison as library steps: one SFT start, two branches, one verdict,
for any task (StudySettings.task: gp-l, virl-l, or the image versions gp-vl, virl-vl).

    prepare_sft_data   the task's expert (or sub-optimal) records into the run folder: the
                       trained rule, or both rules each stated in its prompt (the general
                       start of the positive control); prompt variants, reasoning
    sft_start          the shared SFT initialisation, with start_checkpoints checkpoints
    pick_start         the SFT window: every start checkpoint on ID and rule-OOD, and the
                       one the branches start from (choose_start's stated rule)
    ppo_settings       the PPO branch's PPOSettings from the study's sizes (notebook 04 launches them)
    ppo_branch         PPO from the start, with those settings (value head, or grpo / rloo)
    branch_data        the SFT branch's records: expert ones (the trained rule, or several
                       face-card mappings) or the start's own correct answers (self_sft_data)
    sft_branch         more SFT from the start, sized to a FLOPs target (the PPO branch's), or
                       matched_sft_branch: to PPO's rollouts or correct rollouts (sft_match)
    drift              each checkpoint's forward KL from the start on the ID set (drift.py)
    evaluate_runs      every checkpoint of every run on the study's sets
                       (evaluation.evaluate_checkpoints; the shared start is evaluated
                       once and its results copied to each branch's step 0)
    run_study          all of the above in one call (what 06 runs, or finds 00 ran)
    pool_seeds         the verdict over quickstart studies of several seeds (`sftrl pool`)

What moved (each run's end against its start, the branches' ends against each other, with
intervals and a test) and the verdict are tables.what_moved and tables.verdict_rows, read
from the evaluated run folders; tables.write_table saves them.

Evaluations are keyed by their settings (evaluation.evaluation_key): `settings.eval_keys()`
names the ones a study's tables and figures use, and anything that gathers evaluations
refuses to mix settings.
    budget_ablation    PPO at several verification budgets from the same start

The notebooks call these in order; every artefact lands in the run folder
(run_dir/sft-start, run_dir/ppo, run_dir/sft, run_dir/tables, run_dir/figures: run_folder.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from . import run_folder, tables
from .compute import sft_tokens_for
from .data import (
    eval_set_path,
    expert_records,
    load_eval_set,
    sft_record,
    sft_seed,
    suboptimal_records,
    training_config,
    write_sft_dataset,
)
from .engines import resolve_engine
from .envs import recognised
from .evaluation import evaluate_checkpoints, evaluate_model, evaluation_key, select_evaluation
from .files import write_atomically
from .models import SamplingConfig, is_vision_model
from .run_folder import (
    EVAL_EPISODES,
    copy_evaluation,
    last_checkpoint,
    list_checkpoints,
    read_counters,
    read_evaluation,
    read_evaluations,
)
from .tasks import STUDY_TASKS, StudyTask, study_task
from .train.ppo import PPOSettings, check_advantage, train_ppo

SFT_DATA = ("expert", "mappings", "self")  # StudySettings.sft_data
SFT_MATCHES = ("flops", "rollouts", "correct")  # StudySettings.sft_match
REASONING_TOKENS = 64  # a "thought" before the answer is at most ~50 tokens (data.expert_records(reasoning=True))


@dataclass
class StudySettings:
    """The study's sizes and design. Defaults are the quickstart: the embedded default
    model on a 2-core CPU in about 25 minutes. The presets (presets.py: quickstart,
    study, smoke) are built from these fields; sft_start, sft_branch and ppo_settings turn
    them into SFTSettings and PPOSettings. What the study knows of its task (its sets,
    headline metric, signatures) is `task_info`."""

    # The task and the model
    task: str = "gp-l"
    """the task studied: gp-l, virl-l, gp-vl or virl-vl (tasks.STUDY_TASKS)"""
    model: str = "default"
    """a built-in ("default", "tiny": the task's modality, see base_model) or a checkpoint folder"""

    # The shared start: SFT of the base model
    sft_records: int = 2000
    """deals (GP) or routes (V-IRL) of expert SFT data generated into the run folder"""
    start_rules: str = "both"
    """the shared start's data: "trained" rule only (the paper's) or "both" rules, each stated in its prompt, so
    that the start follows whichever rule its prompt states (the positive control)"""
    start_steps: int = 24
    """SFT steps of the shared initialisation"""
    start_checkpoints: int = 1
    """checkpoints of the start evaluated (> 1: the SFT window curve, from which pick_start chooses)"""
    start_learning_rate: float = 1e-4
    """the shared start's peak learning rate"""

    # The SFT branch
    sft_learning_rate: float = 1e-4
    """the SFT branch's peak learning rate, continuing from the start (at the start's rate)"""
    sft_batch_size: int = 8
    """sequences per SFT step, in the start and in the branch"""
    prompt_variants: bool = False
    """SFT records in varied wordings and layouts (evaluation keeps the canonical prompt)"""
    reasoning: bool = False
    """expert answers start with a short "thought" applying the stated rule"""
    sft_data: str = "expert"
    """what the SFT branch trains on: "expert" answers under the trained rule (the paper's);
    "mappings": expert answers under several face-card mappings, each stated in its prompt,
    the rule-OOD one held out (GeneralPoints; data.SFT_MAPPINGS); "self": rejection
    sampling, the start's own answers to sft_records training deals (one each, temperature
    1) that the verifier scores correct (GeneralPoints; self_sft_data)"""
    sft_match: str = "flops"
    """what the SFT branch matches in the PPO branch: its training "flops" (the paper's
    x-axis), the "rollouts" it played or its "correct" ones (one SFT sequence per rollout)"""

    # The PPO branch
    ppo_updates: int = 6
    """PPO updates (the SFT branch trains to their GFLOPs: about 44 steps at the quickstart's sizes)"""
    episodes_per_update: int = 8
    """episodes per PPO update (per process)"""
    ppo_epochs: int = 1
    """passes over each update's episodes"""
    ppo_minibatch_size: int | None = None
    """turns per PPO optimizer step; None: episodes_per_update (about one step per pass)"""
    ppo_learning_rate: float = 1e-5
    """PPO's learning rate (at 2e-6 four updates left the policy where it was: approx_kl < 1e-3)"""
    advantage: str = "gae"
    """PPO's advantages: "gae" (value head, the paper's), or critic-free "grpo" / "rloo\""""
    group_size: int = 1
    """episodes per deal or route in PPO (grpo / rloo need >= 2)"""
    train_max_attempts: int = 2
    """verification budget in training (the paper: 5)"""
    max_new_tokens: int | None = None
    """tokens a response may take; None: the task's longest expert answer and a margin (new_tokens)"""
    temperature: float = 1.0
    """PPO's sampling temperature"""

    # Evaluation
    checkpoints: int = 2
    """evaluated checkpoints per branch after the start"""
    eval_sets: list[str] | None = None
    """the frozen sets evaluated; None: the task's ID, rule-OOD (and visual-OOD) sets (eval_set_names)"""
    fake_rule: bool = False
    """also evaluate the fake-rule set (the rule-OOD prompt, the trained rule's verifier)"""
    eval_limit: int | None = 100
    """the first N deals or routes of each frozen set; None: all"""
    eval_max_attempts: int = 2
    """verification budget at evaluation (the paper: 5)"""
    seed: int = 0
    """seeds the SFT data, training and sampling"""
    engine: str = "auto"
    """who generates rollouts and evaluations: "vllm", "hf", or "auto" (vLLM where installed; generation_engine)"""

    def __post_init__(self) -> None:
        study_task(self.task)  # a clear error for an unknown task
        if self.start_rules not in ("trained", "both"):
            raise ValueError(f"start_rules must be 'trained' or 'both', got {self.start_rules!r}")
        check_advantage(self.advantage, self.group_size)
        if self.start_checkpoints < 1 or self.start_checkpoints > self.start_steps:
            raise ValueError(f"start_checkpoints must be in [1, start_steps], got {self.start_checkpoints}")
        if self.sft_data not in SFT_DATA:
            raise ValueError(f"sft_data must be one of {SFT_DATA}, got {self.sft_data!r}")
        if self.sft_data != "expert" and self.task_info.rule_field != "face_rule":
            raise ValueError(f"sft_data={self.sft_data!r} is a GeneralPoints arm; task {self.task} has no face cards")
        if self.sft_match not in SFT_MATCHES:
            raise ValueError(f"sft_match must be one of {SFT_MATCHES}, got {self.sft_match!r}")

    @property
    def sft_branch_name(self) -> str:
        """The SFT branch's folder: "sft" for the paper's branch (expert data, matched
        FLOPs), else named by what differs ("sft-mappings", "sft-self-per-correct")."""
        parts = [self.sft_data] * (self.sft_data != "expert") + [f"per-{self.sft_match}"] * (self.sft_match != "flops")
        return "-".join(["sft", *parts])

    @property
    def task_info(self) -> StudyTask:
        """What the study knows of its task: env_id, the ID and rule-OOD sets (id_set,
        rule_ood_set), the headline `metric`, the memorisation `signatures`, the
        fake-rule and visual-OOD sets, whether it shows images (`vision`)."""
        return study_task(self.task)

    @property
    def eval_set_names(self) -> list[str]:
        """The evaluated sets: eval_sets, or the task's ID and rule-OOD sets (and its
        visual-OOD set for the image tasks); the fake-rule set last when fake_rule is on."""
        names = list(self.eval_sets) if self.eval_sets is not None else self.headline_sets
        task = self.task_info
        return names + [task.fake_rule_set] if self.fake_rule and task.fake_rule_set not in names else names

    @property
    def new_tokens(self) -> int:
        """Tokens a response may take: max_new_tokens, or the task's answer_tokens (its
        longest expert answer and a margin), REASONING_TOKENS more with reasoning on."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return self.task_info.answer_tokens + (REASONING_TOKENS if self.reasoning else 0)

    def validation(self) -> StudySettings:
        """These settings on the task's validation sets (ID and rule-OOD kinds of tasks, dealt
        apart from the reported sets): what the SFT window's pick reads, so that choosing
        the start does not flatter the numbers later reported from it."""
        return replace(self, eval_sets=list(self.task_info.validation_sets), fake_rule=False)

    @property
    def headline_sets(self) -> list[str]:
        """The sets the verdict reads: ID, rule-OOD, and visual-OOD for the image tasks
        (eval_set_names without the fake-rule control)."""
        task = self.task_info
        return [*task.eval_sets, *([task.visual_ood_set] if task.visual_ood_set else [])]

    @property
    def base_model(self) -> str:
        """The model the shared start trains: `model`, where the built-in names "default"
        and "tiny" name the variant of the task's modality (default-vl and tiny-vl for the
        image tasks), so that one preset serves every task."""
        if self.task_info.vision and self.model in ("default", "tiny"):
            return f"{self.model}-vl"
        return self.model

    @property
    def generation_engine(self) -> str:
        """`engine` resolved for this study's model ("hf" or "vllm"): what its evaluations
        run on and record in their keys (engines.resolve_engine). PPO resolves its own,
        knowing its process count."""
        return resolve_engine(self.engine, is_vision_model(self.base_model))

    def eval_sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=0.0, max_new_tokens=self.new_tokens, seed=self.seed)

    def eval_keys(self) -> dict[str, dict[str, Any]]:
        """{set: the key of its evaluation under these settings}: what tables and figures
        should select (`tables.what_moved(..., keys=...)`, `tables.checkpoint_rows(..., keys=...)`)."""
        engine, sampling = self.generation_engine, self.eval_sampling()  # once, not per set
        return {
            name: evaluation_key(
                name,
                load_eval_set(eval_set_path(name)),
                self.task_info.env_id,
                sampling,
                self.eval_limit,
                engine=engine,
                max_attempts=self.eval_max_attempts,
            )
            for name in self.eval_set_names
        }


def prepare_sft_data(
    settings: StudySettings,
    run_dir: Path,
    kind: str = "expert",
    rules: str = "trained",
    records: int | None = None,
) -> Path:
    """The task's SFT records (deterministic in the seed) in run_dir/data/: `kind` expert
    or suboptimal, under the trained rule, `rules="both"` (the general start) or "mappings"
    (data.expert_records), with the
    settings' prompt_variants and reasoning; `records` deals or routes (default
    settings.sft_records). An existing file is reused."""
    records = settings.sft_records if records is None else records
    options = [
        rules == "both" and "both-rules",
        rules == "mappings" and "mappings",
        settings.prompt_variants and "varied",
        settings.reasoning and "reasoning",
    ]
    name = "-".join([settings.task, kind, *(o for o in options if o)])
    path = run_folder.data_dir(run_dir) / f"{name}-{records}.jsonl"
    if path.is_file():
        return path
    if kind == "expert":
        made = expert_records(
            settings.task_info.env_id,
            records,
            rules=rules,
            prompt_variants=settings.prompt_variants,
            reasoning=settings.reasoning,
        )
    elif kind == "suboptimal" and rules == "trained" and not (settings.prompt_variants or settings.reasoning):
        made = suboptimal_records(settings.task_info.env_id, records)
    else:
        raise ValueError("suboptimal records come under the trained rule, without prompt variants or reasoning")
    write_sft_dataset(path, made)
    return path


def branch_data(settings: StudySettings, run_dir: Path, start: Path) -> Path:
    """The SFT branch's records, by settings.sft_data: expert ones under the trained rule
    or under several mappings (prepare_sft_data), or the start's own correct answers
    (self_sft_data)."""
    if settings.sft_data == "self":
        return self_sft_data(settings, run_dir, start)
    return prepare_sft_data(settings, run_dir, rules="mappings" if settings.sft_data == "mappings" else "trained")


SELF_TEMPERATURE = 1.0  # self_sft_data samples the start as PPO does


def self_sft_data(settings: StudySettings, run_dir: Path, start: Path, responder: Any = None) -> Path:
    """Rejection sampling (self-SFT): the start answers settings.sft_records training deals
    (the expert records' deals, one attempt, temperature SELF_TEMPERATURE), and each answer
    the verifier scores correct becomes an SFT record of kind "self". Written to
    run_dir/data/, named after the start it came from, with a summary (deals, kept) beside
    it as .json; an existing file is reused. A start that answers none correctly leaves
    nothing to train on: a ValueError says so. `responder` answers in the start's place
    (a scripted player in tests); None: the start on settings.generation_engine."""
    from .engines import open_engine
    from .envs import Observation, make
    from .models import load_policy
    from .rollout import rollout

    start = Path(start)
    made_by = f"{start.parents[1].name}-{start.name}"  # the start's run and checkpoint: sft-start-step-000024
    path = run_folder.data_dir(run_dir) / f"{settings.task}-self-{made_by}-{settings.sft_records}.jsonl"
    if path.is_file():
        return path
    env_id, deals = settings.task_info.env_id, settings.sft_records
    seeds = [sft_seed(env_id) + index for index in range(deals)]
    envs = [make(env_id, **training_config(env_id), max_attempts=1) for _ in seeds]
    policy = responder or open_engine(load_policy(start), settings.generation_engine)
    sampling = SamplingConfig(temperature=SELF_TEMPERATURE, max_new_tokens=settings.new_tokens, seed=settings.seed)
    episodes = rollout(policy, envs, sampling, seeds=seeds, batch_size=64, with_logprobs=False)
    kept = [
        sft_record("self", Observation(e.prompt, e.images), [], e.turns[0].response, e.seed, e.task)
        for e in episodes
        if e.success
    ]
    if not kept:
        raise ValueError(
            f"the start {start} answered none of {deals} training deals correctly: rejection sampling has nothing "
            "to train on (sample more deals with sft_records, or study an easier task such as gp3-l)"
        )
    write_sft_dataset(path, iter(kept))
    summary = {"start": str(start.resolve()), "deals": deals, "kept": len(kept), "temperature": SELF_TEMPERATURE}
    write_atomically(path.with_suffix(".json"), json.dumps(summary, indent=2))
    return path


def find_runs(
    run_dir: str | Path, task: str | None = None, start_name: str = run_folder.START_RUN
) -> tuple[list[Path], Path | None]:
    """Training runs (folders with checkpoints) directly under run_dir (or, failing that,
    under one of its subfolders, such as the quickstart's), and the shared start's
    checkpoint (shared_start: the picked one, if pick_start ran) if they include one.
    Nothing outside run_dir is looked at: with no runs there, a FileNotFoundError says
    which notebooks make them.

    With `task`, studies of other tasks are passed over: a quickstart folder of another
    task (quickstart_dir) and a PPO run whose ppo.yaml names another environment. (An SFT
    run does not record its task; name the runs explicitly where folders mix tasks.)"""
    run_dir = Path(run_dir)
    inside = sorted(p for p in run_dir.glob("*") if p.is_dir())
    for folder in [run_dir] + inside:
        if task is not None and _other_task_folder(folder, task):
            continue
        runs = sorted(p for p in folder.glob("*") if list_checkpoints(p) and _run_of_task(p, task))
        if runs:
            start = folder / start_name
            return [r for r in runs if r != start], shared_start(start) if start in runs else None
    of_task = f" of task {task!r}" if task else ""
    raise FileNotFoundError(
        f"no training runs{of_task} in {run_dir}: 03_sft and 04_ppo_launch (or 00_quickstart) make them there; "
        "set run_dir to the folder they wrote"
    )


def _other_task_folder(folder: Path, task: str) -> bool:
    """Whether folder is the quickstart folder of a task other than `task`."""
    named = run_folder.quickstart_task(folder)
    return named is not None and named in STUDY_TASKS and named != task


def _run_of_task(run: Path, task: str | None) -> bool:
    """False for a run that records another task's environment (a PPO run's ppo.yaml), or
    whose ppo.yaml cannot be read (a notebook looking for runs passes over it, rather
    than stopping at some old folder's file); only env_id is read, so that settings of
    another kit version or a missing vLLM do not matter here."""
    config = run_folder.settings_file(run, "ppo")
    if task is None or not config.is_file():
        return True
    try:
        recorded = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(recorded, dict) and recorded.get("env_id") == study_task(task).env_id


def eval_episodes(checkpoint: str | Path, eval_set: str, key: dict[str, Any] | None = None):
    """The episodes of one checkpoint's evaluation on one set (the one with `key`, e.g.
    settings.eval_keys()[eval_set]; without it, the only one there)."""
    from .episodes import read_episodes

    return read_episodes(Path(select_evaluation(checkpoint, eval_set, key)["folder"]) / EVAL_EPISODES)


def misread_episodes(checkpoint: str | Path, eval_set: str, key: dict[str, Any] | None = None) -> list:
    """The episodes of one checkpoint's evaluation (eval_episodes) in which an answer
    misread what it was shown: it named cards or places, and the verifier's recognition
    check failed (an unreadable answer fails the check too, but read nothing)."""
    return [episode for episode in eval_episodes(checkpoint, eval_set, key) if any(map(_misread, episode.turns))]


def _misread(turn) -> bool:
    return turn.verdict.get("recognition_correct") is False and recognised(turn.verdict) is not None


def sft_start(settings: StudySettings, run_dir: Path, dataset: Path, name: str = run_folder.START_RUN) -> Path:
    """The shared initialisation: SFT of the base model, with settings.start_checkpoints
    checkpoints (the window pick_start chooses from); returns its last checkpoint."""
    from .train.sft import SFTSettings, train_sft

    if settings.task_info.vision and not is_vision_model(settings.base_model):
        raise ValueError(f"task {settings.task} shows images; {settings.base_model} is a text-only model")
    folder = train_sft(
        SFTSettings(
            model=settings.base_model,
            dataset=str(dataset),
            run_dir=str(Path(run_dir) / name),
            learning_rate=settings.start_learning_rate,
            max_steps=settings.start_steps,
            save_steps=_every(settings.start_steps, settings.start_checkpoints),
            batch_size=settings.sft_batch_size,
            logging_steps=1,
            seed=settings.seed,
        )
    )
    return last_checkpoint(folder)


def ppo_settings(
    settings: StudySettings, run_dir: Path, start: str | Path, name: str = "ppo", **overrides: Any
) -> PPOSettings:
    """The PPO branch's settings: PPO on the trained rule from `start` (a checkpoint
    folder, whose tokens count as D_init, or a base model) into run_dir/name, one
    minibatch per update's episodes, `settings.checkpoints` checkpoints; `overrides`
    (PPOSettings fields) last."""
    ppo = PPOSettings(
        model=str(start),
        run_dir=str(Path(run_dir) / name),
        env_id=settings.task_info.env_id,
        env_config=training_config(settings.task_info.env_id),
        advantage=settings.advantage,
        group_size=settings.group_size,
        max_attempts=settings.train_max_attempts,
        episodes_per_update=settings.episodes_per_update,
        rollout_batch_size=settings.episodes_per_update,
        updates=settings.ppo_updates,
        learning_rate=settings.ppo_learning_rate,
        ppo_epochs=settings.ppo_epochs,
        minibatch_size=settings.ppo_minibatch_size or settings.episodes_per_update,
        max_new_tokens=settings.new_tokens,
        temperature=settings.temperature,
        save_every=_every(settings.ppo_updates, settings.checkpoints),
        seed=settings.seed,
        engine=settings.engine,
        init_tokens=read_counters(start)["tokens"] if Path(start).is_dir() else 0,
    )
    return replace(ppo, **overrides)


def ppo_branch(settings: StudySettings, run_dir: Path, start: Path, name: str = "ppo", **overrides: Any) -> Path:
    """PPO on the trained rule from the start checkpoint (ppo_settings); returns the run folder."""
    return train_ppo(ppo_settings(settings, run_dir, start, name, **overrides))


def sft_steps_for(target_gflops: float, start: Path, tokens_per_step: float | None = None) -> int:
    """SFT steps from the start whose X_SFT reaches target_gflops, at `tokens_per_step`
    (None: the tokens per step the start's own run measured)."""
    start_counters = read_counters(start)
    if tokens_per_step is None:
        tokens_per_step = start_counters["tokens"] / max(1, start_counters["step"])
    needed_tokens = sft_tokens_for(target_gflops * 1e9, start_counters["num_parameters"], start_counters["tokens"])
    return max(1, math.ceil(needed_tokens / tokens_per_step))


def sft_branch(
    settings: StudySettings, run_dir: Path, start: Path, dataset: Path, steps: int, name: str = "sft"
) -> Path:
    """More SFT on the trained rule from the start checkpoint; returns the run folder."""
    from .train.sft import SFTSettings, train_sft

    return train_sft(
        SFTSettings(
            model=str(start),
            dataset=str(dataset),
            run_dir=str(Path(run_dir) / name),
            learning_rate=settings.sft_learning_rate,
            max_steps=steps,
            save_steps=_every(steps, settings.checkpoints),
            batch_size=settings.sft_batch_size,
            logging_steps=1,
            seed=settings.seed + 1,
            init_tokens=read_counters(start)["tokens"],
        )
    )


def matched_sft_branch(
    settings: StudySettings, run_dir: Path, start: Path, ppo_run: Path, dataset: Path, name: str | None = None
) -> Path:
    """The SFT branch matched to the PPO branch (matched_sft_steps: at its training
    GFLOPs, the paper's x-axis, unless settings.sft_match says otherwise), from the same
    start checkpoint, into run_dir/name (settings.sft_branch_name); returns its run folder
    (compute_match says how close the two ended in GFLOPs)."""
    if not run_folder.is_checkpoint(start):
        raise ValueError(f"the SFT branch continues a start checkpoint; {start} is none (PPO began without SFT)")
    steps = matched_sft_steps(settings, Path(start), ppo_run, dataset)
    return sft_branch(settings, run_dir, Path(start), dataset, steps, name or settings.sft_branch_name)


def matched_sft_steps(settings: StudySettings, start: Path, ppo_run: Path, dataset: Path | None = None) -> int:
    """The SFT branch's steps, by settings.sft_match: as many as reach the PPO run's
    training GFLOPs ("flops", sft_steps_for), or one sequence per episode PPO played
    ("rollouts") or per episode it won ("correct"), sft_batch_size sequences a step.

    At "flops", the paper's expert records train at the rate the start measured on the
    same kind of records; an arm's records (`dataset`, sft_data other than "expert":
    self-SFT's answers are shorter) train at their own length (dataset_tokens_per_step)."""
    if settings.sft_match == "flops":
        rate = None
        if settings.sft_data != "expert" and dataset is not None:
            rate = dataset_tokens_per_step(dataset, start, settings.sft_batch_size)
        return sft_steps_for(read_counters(last_checkpoint(ppo_run))["gflops"], start, rate)
    from .episodes import read_episodes

    episodes = [e for path in run_folder.episode_files(ppo_run).values() for e in read_episodes(path)]
    count = len(episodes) if settings.sft_match == "rollouts" else sum(e.success for e in episodes)
    if count == 0:
        raise ValueError(
            f"{ppo_run} holds no {'episodes' if settings.sft_match == 'rollouts' else 'correct episodes'} "
            f"to match (sft_match={settings.sft_match!r}); match on 'flops' or 'rollouts'"
        )
    return math.ceil(count / settings.sft_batch_size)


def dataset_tokens_per_step(dataset: Path, model: Path, batch_size: int) -> float:
    """The tokens an SFT step on `dataset` trains on: batch_size times its records' mean
    length as `model`'s chat template renders them, cut at SFTSettings.max_length, which
    is what the SFT trainer counts (TRL's non-padding num_input_tokens_seen)."""
    from transformers import AutoTokenizer

    from .episodes import read_jsonl
    from .train.sft import SFTSettings

    records = read_jsonl(dataset)
    if not records:
        raise ValueError(f"{dataset} holds no SFT records")
    tokenizer = AutoTokenizer.from_pretrained(model)
    cap = SFTSettings.max_length
    lengths = [min(cap, len(tokenizer.apply_chat_template(r["messages"], tokenize=True)["input_ids"])) for r in records]
    return batch_size * sum(lengths) / len(lengths)


MATCH_TOLERANCE = 0.1  # compute_match: runs within 10% of each other's GFLOPs count as matched


def compute_match(runs: Sequence[Path], tolerance: float = MATCH_TOLERANCE) -> str:
    """A line per run after the first: its last checkpoint's training GFLOPs beside the
    first run's, and whether they are matched (within `tolerance` of the larger), so that
    a comparison at unequal compute is said out loud."""
    ends = [(Path(run).name, read_counters(last_checkpoint(run))["gflops"]) for run in runs]
    (first, first_gflops), lines = ends[0], []
    for name, gflops in ends[1:]:
        gap = abs(first_gflops - gflops) / max(first_gflops, gflops, 1e-12)
        verdict = "matched" if gap <= tolerance else "NOT matched: a difference between them is partly one of compute"
        lines.append(f"{first} {first_gflops:,.0f} vs {name} {gflops:,.0f} GFLOPs ({100 * gap:.1f}% apart): {verdict}")
    return "\n".join(lines) or f"one run ({first}, {first_gflops:,.0f} GFLOPs): nothing to match"


def update_episodes(ppo_run: Path, update: int | None = None) -> dict[str, list]:
    """One PPO update's episodes (the last by default) as {label: episodes} for the
    viewer, the label naming the run, the update and the weights that played them (those
    after the previous update: its checkpoint's folder when one was saved)."""
    files = run_folder.episode_files(ppo_run)
    if not files:
        raise FileNotFoundError(f"no episodes in {ppo_run}: the PPO run has not updated yet")
    number = max(files) if update is None else update
    if number not in files:
        raise FileNotFoundError(
            f"no episodes of update {number} in {ppo_run} (it has updates {min(files)}-{max(files)})"
        )
    path = files[number]
    saved = {read_counters(c)["step"]: c for c in list_checkpoints(ppo_run)}
    weights = f"checkpoint {saved[number - 1].name}" if number - 1 in saved else f"weights after update {number - 1}"
    from .episodes import read_episodes

    return {f"{Path(ppo_run).name} · update {number} · played by {weights}": read_episodes(path)}


@dataclass(frozen=True)
class StudyRuns:
    """What run_study leaves: the start both branches began from, the branches' run
    folders, and one evaluation row per (run, checkpoint, set)."""

    start: Path
    ppo: Path
    sft: Path
    evaluated: list[dict[str, Any]]


def quickstart_dir(run_dir: str | Path, settings: StudySettings) -> Path:
    """Where a quickstart study of settings.task keeps its training runs (run_folder.quickstart_dir)."""
    return run_folder.quickstart_dir(run_dir, settings.task)


def pool_seeds(settings: StudySettings, run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The verdict pooled over quickstart studies that differ only in their seed
    (tables.pooled_verdict): each run folder is one `sftrl run quickstart -p seed S` (with
    the settings' other parameters); its seed is read from its PPO run's ppo.yaml. Two
    folders of one seed, or a folder without the study's runs, raise a ValueError."""
    runs_by_seed: dict[int, list[Path]] = {}
    for run_dir in map(Path, run_dirs):
        folder = quickstart_dir(run_dir, settings)
        ppo_run, sft_run = folder / "ppo", folder / settings.sft_branch_name
        config = run_folder.settings_file(ppo_run, "ppo")
        if not config.is_file() or not list_checkpoints(sft_run):
            raise ValueError(
                f"{run_dir} holds no finished {settings.task} quickstart study "
                f"(ppo/ and {settings.sft_branch_name}/ in {folder})"
            )
        seed = yaml.safe_load(config.read_text())["seed"]
        if seed in runs_by_seed:
            raise ValueError(f"two run folders of seed {seed}: pool studies of different seeds")
        runs_by_seed[seed] = [ppo_run, sft_run]
    return tables.pooled_verdict(settings, runs_by_seed)


def run_study(settings: StudySettings, folder: Path, progress: bool = True) -> StudyRuns:
    """The whole comparison in `folder`, the steps 00 runs one by one: data, the shared
    start and its pick, the PPO branch, the SFT branch matched to it (settings.sft_data
    and sft_match: expert data at the PPO branch's GFLOPs unless an arm is chosen), every
    checkpoint evaluated. Each step reuses what it finds done (the data file, a complete
    run, an evaluation at these settings), so on a folder 00 filled it trains and
    evaluates nothing."""
    start_data = prepare_sft_data(settings, folder, rules=settings.start_rules)
    start, _ = pick_start(settings, sft_start(settings, folder, start_data).parents[1], progress)
    ppo_run = ppo_branch(settings, folder, start)
    sft_run = matched_sft_branch(settings, folder, start, ppo_run, branch_data(settings, folder, start))
    return StudyRuns(start, ppo_run, sft_run, evaluate_runs(settings, [ppo_run, sft_run], start, progress))


def evaluate_runs(
    settings: StudySettings, runs: Sequence[Path], start: Path | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Every checkpoint of every run on settings.eval_sets (evaluation.evaluate_checkpoints:
    evaluations with these settings already there are reused; those with other settings
    stay beside them, untouched). One row per (run, checkpoint, set).

    `start`: the shared initialisation. It is evaluated once; each run's step-0
    checkpoint (the same weights) gets a copy of those results, marked `copied_from`.
    """
    if start is not None:
        evaluate_checkpoint(settings, Path(start), progress)
        for run in runs:
            first = list_checkpoints(run)[:1]
            if first and read_counters(first[0])["step"] == 0:
                _copy_evaluations(Path(start), first[0])
    return evaluate_checkpoints(runs, **_evaluation_settings(settings), progress=progress)


DRIFT_TASKS = 64  # drift: the ID tasks whose start responses the forward KL is estimated on


def drift(settings: StudySettings, runs: Sequence[Path], start: Path) -> dict[str, list[dict[str, Any]]]:
    """{run: each checkpoint's forward KL from the start} on the first DRIFT_TASKS deals or
    routes of the ID set, one response each sampled from the start (drift.forward_kl;
    stored in each checkpoint's folder and read back when there)."""
    from .drift import forward_kl

    task = settings.task_info
    checkpoints = {Path(run).name: list_checkpoints(run) for run in runs}
    every = [checkpoint for of_run in checkpoints.values() for checkpoint in of_run]
    entries = iter(
        forward_kl(
            start,
            every,
            task.id_set,
            task.env_id,
            limit=DRIFT_TASKS,
            max_new_tokens=settings.new_tokens,
            seed=settings.seed,
        )
    )  # one call: the start's samples are drawn or read once for every run
    return {name: [next(entries) for _ in of_run] for name, of_run in checkpoints.items()}


def evaluate_checkpoint(settings: StudySettings, folder: Path, progress: bool = True) -> dict[str, dict[str, Any]]:
    """One checkpoint on settings.eval_sets (evaluation.evaluate_model: an evaluation with
    these exact settings already there is reused); {set: metrics}."""
    return evaluate_model(folder, folder, **_evaluation_settings(settings), progress=progress)


FORMAT_SHARE = 0.9  # pick_start: a start "answers in format" when this share of its ID answers is readable


def pick_start(settings: StudySettings, start_run: Path, progress: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """The shared start, chosen from the SFT window: every trained checkpoint of start_run
    is evaluated on the task's validation sets (ID and rule-OOD kinds of tasks, none of
    them in the reported sets: `settings.validation()`), and the one with the highest
    rule-OOD headline metric among those that answer in format (at least FORMAT_SHARE of
    their ID answers readable) is picked; ties go to the earliest; if none answers in
    format, the last. With a single trained checkpoint there is nothing to choose and
    nothing is evaluated. Returns the checkpoint and one row per checkpoint (step, the
    metric on both validation sets, the readable share, `picked`), the window curve's
    numbers; the choice is written to start_run/picked.json.

    Why validation sets: the best of several noisy estimates is biased upwards, so a start
    picked on the reported rule-OOD deals would make every branch's "end - start" there
    lean negative by the selection alone."""
    candidates = [c for c in list_checkpoints(start_run) if read_counters(c)["step"] > 0]  # step 0: no format yet
    if not candidates:
        raise FileNotFoundError(f"{start_run} has no trained checkpoint to pick from")
    window = settings.validation()
    val_id, val_ood = window.eval_set_names
    keys = window.eval_keys() if len(candidates) > 1 else {}
    rows = []
    for checkpoint in candidates:
        row: dict[str, Any] = {"checkpoint": str(checkpoint), "step": read_counters(checkpoint)["step"]}
        if keys:
            evaluate_checkpoint(window, checkpoint, progress)
            at = {name: select_evaluation(checkpoint, name, keys[name]) for name in keys}
            unreadable = at[val_id]["failure_modes"]["unparseable"]["rate"]["value"]
            row |= {
                f"{val_id} {settings.task_info.metric}": at[val_id][settings.task_info.metric]["value"],
                f"{val_ood} {settings.task_info.metric}": at[val_ood][settings.task_info.metric]["value"],
                "readable share (ID)": 1 - unreadable,
                "in format": 1 - unreadable >= FORMAT_SHARE,
            }
        rows.append(row)
    best = choose_start(rows, f"{val_ood} {settings.task_info.metric}") if keys else rows[0]
    for row in rows:
        row["picked"] = row is best
    picked = str(Path(best["checkpoint"]).relative_to(start_run))  # the run folder may move
    write_atomically(run_folder.picked_start_file(start_run), json.dumps({"picked": picked, "window": rows}, indent=2))
    return Path(best["checkpoint"]), rows


def shared_start(start_run: str | Path) -> Path:
    """The checkpoint the branches start from: the one pick_start chose (start_run/picked.json),
    else the run's last."""
    record = run_folder.picked_start_file(start_run)
    if not list_checkpoints(start_run):
        raise FileNotFoundError(
            f"no shared start in {start_run}: 03_sft (or 00_quickstart) trains it there. Set run_dir to that "
            "study's folder, or give a start checkpoint (or a model name, for PPO without SFT)"
        )
    if record.is_file():
        picked = Path(start_run) / json.loads(record.read_text())["picked"]
        if not picked.is_dir():
            raise FileNotFoundError(f"{record} names {picked}, which is gone; delete {record} or pick again")
        return picked
    return last_checkpoint(start_run)


def choose_start(rows: Sequence[dict[str, Any]], ood: str) -> dict[str, Any]:
    """pick_start's rule over rows in step order: the highest `ood` among the rows "in
    format", the earliest of equals; the last row when none is in format."""
    candidates = [r for r in rows if r["in format"]] or list(rows[-1:])
    return max(candidates, key=lambda r: (r[ood], -r["step"]))


def _evaluation_settings(settings: StudySettings) -> dict[str, Any]:
    """The study's evaluation as evaluate_model's and evaluate_checkpoints' arguments."""
    return dict(
        eval_sets={name: eval_set_path(name) for name in settings.eval_set_names},
        env_id=settings.task_info.env_id,
        sampling=settings.eval_sampling(),
        limit=settings.eval_limit,
        batch_size=settings.eval_limit or 64,
        engine=settings.generation_engine,
        max_attempts=settings.eval_max_attempts,
    )


def _copy_evaluations(start: Path, step_zero: Path) -> None:
    """The start's evaluations into step_zero's folder (those it lacks; none is overwritten)."""
    for evaluation in read_evaluations(start):
        if read_evaluation(step_zero, evaluation["key"]) is None:
            copy_evaluation(evaluation, step_zero, copied_from=str(start))


def _every(total: int, checkpoints: int) -> int:
    return max(1, math.ceil(total / max(1, checkpoints)))


def budget_ablation(
    settings: StudySettings,
    run_dir: Path,
    start: Path,
    budgets: Sequence[int] = (1, 3, 5, 10),
) -> list[Path]:
    """PPO from one start at each verification budget (run_dir/budget-<b>); the paper
    finds larger OOD gains with more verification steps at equal compute."""
    return [ppo_branch(settings, run_dir, start, name=f"budget-{b}", max_attempts=b) for b in budgets]
