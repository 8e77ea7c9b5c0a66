"""Datasets: frozen evaluation sets and SFT data in TRL's conversational format.

Evaluation sets are lists of tasks: each record names its split, its seed and the
environment settings, and holds the task that `env.reset(options={"task": ...})`
replays. Record i of a split is dealt by `env.reset(seed=base_seed + i)`, so every
record (and the whole file, byte for byte) can be regenerated from the seed alone.

SFT data (paper section 5): "expert" is one prompt -> one correct answer per deal;
"suboptimal" is the ablation's multi-turn trajectories: wrong answers of each kind with
the verifier's real messages, then a correct answer. Every wrong answer is checked by
the verifier to be the kind of error it claims to be.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .envs import make
from .envs.general_points import GeneralPointsEnv, format_answer, solve, verify
from .envs.general_points.cards import RANKS, Card
from .envs.general_points.render import render_hand
from .episodes import chat_messages, read_jsonl, write_jsonl


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
        EvalSplit("gp-id", {"face_rule": "ten", "colours": "black", "sampling": "uniform"}, 10_000,
                  "trained rule (J, Q, K = 10), black suits"),
        EvalSplit("gp-rule-ood", {"face_rule": "ordinal", "colours": "black", "sampling": "with_face"}, 20_000,
                  "new rule (J, Q, K = 11, 12, 13), at least one face card, black suits"),
        EvalSplit("gp-visual-ood", {"face_rule": "ten", "colours": "red", "sampling": "uniform"}, 30_000,
                  "trained rule, red suits (GP-VL visual shift)"),
    )
}
GP_TRAIN_CONFIG = {"face_rule": "ten", "colours": "black", "sampling": "uniform"}
EVAL_SET_SIZE = 300

# Seeds are split by purpose so that no training deal is ever an evaluation deal:
# evaluation sets deal from [base_seed, base_seed + MAX_EVAL_SET_SIZE), every base below
# EVAL_SEED_LIMIT; SFT data and PPO deal from EVAL_SEED_LIMIT upwards.
EVAL_SEED_LIMIT = 1_000_000
MAX_EVAL_SET_SIZE = 10_000
GP_TRAIN_BASE_SEED = 1_000_000
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
        raise ValueError(f"{split.name}: eval sets hold 1 to {MAX_EVAL_SET_SIZE:,} records dealt from a base seed "
                         f"below {EVAL_SEED_LIMIT:,}; got {size} records from {split.base_seed}")
    records = []
    for index in range(size):
        seed = split.base_seed + index
        config = {**split.env_config, **({"city": split.cities[index % len(split.cities)]} if split.cities else {})}
        _, info = make(split.env_id, **config).reset(seed=seed)
        records.append({"split": split.name, "index": index, "seed": seed, "env_config": config, "task": info["task"]})
    return records


def eval_set_path(name: str, root: str | Path = "data") -> Path:
    """A frozen eval set by name (root/eval/<name>.jsonl), or a JSONL path as given."""
    path = Path(name)
    if path.suffix == ".jsonl":
        return path
    path = Path(root) / "eval" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no eval set {name!r} at {path}; run `sftrl data gp` or give a JSONL path")
    return path


def write_eval_sets(root: Path, splits: Iterable[EvalSplit], size_of: Callable[[EvalSplit], int]) -> dict[str, Any]:
    """Each split's frozen set into root/eval/<name>.jsonl; a summary entry per set."""
    summary = {}
    for split in splits:
        path = root / "eval" / f"{split.name}.jsonl"
        records = make_eval_set(split, size_of(split))
        write_jsonl(path, records)
        summary[split.name] = {"path": str(path), "records": len(records), "bytes": path.stat().st_size,
                               "description": split.description}
    return summary


def load_eval_set(path: str | Path) -> list[dict[str, Any]]:
    records = read_jsonl(path)
    for number, record in enumerate(records, 1):
        missing = {"split", "seed", "env_config", "task"} - set(record)
        if missing:
            raise ValueError(f"{path}: record {number} lacks {sorted(missing)}")
    return records


