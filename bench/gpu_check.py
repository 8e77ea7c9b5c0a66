"""The prepared GPU check (issue 25): one command, one JSON file, at most 8 minutes on one
H100 or H200.

    python bench/gpu_check.py OUT_DIR            # on the GPU machine
    python bench/gpu_check.py OUT_DIR --cpu      # the same code at tiny size (CI runs it)

The GPU machine we borrow has torch, transformers, accelerate and peft but no model files,
no vLLM, TRL or DeepSpeed and no internet, so everything is built here from config with
random weights: a tokenizer trained on the kit's own GeneralPoints prompts (a byte-level BPE of at
most 1,024 tokens; the shapes keep their layers but get this vocabulary, which the JSON
says), Qwen2.5-1.5B's shape for PPO and SFT, Qwen2.5-7B's for the LoRA merge. Each part
runs on its own; one that fails records its error and the others still run. It writes
OUT_DIR/gpu_check.json with:

  ppo        one PPO update of the 1.5B shape through `train_ppo` (HF engine, bf16 autocast
             over fp32 masters): ratio_deviation_first_minibatch, clip_fraction, approx_kl,
             the share of weights the update changed, the step-time breakdown and
             throughput (train/timing.py), the peak memory of each stage beside the memory
             plan's rows for the same run
  batch_composition
             H2 of the GPU-path review: each turn's action log-prob scored in consecutive
             chunks and in shuffled micro-batches, max |difference|, with the kit's fp32
             output head and with bf16 logits (the head under autocast)
  lora_merge the 7B shape with LoRA on every linear layer: peak memory beyond the model
             while `merged_weights` walks every weight, against the largest single weight
  sft        one SFT step of the 1.5B shape through `train_sft` (only where TRL is installed)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import REPO, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SHAPES = REPO / "configs" / "shapes"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The same code at tiny size: every shape shrunk to these (head_dim 32).
TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for gpu_check.json (and the runs' folders)")
    parser.add_argument("--cpu", action="store_true", help="run the same code at tiny size on the CPU")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the tiny-size check")
    report: dict[str, Any] = {"machine": _machine(device), "tiny": args.cpu}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        scratch = Path(scratch)
        tokenizer = _timed_part(report, "tokenizer", lambda: _train_tokenizer(scratch / "tokenizer"))
        if tokenizer is not None:
            model_dir = scratch / "qwen2.5-1.5b"
            built = _timed_part(
                report, "build", lambda: _build_model("qwen2.5-1.5b", tokenizer, model_dir, device, args.cpu)
            )
            if built is not None:
                ppo = _timed_part(report, "ppo", lambda: _ppo_update(model_dir, out / "ppo", args.cpu))
                if ppo is not None:
                    _timed_part(report, "batch_composition", lambda: _batch_composition(out / "ppo", device))
                _timed_part(report, "sft", lambda: _sft_step(model_dir, tokenizer, out / "sft", scratch, args.cpu))
        _timed_part(report, "lora_merge", lambda: _lora_merge_peak("qwen2.5-7b", device, args.cpu))
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(out / "gpu_check.json", report)


def _machine(device: torch.device) -> dict[str, Any]:
    facts = {**machine(), "torch": torch.__version__}
    import transformers

    facts["transformers"] = transformers.__version__
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1))
    return facts


def _timed_part(report: dict[str, Any], name: str, run: Callable[[], Any]) -> Any:
    """Run one part; its result (or its error) and seconds go into report[name]."""
    started = time.perf_counter()
    try:
        result = run()
    except Exception as error:  # one part's failure must not lose the others' numbers
        report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        result = None
    else:
        if isinstance(result, dict):
            report[name] = result
    finally:
        report.setdefault(name, {})["seconds"] = round(time.perf_counter() - started, 1)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


# --- what the machine lacks, built here --------------------------------------------------


def _train_tokenizer(folder: Path):
    """A byte-level BPE of 1,024 tokens trained on GeneralPoints prompts and answers, with
    ChatML markers and the kit's chat template (generation marks included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sftrl_kit.data import GP_TRAIN_CONFIG, expert_records
    from sftrl_kit.models.builtin import SMOLLM2_CHAT_TEMPLATE

    texts = [m["content"] for r in expert_records("gp-l", 64, **GP_TRAIN_CONFIG) for m in r["messages"]]
    texts.append("You are a helpful AI assistant named SmolLM, trained by Hugging Face system user assistant")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


