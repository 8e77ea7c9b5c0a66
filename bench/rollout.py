"""Rollout throughput, HF generate against the vLLM engine, in one run; writes JSON.

    python bench/rollout.py [--out bench/results/rollout.json] [--model default]
                            [--episodes 64 256] [--hf-episodes 64] [--plain-episodes 8]
                            [--max-new-tokens 64]
    python bench/rollout.py --vl [--out bench/results/rollout-vl.json] [--model default-vl]
                            [--hf-episodes 64] [--episodes 64 256]

`--vl`: GP-VL at budget 2 with a vision-language model (default-vl), with the HF engine
(--hf-episodes) and the vLLM engine (--episodes): new tokens/s, episodes/hour, and where
the time goes besides generation: `image_preprocessing_seconds` (the kit's image
processor, inside every encode, timed in place; with vLLM, the kit's encode that checks
vLLM's prompt ids: vLLM's own processing of the images is inside the rest) and
`rendering_seconds` (drawing the same deals' cards, timed apart), each with its share of
the rollout's seconds; the vLLM engine's start and its ratio to HF at 64 episodes.

On the same deals and sampling (temperature 1, top_p 1, the quickstart's 64 new tokens):
  - `plain_loop`: one GP-L episode at a time, one `generate` call per turn, as a first
    script would (chat template -> tokenizer -> generate -> decode -> step);
  - for GP-L at budget 2 and 5 and V-IRL-L (its own budget of 2 per point):
      `hf`   the kit's rollout with the HF engine, 64 conversations per generate call;
      `vllm` the kit's rollout with the vLLM engine, every running conversation in one
             engine call per turn (prefix caching on).
Each case reports new tokens/s, episodes/hour and turns. The HF engine's rate does not
depend on the episode count once a batch is full, so by default it plays --hf-episodes
(64) only; the JSON says which counts were run. Also: the engine's start and weight-sync
seconds (median of 3 syncs), the engine's first call (GP-L budget 2, 64 episodes, run
once before the timed cases: a process's first call is slower), the process's peak RSS after the HF part and after the
vLLM part, and the ratios vLLM/HF and vLLM/plain loop (`ratio_vllm_hf` is GP-L budget 2,
64 episodes). The machine's load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time

from common import REPO, RESULTS, machine, write_report  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from sftrl_kit.engines import open_engine  # noqa: E402
from sftrl_kit.envs import make  # noqa: E402
from sftrl_kit.episodes import chat_messages  # noqa: E402
from sftrl_kit.models import SamplingConfig, load_policy  # noqa: E402
from sftrl_kit.rollout import rollout  # noqa: E402

CASES = {  # name: (env id, env settings)
    "gp-l_budget2": ("gp-l", {"max_attempts": 2}),
    "gp-l_budget5": ("gp-l", {"max_attempts": 5}),
    "virl-l": ("virl-l", {}),
}
CASES_VL = {"gp-vl_budget2": ("gp-vl", {"max_attempts": 2})}
HF_BATCH = 64


def plain_loop(policy, seeds: list[int], sampling: SamplingConfig) -> dict:
    """The one-at-a-time baseline on GP-L at budget 2."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=None,
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=policy.tokenizer.pad_token_id,
        eos_token_id=policy.stop_token_ids(),
    )
    torch.manual_seed(sampling.seed)
    started = time.perf_counter()
    new_tokens = turns = 0
    for seed in seeds:
        env = make("gp-l", **CASES["gp-l_budget2"][1])
        prompt, _ = env.reset(seed=seed)
        exchanges, done = [], False
        while not done:
            text = policy.prompt_text(chat_messages(prompt, exchanges))
            inputs = policy.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                output = policy.model.generate(**inputs, generation_config=config)
            response = output[0, inputs["input_ids"].shape[1] :]
            new_tokens += int((response != policy.tokenizer.pad_token_id).sum())
            answer = policy.tokenizer.decode(response, skip_special_tokens=True)
            feedback, _, terminated, truncated, _ = env.step(answer)
            exchanges.append((answer, feedback.text))
            turns += 1
            done = terminated or truncated
    return _rates(new_tokens, len(seeds), turns, time.perf_counter() - started)


def kit_rollout(responder, case: str, episodes: int, sampling: SamplingConfig, batch_size: int) -> dict:
    env_id, config = {**CASES, **CASES_VL}[case]
    envs = [make(env_id, **config) for _ in range(episodes)]
    started = time.perf_counter()
    played = rollout(
        responder,
        envs,
        sampling,
        seeds=list(range(episodes)),
        batch_size=batch_size,
        with_logprobs=False,
        progress=False,
    )
    seconds = time.perf_counter() - started
    tokens = sum(len(t.response_token_ids) for e in played for t in e.turns)
    return _rates(tokens, len(played), sum(len(e.turns) for e in played), seconds)


def _rates(tokens: int, episodes: int, turns: int, seconds: float) -> dict:
    return {
        "episodes": episodes,
        "turns": turns,
        "new_tokens": tokens,
        "seconds": round(seconds, 2),
        "new_tokens_per_second": round(tokens / seconds, 1),
        "episodes_per_hour": round(episodes / seconds * 3600),
    }


