"""Datasets: the evaluation-split registry, frozen evaluation sets, SFT datasets in TRL's
conversational format, and the data stage (`sftrl data gp|virl`).

Evaluation sets are lists of tasks: each record names its split, its seed and the
environment settings, and holds the task that `env.reset(options={"task": ...})`
replays. Record i of a split is dealt by `env.reset(seed=base_seed + i)`, so every
record (and the whole file, byte for byte) can be regenerated from the seed alone.

SFT data (paper section 5): "expert" is one prompt -> one correct answer; "suboptimal"
is the ablation's multi-turn trajectories: verified wrong answers with the verifier's
real messages, then a correct answer. Each task writes its demonstrations beside its
environment (`envs/general_points/sft_data.py`, `envs/virl/sft_data.py`); this module
picks their training seeds and settings and turns them into records.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .envs import Observation, make
from .envs.base import PROMPT_VARIANTS
from .envs.general_points import sft_data as gp_sft
from .envs.virl import sft_data as virl_sft
from .envs.virl.city import OOD_CITIES, TRAIN_CITY
from .episodes import chat_messages, read_jsonl, write_jsonl
from .tasks import STUDY_TASKS


@dataclass(frozen=True)
class EvalSplit:
    name: str
    env_config: dict[str, Any]
    base_seed: int
    description: str
    env_id: str = "gp-l"  # the environment that deals the tasks (any modality replays them)
    cities: tuple[str, ...] = ()  # V-IRL: record i is drawn in cities[i % len(cities)]


GP_EVAL_SPLITS = {
    split.name: split
    for split in (
        EvalSplit(
            "gp-id",
            {"face_rule": "ten", "colours": "black", "sampling": "uniform"},
            10_000,
            "trained rule (J, Q, K = 10), black suits",
        ),
        EvalSplit(
            "gp-rule-ood",
            {"face_rule": "ordinal", "colours": "black", "sampling": "with_face"},
            20_000,
            "new rule (J, Q, K = 11, 12, 13), at least one face card, black suits",
        ),
        EvalSplit(
            "gp-fake-rule",
            {"face_rule": "ten", "prompt_face_rule": "ordinal", "colours": "black", "sampling": "with_face"},
            50_000,
            "fake rule: the prompt states J, Q, K = 11, 12, 13, the verifier scores the trained rule (10); "
            "at least one face card, black suits",
        ),
        EvalSplit(
            "gp-visual-ood",
            {"face_rule": "ten", "colours": "red", "sampling": "uniform"},
            30_000,
            "trained rule, red suits (GP-VL visual shift)",
        ),
    )
}


def _variant_split(split: EvalSplit, env_id: str, name: str, base_seed: int, what: str) -> EvalSplit:
    """A reported split's kind of tasks in a variant of its environment (`what` says how it
    differs), dealt from the variant's own base seed."""
    return replace(split, name=name, env_id=env_id, base_seed=base_seed, description=f"{what}, {split.description}")


# GP3-L, the easier variant (three cards, target 12, the same rules; tasks.STUDY_TASKS["gp3-l"]):
# GP-L's kinds of sets, dealt from their own seeds.
GP_EVAL_SPLITS |= {
    s.name: s
    for s in (
        _variant_split(GP_EVAL_SPLITS["gp-id"], "gp3-l", "gp3-id", 110_000, "three cards, target 12"),
        _variant_split(GP_EVAL_SPLITS["gp-rule-ood"], "gp3-l", "gp3-rule-ood", 120_000, "three cards, target 12"),
        _variant_split(GP_EVAL_SPLITS["gp-fake-rule"], "gp3-l", "gp3-fake-rule", 150_000, "three cards, target 12"),
    )
}
GP_TRAIN_CONFIG = {"face_rule": "ten", "colours": "black", "sampling": "uniform"}
SFT_MAPPINGS = ("ten", "1-2-3", "2-4-6", "3-3-3", "5-5-5", "6-7-8", "9-9-9", "12-12-12")
"""The face-card rules of diverse-mapping SFT records (expert_records(rules="mappings"),
GeneralPoints; after arXiv 2510.00237): the trained rule and seven other J-Q-K values,
each stated in its prompt. The rule-OOD rule (J, Q, K = 11, 12, 13) is held out."""
MAPPING_SEED_STRIDE = 100_000  # the k-th mapping's records are dealt from base + k * this
EVAL_SET_SIZE = 300