def expert_records(env_id: str, size: int, seed: int = GP_TRAIN_BASE_SEED, **env_config: Any) -> Iterator[dict]:
    """One single-turn SFT record per deal: the prompt and one correct answer."""
    _check_training_seed(seed)
    env = make(env_id, **{**GP_TRAIN_CONFIG, **env_config})
    for index in range(size):
        observation, info = env.reset(seed=seed + index)
        rng = random.Random(seed + index)
        answer = _correct_answer(env, info, rng)
        yield _record(observation, [], answer, seed + index, "expert", info["task"])


def suboptimal_records(
    env_id: str, size: int, seed: int = 2 * GP_TRAIN_BASE_SEED, **env_config: Any
) -> Iterator[dict]:
    """Multi-turn records: 1 to budget-1 verified wrong answers, then a correct one."""
    _check_training_seed(seed)
    env = make(env_id, **{**GP_TRAIN_CONFIG, **env_config})
    for index in range(size):
        observation, info = env.reset(seed=seed + index)
        rng = random.Random(seed + index)
        exchanges = []
        for _ in range(rng.randint(1, env.config.max_attempts - 1)):
            wrong = _wrong_answer(env, info, rng)
            feedback, _, terminated, truncated, _ = env.step(wrong)
            if terminated or truncated:
                raise RuntimeError(f"a wrong answer ended the episode of {info['task']}")
            exchanges.append((wrong, feedback.text))
        yield _record(observation, exchanges, _correct_answer(env, info, rng), seed + index, "suboptimal", info["task"])


def _record(observation, exchanges, answer, seed, kind, task) -> dict[str, Any]:
    record = {"messages": chat_messages(observation, exchanges, final_response=answer),
              "seed": seed, "kind": kind, "task": task}
    if observation.images:
        record["images"] = observation.images  # PIL images; write_sft_dataset stores files
    return record


def _correct_answer(env: GeneralPointsEnv, info: dict, rng: random.Random) -> str:
    formula = rng.choice(solve(info["values"], env.config.target))
    return format_answer(_ranks(env), info["values"], f"{formula}={env.config.target}")


_ERROR_KINDS = ("wrong_value", "numbers_mismatch", "illegal_formula")


def _wrong_answer(env: GeneralPointsEnv, info: dict, rng: random.Random) -> str:
    """A wrong answer of a random kind, confirmed by the verifier (GP-VL: sometimes with
    misread cards as well)."""
    values, target = info["values"], env.config.target
    for _ in range(200):
        kind = rng.choice(_ERROR_KINDS)
        if kind == "wrong_value":
            formula = _random_formula(values, rng)
        else:
            formula = rng.choice(solve(values, target))
            formula = _change_a_number(formula, rng) if kind == "numbers_mismatch" else _break(formula, rng)
        cards = _ranks(env)
        if env.config.checks_recognition and rng.random() < 0.3:
            cards[rng.randrange(len(cards))] = rng.choice([r for r in RANKS if r not in cards])
        answer = format_answer(cards, values, formula)
        if verify(answer, env.hand, env.config).outcome == kind:
            return answer
    raise RuntimeError(f"could not make a wrong answer for {info['task']}")


def _ranks(env: GeneralPointsEnv) -> list[str]:
    return [card.rank for card in env.hand]


def _random_formula(values: list[int], rng: random.Random) -> str:
    items = [str(v) for v in values]
    rng.shuffle(items)
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        joined = f"{items[i]}{rng.choice('+-*/')}{items[i + 1]}"
        items[i : i + 2] = [f"({joined})" if len(items) > 2 else joined]
    return items[0]


def _change_a_number(formula: str, rng: random.Random) -> str:
    numbers = list(re.finditer(r"\d+", formula))
    chosen = rng.choice(numbers)
    new = rng.choice([v for v in range(1, 14) if v != int(chosen.group())])
    return formula[: chosen.start()] + str(new) + formula[chosen.end() :]