def vl_rollout(policy, episodes: int, sampling: SamplingConfig, responder=None) -> dict:
    """GP-VL at budget 2 through the kit's rollout (responder: the HF engine, the policy
    itself, unless given), with the seconds spent in the policy's image processor (timed
    in place) and in rendering the deals (timed apart)."""
    processor = policy.processor.image_processor
    preprocess, spent = processor.preprocess, []

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return preprocess(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    processor.preprocess = timed  # the processor calls self.preprocess: this instance's, now
    try:
        result = kit_rollout(responder or policy, "gp-vl_budget2", episodes, sampling, HF_BATCH)
    finally:
        del processor.preprocess
    started = time.perf_counter()
    env_id, config = CASES_VL["gp-vl_budget2"]
    for seed in range(episodes):
        make(env_id, **config).reset(seed=seed)
    rendering = time.perf_counter() - started
    result["image_preprocessing_seconds"] = round(sum(spent), 2)
    result["image_preprocessing_share"] = round(sum(spent) / result["seconds"], 3)
    result["rendering_seconds"] = round(rendering, 2)
    result["rendering_share"] = round(rendering / result["seconds"], 3)
    return result


def image_tokens(policy) -> int:
    """How many tokens one GP-VL image costs the language model."""
    image = make("gp-vl").reset(seed=0)[0].images[0]
    input_ids = policy.encode(["<image>"], [[image]])["input_ids"][0]
    return int((input_ids == policy.model.config.image_token_id).sum())


def vl_main(args) -> None:
    load_before = os.getloadavg()
    policy = load_policy(args.model)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    results = {f"hf_gp-vl_budget2_{n}": vl_rollout(policy, n, sampling) for n in args.hf_episodes}
    engine = open_engine(policy, "vllm")
    kit_rollout(engine, "gp-vl_budget2", 16, sampling, HF_BATCH)  # untimed: a process's first call runs slower
    for n in args.episodes:
        results[f"vllm_gp-vl_budget2_{n}"] = vl_rollout(policy, n, sampling, responder=engine)
    report = {
        **_report_header("rollout-vl", args, policy, load_before, sampling),
        "image_tokens_per_image": image_tokens(policy),
        "vllm_start_seconds": round(engine.start_seconds, 1),
        "results": results,
    }
    if "hf_gp-vl_budget2_64" in results and "vllm_gp-vl_budget2_64" in results:
        report["ratio_vllm_hf"] = round(
            results["vllm_gp-vl_budget2_64"]["new_tokens_per_second"]
            / results["hf_gp-vl_budget2_64"]["new_tokens_per_second"],
            2,
        )
    write_report(args.out, report)


def _report_header(name: str, args, policy, load_before: tuple, sampling: SamplingConfig) -> dict:
    """What every rollout report opens with: the model, the machine and its load."""
    return {
        "benchmark": name,
        "model": args.model,
        "num_parameters": policy.num_parameters,
        "dtype": str(policy.model.dtype),
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "sampling": vars(sampling),
        "hf_batch_size": HF_BATCH,
    }


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vl", action="store_true", help="GP-VL with a vision-language model (HF and vLLM engines)")
    parser.add_argument("--out", default=None, help="default: bench/results/rollout.json (rollout-vl.json with --vl)")
    parser.add_argument("--model", default=None, help="default: default (default-vl with --vl)")
    parser.add_argument("--episodes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--hf-episodes", type=int, nargs="+", default=[64])
    parser.add_argument("--plain-episodes", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    args.out = args.out or str(RESULTS / ("rollout-vl.json" if args.vl else "rollout.json"))
    args.model = args.model or ("default-vl" if args.vl else "default")
    if args.vl:
        return vl_main(args)

    load_before = os.getloadavg()
    policy = load_policy(args.model)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    results: dict[str, dict] = {"plain_loop": plain_loop(policy, list(range(args.plain_episodes)), sampling)}
    for case in CASES:
        for episodes in args.hf_episodes:
            results[f"hf_{case}_{episodes}"] = kit_rollout(policy, case, episodes, sampling, HF_BATCH)
            print(case, episodes, "hf", results[f"hf_{case}_{episodes}"], flush=True)
    rss_hf = peak_rss_gib()

    started = time.perf_counter()
    engine = open_engine(policy, "vllm")
    start_seconds = time.perf_counter() - started
    syncs = [engine.sync(policy) for _ in range(3)]
    # The first engine call of a process runs slower (kernel set-up); report it apart.
    results["vllm_first_call_gp-l_budget2_64"] = kit_rollout(engine, "gp-l_budget2", 64, sampling, 64)
    for case in CASES:
        for episodes in args.episodes:
            results[f"vllm_{case}_{episodes}"] = kit_rollout(engine, case, episodes, sampling, episodes)
            print(case, episodes, "vllm", results[f"vllm_{case}_{episodes}"], flush=True)

    # HF's rate per case: its largest episode count (the rate is flat once a batch is full).
    hf_rate = {case: results[f"hf_{case}_{max(args.hf_episodes)}"]["new_tokens_per_second"] for case in CASES}
    plain = results["plain_loop"]["new_tokens_per_second"]
    ratios = {
        f"{case}_{episodes}": {
            "vllm_vs_hf": round(results[f"vllm_{case}_{episodes}"]["new_tokens_per_second"] / hf_rate[case], 2),
            "vllm_vs_plain_loop": round(results[f"vllm_{case}_{episodes}"]["new_tokens_per_second"] / plain, 2),
        }
        for case in CASES
        for episodes in args.episodes
    }
    report = {
        **_report_header("rollout", args, policy, load_before, sampling),
        "episode_counts": {"hf": args.hf_episodes, "vllm": args.episodes, "plain_loop": args.plain_episodes},
        "vllm": {
            "options": dataclasses.asdict(engine.options),
            "engine_start_seconds": round(start_seconds, 2),
            "sync_seconds_median": round(statistics.median(syncs), 3),
        },
        "peak_rss_gib": {"after_hf": rss_hf, "after_vllm": peak_rss_gib()},
        "results": results,
        "ratios": ratios,
        "ratio_vllm_hf": ratios[f"gp-l_budget2_{args.episodes[0]}"]["vllm_vs_hf"],
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