VIRL_EVAL_SPLITS = {
    split.name: split
    for split in (
        EvalSplit(
            "virl-id",
            {"action_space": "absolute", "city": TRAIN_CITY.name},
            40_000,
            f"absolute actions, routes in {TRAIN_CITY.name} (the training city)",
            "virl-l",
        ),
        EvalSplit(
            "virl-rule-ood",
            {"action_space": "relative", "city": TRAIN_CITY.name},
            40_000,
            "relative actions on the same routes as virl-id",
            "virl-l",
        ),
        EvalSplit(
            "virl-fake-rule",
            {"action_space": "absolute", "prompt_action_space": "relative", "city": TRAIN_CITY.name},
            40_000,
            "fake rule: the routes of virl-id, the prompt states relative actions, the verifier scores the "
            "trained absolute ones",
            "virl-l",
        ),
        EvalSplit(
            "virl-visual-ood",
            {"action_space": "absolute"},
            60_000,
            f"absolute actions, routes in the {len(OOD_CITIES)} other cities",
            "virl-l",
            cities=tuple(c.name for c in OOD_CITIES),
        ),
    )
}
VIRL_TRAIN_CONFIG = {"action_space": "absolute", "city": TRAIN_CITY.name}


def _validation_split(split: EvalSplit, base_seed: int) -> EvalSplit:
    """A reported split's kind of tasks, dealt from another base seed: what choices (the SFT
    window's pick) read, so that they never read the tasks later reported."""
    name = split.name.replace("-", "-val-", 1)
    return replace(
        split,
        name=name,
        base_seed=base_seed,
        description=f"validation, not for reporting: {split.name}'s kind of tasks, dealt apart",
    )


GP_EVAL_SPLITS |= {
    s.name: s
    for s in (
        _validation_split(GP_EVAL_SPLITS["gp-id"], 60_000),
        _validation_split(GP_EVAL_SPLITS["gp-rule-ood"], 70_000),
        _validation_split(GP_EVAL_SPLITS["gp3-id"], 160_000),
        _validation_split(GP_EVAL_SPLITS["gp3-rule-ood"], 170_000),
    )
}
VIRL_EVAL_SPLITS |= {  # the same routes in both action spaces, as virl-id and virl-rule-ood
    s.name: s
    for s in (
        _validation_split(VIRL_EVAL_SPLITS["virl-id"], 80_000),
        _validation_split(VIRL_EVAL_SPLITS["virl-rule-ood"], 80_000),
    )
}

# Seeds are split by purpose so that no training deal is ever an evaluation deal:
# evaluation sets deal from [base_seed, base_seed + MAX_EVAL_SET_SIZE), every base below
# EVAL_SEED_LIMIT; SFT data and PPO deal from EVAL_SEED_LIMIT upwards.
EVAL_SEED_LIMIT = 1_000_000
MAX_EVAL_SET_SIZE = 10_000
GP_TRAIN_BASE_SEED = 1_000_000
VIRL_TRAIN_BASE_SEED = 3_000_000
PPO_TRAIN_BASE_SEED = 1_000_000_000
_PPO_RUN_STRIDE = 1_000_003  # deals per run seed before two runs' deal streams could meet


def training_deal_seed(run_seed: int, deal_index: int) -> int:
    """The seed of a PPO run's `deal_index`-th training deal: above every eval seed."""
    if run_seed < 0 or deal_index < 0:
        raise ValueError(f"run seed and deal index must be >= 0, got {run_seed} and {deal_index}")
    return PPO_TRAIN_BASE_SEED + run_seed * _PPO_RUN_STRIDE + deal_index


def _check_training_seed(seed: int) -> None:
    if seed < EVAL_SEED_LIMIT:
        raise ValueError(f"training data seeds start at {EVAL_SEED_LIMIT:,} (below are evaluation deals), got {seed}")


def make_eval_set(split: EvalSplit, size: int = EVAL_SET_SIZE) -> list[dict[str, Any]]:
    if not 0 <= split.base_seed < EVAL_SEED_LIMIT or not 0 < size <= MAX_EVAL_SET_SIZE:
        raise ValueError(
            f"{split.name}: eval sets hold 1 to {MAX_EVAL_SET_SIZE:,} records dealt from a base seed "
            f"below {EVAL_SEED_LIMIT:,}; got {size} records from {split.base_seed}"
        )
    return [_eval_record(split, index) for index in range(size)]