def _break(formula: str, rng: random.Random) -> str:
    breakers = [
        lambda f: f.replace(")", "", 1) if ")" in f else "(" + f,
        lambda f: f.replace("*", "x", 1) if "*" in f else f + "x2",
        lambda f: f + "^1",
        lambda f: f.replace("+", "++", 1) if "+" in f else "-" + f,
    ]
    return rng.choice(breakers)(formula)


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


def write_sft_sets(folder: Path, plan: list[tuple[str, Iterator[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Write each named record stream to folder/<name>.jsonl; sizes include images."""
    written = {}
    for name, records in plan:
        path = folder / f"{name}.jsonl"
        count = write_sft_dataset(path, records)
        image_dir = path.with_suffix("")
        image_bytes = sum(f.stat().st_size for f in image_dir.iterdir()) if image_dir.is_dir() else 0
        written[name] = {"path": str(path), "records": count, "bytes": path.stat().st_size + image_bytes}
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
    eval_size: int = EVAL_SET_SIZE
    sft_text: int = 2000  # GP-L expert records (the suboptimal set is half as large)
    sft_image: int = 500  # GP-VL expert records, each with a PNG
    samples: int = 4  # rendered GP-VL sample images, one per eval split and more


def generate_gp_data(root: str | Path = "data", sizes: GPDataSizes = GPDataSizes()) -> dict[str, Any]:
    """The data stage of the study: frozen eval sets (root/eval/, committed) and SFT
    datasets plus sample images (root/generated/, ignored). Returns a summary."""
    root = Path(root)
    summary: dict[str, Any] = {"eval": write_eval_sets(root, GP_EVAL_SPLITS.values(), lambda _: sizes.eval_size),
                               "sft": {}, "samples": []}
    generated = root / "generated"
    plan = [
        ("gp-l-expert", expert_records("gp-l", sizes.sft_text)),
        ("gp-l-suboptimal", suboptimal_records("gp-l", sizes.sft_text // 2)),
        ("gp-vl-expert", expert_records("gp-vl", sizes.sft_image)),
        ("gp-vl-suboptimal", suboptimal_records("gp-vl", sizes.sft_image // 2)),
    ]
    summary["sft"] = write_sft_sets(generated, plan)
    summary["samples"] = _write_samples(generated / "samples", sizes.samples)
    return summary


def _write_samples(folder: Path, count: int) -> list[str]:
    """A few GP-VL images from the eval splits, to look at."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    splits = list(GP_EVAL_SPLITS.values())
    for i in range(count):
        split = splits[i % len(splits)]
        env = make("gp-vl", **split.env_config)
        _, info = env.reset(seed=split.base_seed + i // len(splits))
        hand = [Card.from_code(code) for code in info["task"]["hand"]]
        path = folder / f"{split.name}-{'-'.join(info['task']['hand'])}.png"
        render_hand(hand, info["task"]["image_seed"], env.config.image_size).save(path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------
# V-IRL

from .envs.virl.city import OOD_CITIES, TRAIN_CITY  # noqa: E402
from .envs.virl.prompts import describe_landmarks, sentence_per_decision  # noqa: E402
from .envs.virl.prompts import format_answer as virl_answer  # noqa: E402
from .envs.virl.prompts import valid_actions  # noqa: E402

VIRL_EVAL_SPLITS = {
    split.name: split
    for split in (
        EvalSplit("virl-id", {"action_space": "absolute", "city": TRAIN_CITY.name}, 40_000,
                  f"absolute actions, routes in {TRAIN_CITY.name} (the training city)", "virl-l"),
        EvalSplit("virl-rule-ood", {"action_space": "relative", "city": TRAIN_CITY.name}, 40_000,
                  "relative actions on the same routes as virl-id", "virl-l"),
        EvalSplit("virl-visual-ood", {"action_space": "absolute"}, 60_000,
                  f"absolute actions, routes in the {len(OOD_CITIES)} other cities", "virl-l",
                  cities=tuple(c.name for c in OOD_CITIES)),
    )
}
VIRL_TRAIN_CONFIG = {"action_space": "absolute", "city": TRAIN_CITY.name}
VIRL_TRAIN_BASE_SEED = 3_000_000


def virl_expert_records(env_id: str, routes: int, seed: int = VIRL_TRAIN_BASE_SEED, **env_config: Any) -> Iterator[dict]:
    """One single-turn record per decision point of each route: its prompt (with the
    history so far) and the expert's answer."""
    _check_training_seed(seed)
    env = make(env_id, **{**VIRL_TRAIN_CONFIG, **env_config})
    for index in range(routes):
        observation, info = env.reset(seed=seed + index)
        sentences = sentence_per_decision(env.decisions, env.route.instruction)
        for decision, sentence in zip(list(env.decisions), sentences):
            answer = virl_answer(describe_landmarks(decision.landmarks), sentence, decision.action)
            yield _record(observation, [], answer, seed + index, "expert", {**info["task"], "point": decision.point})
            observation, _, _, _, _ = env.step(answer)


def virl_suboptimal_records(env_id: str, routes: int, seed: int = 2 * VIRL_TRAIN_BASE_SEED,
                            **env_config: Any) -> Iterator[dict]:
    """Per decision point: a verified wrong action with the verifier's message, then the
    expert's answer (the budget of 2 per point allows one revision)."""
    _check_training_seed(seed)
    env = make(env_id, **{**VIRL_TRAIN_CONFIG, **env_config})
    for index in range(routes):
        rng = random.Random(seed + index)
        observation, info = env.reset(seed=seed + index)
        sentences = sentence_per_decision(env.decisions, env.route.instruction)
        for decision, sentence in zip(list(env.decisions), sentences):
            wrong_action = rng.choice(sorted(valid_actions(env.config.action_space) - {decision.action}))
            wrong = virl_answer(describe_landmarks(decision.landmarks), sentence, wrong_action)
            feedback, _, _, truncated, step_info = env.step(wrong)
            if truncated or step_info["verdict"]["outcome"] != "wrong_action":
                raise RuntimeError(f"the wrong action {wrong_action!r} was not scored as wrong")
            answer = virl_answer(describe_landmarks(decision.landmarks), sentence, decision.action)
            yield _record(observation, [(wrong, feedback.text)], answer, seed + index, "suboptimal", info["task"])
            observation, _, _, _, _ = env.step(answer)


@dataclass(frozen=True)
class VirlDataSizes:
    eval_routes: int = 150  # virl-id and virl-rule-ood (the same routes)
    visual_ood_routes: int = 90  # 10 per other city
    sft_text_routes: int = 300
    sft_image_routes: int = 60
    samples: int = 3


def generate_virl_data(root: str | Path = "data", sizes: VirlDataSizes = VirlDataSizes()) -> dict[str, Any]:
    """V-IRL's data stage: eval sets (root/eval/, committed), SFT data (root/generated/)."""
    root = Path(root)
    def size_of(split: EvalSplit) -> int:
        return sizes.visual_ood_routes if split.cities else sizes.eval_routes

    summary: dict[str, Any] = {"eval": write_eval_sets(root, VIRL_EVAL_SPLITS.values(), size_of),
                               "sft": {}, "samples": []}
    generated = root / "generated"
    plan = [
        ("virl-l-expert", virl_expert_records("virl-l", sizes.sft_text_routes)),
        ("virl-l-suboptimal", virl_suboptimal_records("virl-l", sizes.sft_text_routes // 2)),
        ("virl-vl-expert", virl_expert_records("virl-vl", sizes.sft_image_routes)),
        ("virl-vl-suboptimal", virl_suboptimal_records("virl-vl", sizes.sft_image_routes // 2)),
    ]
    summary["sft"] = write_sft_sets(generated, plan)
    samples = generated / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for split in list(VIRL_EVAL_SPLITS.values())[: sizes.samples]:
        record = make_eval_set(split, 1)[0]
        env = make("virl-vl", **record["env_config"])
        observation, _ = env.reset(options={"task": record["task"]})
        path = samples / f"{split.name}-{env.route.route_id}.png"
        observation.images[0].save(path)
        summary["samples"].append(str(path))
    return summary