def _shape_config(shape: str, tokenizer, tiny: bool):
    """The shape's transformers config with this tokenizer's vocabulary (rounded up to a
    multiple of 64), shrunk to TINY_SHAPE with --cpu."""
    from transformers import AutoConfig

    values = json.loads((SHAPES / f"{shape}.json").read_text())
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    config.vocab_size = -(-len(tokenizer) // 64) * 64
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    if tiny:
        for key, value in TINY_SHAPE.items():
            setattr(config, key, value)
        config.max_window_layers = TINY_SHAPE["num_hidden_layers"]
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[: TINY_SHAPE["num_hidden_layers"]]
    return config


def _build_model(shape: str, tokenizer, folder: Path, device: torch.device, tiny: bool) -> dict[str, Any]:
    """Random fp32 weights of the shape, initialised on the device, saved with the tokenizer."""
    from transformers import AutoModelForCausalLM

    config = _shape_config(shape, tokenizer, tiny)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    return {"shape": shape, "vocab_size": config.vocab_size, "parameters": parameters}


# --- the parts ------------------------------------------------------------------------------


def _ppo_settings(model_dir: Path, run_dir: Path, tiny: bool):
    from sftrl_kit.train.ppo import PPOSettings

    return PPOSettings(
        model=str(model_dir),
        run_dir=str(run_dir),
        updates=1,
        episodes_per_update=4 if tiny else 16,
        max_new_tokens=8 if tiny else 64,
        max_attempts=2,
        minibatch_size=8,
        micro_batch_size=4,
        ppo_epochs=1,
        engine="hf",
        mixed_precision="bf16",
        save_every=1,
    )


def _ppo_update(model_dir: Path, run_dir: Path, tiny: bool) -> dict[str, Any]:
    from safetensors.torch import load_file

    from sftrl_kit.run_folder import checkpoint_dir, read_metrics
    from sftrl_kit.train.ppo import train_ppo

    settings = _ppo_settings(model_dir, run_dir, tiny)
    train_ppo(settings)
    (row,) = read_metrics(run_dir)
    before, after = (load_file(checkpoint_dir(run_dir, "ppo", u) / "model.safetensors") for u in (0, 1))
    changed = sum(int((before[k] != after[k]).sum()) for k in before)
    total = sum(t.numel() for t in before.values())
    kept = ("ratio_deviation_first_minibatch", "clip_fraction", "approx_kl", "grad_norm", "trained_tokens")
    result = {k: row[k] for k in kept if k in row}
    result["share_of_weights_changed"] = changed / total
    result.update({k: v for k, v in row.items() if k.startswith(("timing_s/", "perf/"))})
    result["memory_plan"] = _plan_rows(settings)
    return result


def _plan_rows(settings) -> dict[str, Any]:
    """The memory plan's rows (GiB per GPU, and when each is held) for the same run on this
    device, to set beside the measured peaks of each stage."""
    import dataclasses

    from sftrl_kit.memory_plan import memory_plan, request_for_settings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    request = request_for_settings("ppo", settings, 1, device)
    if device.type == "cuda":  # the whole GPU, not what the finished run left free
        request = dataclasses.replace(
            request, gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30
        )
    plan = memory_plan(request)
    rows = {row.name: {"gib": round(row.gib, 3), "phase": row.phase} for row in plan.rows}
    return {"rows": rows, "peak_gib": round(plan.total_gib, 3), "fits": plan.fits, "table": plan.format()}


def _batch_composition(run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Max |action log-prob in consecutive chunks - in shuffled micro-batches| over the
    update's turns, scored by the update's weights: with the kit's fp32 head, and with the
    head under bf16 autocast (the logits rounded to bf16)."""
    from sftrl_kit.episodes import read_jsonl
    from sftrl_kit.models import (
        autocast,
        forward_inputs,
        load_policy,
        response_logprobs,
        response_token_logprobs,
        response_window,
    )
    from sftrl_kit.run_folder import checkpoint_dir, episodes_file

    policy = load_policy(checkpoint_dir(run_dir, "ppo", 1), device=device, mixed_precision="bf16")
    turns = [
        (t["prompt_token_ids"], t["response_token_ids"])
        for e in read_jsonl(episodes_file(run_dir, 1))
        for t in e["turns"]
    ]

    def score(order: list[int], size: int, fp32_head: bool) -> dict[int, float]:
        sums = {}
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            prompts, responses = [turns[i][0] for i in rows], [turns[i][1] for i in rows]
            batch = policy.pack(prompts, responses)
            with torch.no_grad():
                if fp32_head:
                    logprobs = response_token_logprobs(
                        policy.model, batch, responses, autocast_dtype=torch.bfloat16
                    ).logprobs
                else:
                    with autocast(batch["input_ids"].device, torch.bfloat16):
                        logits = policy.model(
                            **forward_inputs(policy.model, batch, {}), logits_to_keep=response_window(responses)
                        ).logits
                    logprobs = [lp for lp, _ in response_logprobs(logits, batch["input_ids"], responses)]
            sums.update({i: float(lp.double().sum()) for i, lp in zip(rows, logprobs)})
        return sums

    in_order = list(range(len(turns)))
    shuffled = random.Random(0).sample(in_order, len(in_order))
    result: dict[str, Any] = {"turns": len(turns)}
    for name, fp32_head in (("fp32_head", True), ("bf16_logits", False)):
        chunks, micro = score(in_order, 4, fp32_head), score(shuffled, 2, fp32_head)
        result[f"max_abs_logprob_difference_{name}"] = max(abs(chunks[i] - micro[i]) for i in in_order)
    return result


def _lora_merge_peak(shape: str, device: torch.device, tiny: bool) -> dict[str, Any]:
    """Memory beyond the model while merged_weights yields every merged weight, against
    the largest single weight it merges (C2: the old merge built every delta first)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftrl_kit.models import merged_weights

    tokenizer = SimpleVocabulary(152064)
    config = _shape_config(shape, tokenizer, tiny)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    largest = max(m.weight.numel() * m.weight.element_size() for m in _adapted_modules(model))
    result: dict[str, Any] = {"shape": shape, "parameters": sum(p.numel() for p in model.parameters())}
    result["largest_adapted_weight_gib"] = largest / 2**30
    result["weights_in_model"] = sum(1 for name in model.get_base_model().state_dict() if "lora_" not in name)
    if device.type != "cuda":
        checked = sum(1 for _ in merged_weights(model))  # the code path at tiny size; no allocator peak on a CPU
        return {**result, "weights_merged": checked}
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    merged = 0
    for _, tensor in merged_weights(model):
        merged += 1
        del tensor
    peak_extra = torch.cuda.max_memory_allocated() - baseline
    return {
        **result,
        "weights_merged": merged,
        "peak_beyond_model_gib": peak_extra / 2**30,
        "peak_over_largest_weight": peak_extra / largest,
    }


class SimpleVocabulary:
    """The few tokenizer facts _shape_config reads, for a shape built without a tokenizer."""

    def __init__(self, size: int) -> None:
        self.size, self.bos_token_id, self.eos_token_id, self.pad_token_id = size, 0, 1, 2

    def __len__(self) -> int:
        return self.size


def _adapted_modules(model):
    from peft.tuners.lora import LoraLayer

    return [m.base_layer for m in model.modules() if isinstance(m, LoraLayer)]


def _sft_step(model_dir: Path, tokenizer, run_dir: Path, scratch: Path, tiny: bool) -> dict[str, Any]:
    """One SFT step through train_sft on expert GeneralPoints records (TRL needed)."""
    import importlib.util

    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        return {"skipped": "TRL or datasets is not installed here"}
    from sftrl_kit.data import GP_TRAIN_CONFIG, expert_records, write_sft_dataset
    from sftrl_kit.run_folder import read_metrics
    from sftrl_kit.train.sft import SFTSettings, train_sft

    dataset = scratch / "sft.jsonl"
    write_sft_dataset(dataset, expert_records("gp-l", 16, **GP_TRAIN_CONFIG))
    settings = SFTSettings(
        model=str(model_dir),
        dataset=str(dataset),
        run_dir=str(run_dir),
        max_steps=1,
        batch_size=4 if tiny else 8,
        save_steps=1,
        logging_steps=1,
        mixed_precision="bf16",
        gradient_checkpointing=not tiny,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_sft(settings)
    rows = read_metrics(run_dir)
    result = {"loss": next((r["loss"] for r in rows if "loss" in r), None), "tokens": rows[-1]["tokens"]}
    if torch.cuda.is_available():
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


if __name__ == "__main__":
    main()