def _eval_record(split: EvalSplit, index: int) -> dict[str, Any]:
    seed = split.base_seed + index
    config = {**split.env_config, **({"city": split.cities[index % len(split.cities)]} if split.cities else {})}
    _, info = make(split.env_id, **config).reset(seed=seed)
    return {"split": split.name, "index": index, "seed": seed, "env_config": config, "task": info["task"]}


DATA_ROOT = Path(__file__).resolve().parents[1] / "data"
"""the kit's data folder: the committed frozen eval sets in eval/, generated data in generated/"""


def eval_set_path(name: str, root: str | Path = DATA_ROOT) -> Path:
    """A frozen eval set by name (root/eval/<name>.jsonl, the kit's own by default,
    whatever the current folder), or a JSONL path as given."""
    path = Path(name)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise FileNotFoundError(f"no eval set at {path}")
        return path
    path = Path(root) / "eval" / f"{name}.jsonl"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(root) / "eval").glob("*.jsonl"))
        raise FileNotFoundError(f"no eval set {name!r} at {path}; the sets there: {', '.join(known) or 'none'}")
    return path


class FrozenSetError(ValueError):
    """An eval set would be written over a different one already there."""


def write_eval_sets(root: Path, splits: Iterable[EvalSplit], size_of: Callable[[EvalSplit], int]) -> dict[str, Any]:
    """Each split's frozen set into root/eval/<name>.jsonl; a summary entry per set.

    A set already there is never overwritten: the same records again leave the file as
    it is, other records (another size, say) raise FrozenSetError before any file is
    written, since every stored evaluation is keyed on the set it read."""
    summary = {}
    planned = [(split, root / "eval" / f"{split.name}.jsonl", make_eval_set(split, size_of(split))) for split in splits]
    for _, path, records in planned:
        if path.is_file() and read_jsonl(path) != [json.loads(json.dumps(r)) for r in records]:
            raise FrozenSetError(
                f"{path} is a frozen eval set with other records ({len(read_jsonl(path))} there, "
                f"{len(records)} asked for); it is never overwritten. Write sets of another size to "
                "another folder (`sftrl data ... --out DIR`, 02's data_root)."
            )
    for split, path, records in planned:
        if not path.is_file():
            write_jsonl(path, records)
        summary[split.name] = {
            "path": str(path),
            "records": len(records),
            "bytes": path.stat().st_size,
            "description": split.description,
        }
    return summary


def load_eval_set(path: str | Path) -> list[dict[str, Any]]:
    records = read_jsonl(path)
    for number, record in enumerate(records, 1):
        missing = {"split", "seed", "env_config", "task"} - set(record)
        if missing:
            raise ValueError(f"{path}: record {number} lacks {sorted(missing)}")
    return records


# Where each environment's SFT demonstrations come from: its task's module, the settings
# it trains under, and its first training seed (expert data are dealt from there,
# sub-optimal data from twice there, unless a seed is given).
_TRAINING = {
    "gp-l": (gp_sft, GP_TRAIN_CONFIG, GP_TRAIN_BASE_SEED),
    "gp-vl": (gp_sft, GP_TRAIN_CONFIG, GP_TRAIN_BASE_SEED),
    "gp3-l": (gp_sft, GP_TRAIN_CONFIG, GP_TRAIN_BASE_SEED),
    "virl-l": (virl_sft, VIRL_TRAIN_CONFIG, VIRL_TRAIN_BASE_SEED),
    "virl-vl": (virl_sft, VIRL_TRAIN_CONFIG, VIRL_TRAIN_BASE_SEED),
}
OTHER_RULE_SEED_OFFSET = 500_000  # the other rule's records of a "both rules" set are dealt from base + this


def sft_seed(env_id: str) -> int:
    """The seed of an environment's first SFT deal or route (its i-th: this + i)."""
    if env_id not in _TRAINING:
        raise ValueError(f"no SFT data for {env_id!r}; known: {sorted(_TRAINING)}")
    return _TRAINING[env_id][2]


def training_config(env_id: str) -> dict[str, Any]:
    """The settings an environment trains under (its rule at the trained value)."""
    if env_id not in _TRAINING:
        raise ValueError(f"no training settings for {env_id!r}; known: {sorted(_TRAINING)}")
    return dict(_TRAINING[env_id][1])


def expert_records(
    env_id: str,
    size: int,
    seed: int | None = None,
    *,
    rules: str = "trained",
    prompt_variants: bool = False,
    reasoning: bool = False,
    **env_config: Any,
) -> Iterator[dict[str, Any]]:
    """Single-turn SFT records, the prompt and a correct answer: one per deal (GP), one
    per decision point of each of `size` routes (V-IRL).

    rules: "trained" (every record under the training rule), "both" (deals/routes
    alternate between the training rule and the other one, dealt OTHER_RULE_SEED_OFFSET
    further on; each prompt states its own rule, so the model learns to follow the
    prompt) or "mappings" (GeneralPoints: deals take SFT_MAPPINGS' face-card rules in
    turn, the k-th dealt MAPPING_SEED_STRIDE * k further on, with a face card in every
    hand but the trained rule's; the rule-OOD values are in none). prompt_variants: each deal's prompt in a wording and layout drawn from its
    seed (envs.base.PROMPT_VARIANTS; evaluation always uses variant 0). reasoning: each
    answer starts with a short "thought" applying the stated rule."""
    if rules not in ("trained", "both", "mappings"):
        raise ValueError(f"rules must be 'trained', 'both' or 'mappings', got {rules!r}")
    options = {"prompt_variants": prompt_variants, "reasoning": reasoning}
    if rules == "mappings":
        return _mapping_records(env_id, size, seed, env_config, options)
    trained = _sft_records("expert", env_id, size - size // 2 if rules == "both" else size, seed, env_config, **options)
    if rules == "trained":
        return trained
    task = next((t for t in STUDY_TASKS.values() if t.env_id == env_id.replace("-vl", "-l")), None)
    if task is None:
        raise ValueError(f"no other rule is known for {env_id!r}")
    first = (_TRAINING[env_id][2] if seed is None else seed) + OTHER_RULE_SEED_OFFSET
    other = _sft_records("expert", env_id, size // 2, first, {**env_config, **task.other_rule}, **options)
    return _interleave(_by_task(trained), _by_task(other))


def _mapping_records(
    env_id: str, size: int, seed: int | None, env_config: dict[str, Any], options: dict[str, bool]
) -> Iterator[dict[str, Any]]:
    """expert_records(rules="mappings"): size records spread over SFT_MAPPINGS in turn."""
    if not env_id.startswith("gp"):
        raise ValueError(f"rules='mappings' varies GeneralPoints' face-card values; {env_id!r} has none")
    count = len(SFT_MAPPINGS)
    if size > count * MAPPING_SEED_STRIDE:
        raise ValueError(f"at most {count * MAPPING_SEED_STRIDE:,} mapping records, got {size:,}")
    first = sft_seed(env_id) if seed is None else seed
    streams = []
    for k, face_rule in enumerate(SFT_MAPPINGS):
        mapping = {"face_rule": face_rule} | ({} if face_rule == "ten" else {"sampling": "with_face"})
        share = size // count + (k < size % count)
        config = {**env_config, **mapping}
        streams.append(
            _by_task(_sft_records("expert", env_id, share, first + k * MAPPING_SEED_STRIDE, config, **options))
        )
    return _interleave(*streams)


def suboptimal_records(env_id: str, size: int, seed: int | None = None, **env_config: Any) -> Iterator[dict[str, Any]]:
    """Multi-turn SFT records: verified wrong answers with the verifier's messages, then
    a correct answer (GP: 1 to budget-1 per deal; V-IRL: one per decision point)."""
    return _sft_records("suboptimal", env_id, size, seed, env_config)


def _sft_records(
    kind: str,
    env_id: str,
    size: int,
    seed: int | None,
    env_config: dict[str, Any],
    prompt_variants: bool = False,
    reasoning: bool = False,
) -> Iterator[dict]:
    if env_id not in _TRAINING:
        raise ValueError(f"no SFT data for {env_id!r}; known: {sorted(_TRAINING)}")
    task, train_config, base_seed = _TRAINING[env_id]
    seed = (base_seed if kind == "expert" else 2 * base_seed) if seed is None else seed
    _check_training_seed(seed)
    config = {**train_config, **env_config}
    demonstrations = task.expert_demonstrations if kind == "expert" else task.suboptimal_demonstrations
    extra = {"reasoning": True} if reasoning else {}
    if not prompt_variants:
        env = make(env_id, **config)
        return (sft_record(kind, **d) for d in demonstrations(env, size, seed, **extra))
    envs = [make(env_id, **config, prompt_variant=v) for v in range(PROMPT_VARIANTS)]
    return (
        sft_record(kind, **d)
        for index in range(size)
        for d in demonstrations(envs[_prompt_variant(seed + index)], 1, seed + index, **extra)
    )


def _prompt_variant(seed: int) -> int:
    """A deal's or route's prompt variant, from a stream of its own: random.Random(seed)
    also deals the hand and picks the answer, and sharing its first draw tied wording to cards."""
    return random.Random(f"prompt-variant:{seed}").randrange(PROMPT_VARIANTS)


def _by_task(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive records of one deal or route, as lists (a route gives one per point)."""
    return (list(group) for _, group in itertools.groupby(records, key=lambda r: r["seed"]))


def _interleave(*streams: Iterator[list[dict]]) -> Iterator[dict[str, Any]]:
    """A group of each stream in turn (then the rest of the longer ones), flattened."""
    for turn in itertools.zip_longest(*streams, fillvalue=[]):
        for group in turn:
            yield from group


def sft_record(
    kind: str, prompt: Observation, exchanges: list[tuple[str, str]], answer: str, seed: int, task: dict[str, Any]
) -> dict[str, Any]:
    """One SFT record: the conversation (prompt, the exchanges, the trained answer), the
    deal's or route's seed and task, and `kind` (expert, suboptimal, self)."""
    record = {
        "messages": chat_messages(prompt, exchanges, final_response=answer),
        "seed": seed,
        "kind": kind,
        "task": task,
    }
    if prompt.images:
        record["images"] = prompt.images  # PIL images; write_sft_dataset stores files
    return record


def write_sft_dataset(path: str | Path, records: Iterator[dict[str, Any]]) -> int:
    """JSONL of {"messages", ["images"], "seed", "kind", "task"}; images as PNG files in
    a folder beside it, referenced by relative path."""
    path = Path(path)
    image_dir = path.with_suffix("")
    image_dir.mkdir(parents=True, exist_ok=True)

    def stored() -> Iterator[dict[str, Any]]:
        for number, record in enumerate(records):
            if "images" in record:
                names = []
                for i, image in enumerate(record["images"]):
                    name = f"{image_dir.name}/{number:06d}-{i}.png"  # one file per record and image
                    image.save(path.parent / name, format="PNG")
                    names.append(name)
                record = {**record, "images": names}
            yield record

    count = write_jsonl(path, stored())
    if not any(image_dir.iterdir()):
        image_dir.rmdir()
    return count


def write_sft_sets(folder: Path, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """For each environment, `size` expert and `size // 2` sub-optimal records into
    folder/<env id>-<kind>.jsonl; a summary entry per set (sizes include images)."""
    written = {}
    for env_id, size in sizes.items():
        for kind, make_records, records in (
            ("expert", expert_records, size),
            ("suboptimal", suboptimal_records, size // 2),
        ):
            path = folder / f"{env_id}-{kind}.jsonl"
            count = write_sft_dataset(path, make_records(env_id, records))
            image_dir = path.with_suffix("")
            image_bytes = sum(f.stat().st_size for f in image_dir.iterdir()) if image_dir.is_dir() else 0
            written[path.stem] = {"path": str(path), "records": count, "bytes": path.stat().st_size + image_bytes}
    return written


def load_sft_dataset(path: str | Path):
    """The JSONL as a `datasets.Dataset`; image paths become decoded images."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SFT dataset at {path}; generate it with `sftrl data gp`")
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    if "images" in dataset.column_names:
        root = path.parent
        dataset = dataset.map(lambda row: {"images": [str(root / name) for name in row["images"]]})
        dataset = dataset.cast_column("images", datasets.Sequence(datasets.Image()))
    return dataset


@dataclass(frozen=True)
class GPDataSizes:
    """The sizes of GeneralPoints' data stage (`sftrl data gp`)."""

    eval_size: int = EVAL_SET_SIZE
    """tasks in each frozen GP eval set"""
    sft_text: int = 2000
    """GP-L expert SFT records (the sub-optimal set is half as large)"""
    sft_image: int = 500
    """GP-VL expert SFT records, each with a PNG"""
    samples: int = 4
    """rendered GP-VL sample images to look at, one per eval split and more"""


def data_root_for(root: str | Path, sizes: GPDataSizes | VirlDataSizes, elsewhere: str | Path) -> Path:
    """`root`, unless it is the kit's committed data/ and `sizes` asks for eval sets of
    another size than the committed ones: then `elsewhere` (the frozen sets are never
    rewritten in place)."""
    committed = Path(root).resolve() == DATA_ROOT.resolve()
    eval_fields = ("eval_size",) if isinstance(sizes, GPDataSizes) else ("eval_routes", "visual_ood_routes")
    other_size = any(getattr(sizes, f) != getattr(type(sizes)(), f) for f in eval_fields)
    return Path(elsewhere) if committed and other_size else Path(root)


def generate_gp_data(root: str | Path = DATA_ROOT, sizes: GPDataSizes = GPDataSizes()) -> dict[str, Any]:
    """The data stage of the study: frozen eval sets (root/eval/, committed) and SFT
    datasets plus sample images (root/generated/, ignored). Returns a summary."""
    root = Path(root)
    return {
        "eval": write_eval_sets(root, GP_EVAL_SPLITS.values(), lambda _: sizes.eval_size),
        "sft": write_sft_sets(root / "generated", {"gp-l": sizes.sft_text, "gp-vl": sizes.sft_image}),
        "samples": _write_samples(
            root / "generated" / "samples",
            GP_EVAL_SPLITS.values(),
            sizes.samples,
            "gp-vl",
            lambda info: "-".join(info["task"]["hand"]),
        ),
    }


@dataclass(frozen=True)
class VirlDataSizes:
    """The sizes of V-IRL's data stage (`sftrl data virl`)."""

    eval_routes: int = 150
    """routes in virl-id and virl-rule-ood (the same routes) and the other V-IRL sets"""
    visual_ood_routes: int = 90
    """routes in virl-visual-ood (10 in each of the 9 other cities)"""
    sft_text_routes: int = 300
    """V-IRL-L routes whose expert turns become SFT records"""
    sft_image_routes: int = 60
    """V-IRL-VL routes whose expert turns become SFT records, with street views"""
    samples: int = 3
    """street-view samples to look at"""


def generate_virl_data(root: str | Path = DATA_ROOT, sizes: VirlDataSizes = VirlDataSizes()) -> dict[str, Any]:
    """V-IRL's data stage: eval sets (root/eval/, committed), SFT data and street views
    (root/generated/). Returns a summary."""
    root = Path(root)

    def size_of(split: EvalSplit) -> int:
        return sizes.visual_ood_routes if split.cities else sizes.eval_routes

    return {
        "eval": write_eval_sets(root, VIRL_EVAL_SPLITS.values(), size_of),
        "sft": write_sft_sets(root / "generated", {"virl-l": sizes.sft_text_routes, "virl-vl": sizes.sft_image_routes}),
        "samples": _write_samples(
            root / "generated" / "samples",
            VIRL_EVAL_SPLITS.values(),
            sizes.samples,
            "virl-vl",
            lambda info: info["route_id"],
        ),
    }


def _write_samples(
    folder: Path, splits: Iterable[EvalSplit], count: int, env_id: str, name_of: Callable[[dict[str, Any]], str]
) -> list[str]:
    """`count` images to look at: eval records drawn in `env_id`, taking the splits in
    turn; each file named after its split and `name_of(info)`."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = list(splits)
    paths = []
    for i in range(count):
        split = splits[i % len(splits)]
        record = _eval_record(split, i // len(splits))
        observation, info = make(env_id, **record["env_config"]).reset(options={"task": record["task"]})
        path = folder / f"{split.name}-{name_of(info)}.png"
        observation.images[0].save(path)
        paths.append(str(path))
    return paths


def load_training_tasks(path: str | None) -> list[dict[str, Any]] | None:
    """Training tasks from a JSONL in the eval-set format; never a frozen eval set."""
    if path is None:
        return None
    records = load_eval_set(path)
    evaluation = sorted({r["split"] for r in records if int(r["seed"]) < EVAL_SEED_LIMIT})
    if evaluation:
        raise ValueError(
            f"{path} holds evaluation deals (split {', '.join(evaluation)}: seeds below "
            f"{EVAL_SEED_LIMIT:,}); PPO never trains on them. Deal training tasks from seeds "
            f">= {EVAL_SEED_LIMIT:,}."
        )
    return records
