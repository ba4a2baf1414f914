"""Embedded engine throughput against a padded `model.generate` batch, side by side in one run.

    python -m benchmarks.engine_throughput --json out.json                  # both models, 1 and 2 threads
    python -m benchmarks.engine_throughput --models quickstart --threads 1 --repeats 3
    python -m benchmarks.engine_throughput --quick                         # a seconds-long harness check

Workload: `--num-prompts` prompts of 16-64 random tokens on a random Qwen2 model built locally
(`MODELS`: the CPU quickstart's shape, and a 25M one of hidden 512 and 8 layers). Every prompt gets
the same number of sampled tokens from both paths, with the same sampling (temperature, top-p,
top-k) and the log-probs of the sampled tokens (log_softmax(logits / T) at the token) returned:
- outputs `fixed`: `--max-new-tokens` per prompt (EOS ignored, so every run produces them all);
- outputs `mixed`: a length per prompt drawn from 16-256; the padded batch runs to the longest and
  only the requested tokens count as useful.
Compared on each (model, threads): the engine (`engine.Engine`, in process: all prompts submitted
at once, continuous batching) and `model.generate` over one left-padded batch (do_sample, EOS
disabled so it runs exactly to the requested length, `output_logits` for the log-probs). Each
repetition times both, alternating which goes first; the table reports the median engine/generate
ratio and its range. Before timing, each path's log-probs are checked against a plain forward.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from typing import Sequence

import torch

from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir

MODELS = {
    # examples/math/gsm8k_drgrpo_cpu.yaml's `prepare.tiny` (0.33 M parameters)
    "quickstart": TinyModelSpec(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=256, max_position_embeddings=512),
    # hidden 512, 8 layers (25.3 M parameters)
    "25m": TinyModelSpec(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                         intermediate_size=1536, max_position_embeddings=512),
    "smoke": TinyModelSpec(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=64, max_position_embeddings=512),
}


def build_workload(num_prompts: int, vocab: int, seed: int, outputs: str, max_new_tokens: int):
    """Prompts of 16-64 random non-special tokens, and each prompt's output length."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(16, 64))] for _ in range(num_prompts)]
    if outputs == "fixed":
        out_lens = [max_new_tokens] * num_prompts
    else:
        out_lens = [rng.randint(16, 256) for _ in range(num_prompts)]
    return prompts, out_lens


def sampling_kwargs(args) -> dict:
    return {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}


class EngineRunner:
    """One started engine; `run` submits every prompt at once and waits for all of them."""

    def __init__(self, model_dir: str, max_running: int, context_length: int, sampling: dict):
        from areal_lite.inference.embedded.engine import Engine, EngineConfig

        self.sampling = sampling
        self.engine = Engine(EngineConfig(model_path=model_dir, skip_tokenizer_init=True,
                                          context_length=context_length, max_running_requests=max_running)).start()

    def run(self, prompts, out_lens, tag: str) -> dict:
        from areal_lite.inference.embedded.engine import SamplingSpec

        results: dict = {}
        all_done = threading.Event()

        def on_done(out):
            results[out.rid] = out
            if len(results) == len(prompts):
                all_done.set()

        counters = self.engine.counters
        before = {k: counters[k] for k in ("prefill_time_s", "decode_time_s", "num_steps")}
        t0, c0 = time.perf_counter(), time.process_time()
        for i, (p, n) in enumerate(zip(prompts, out_lens)):
            spec = SamplingSpec(max_new_tokens=n, ignore_eos=True, **self.sampling)
            self.engine.submit(f"{tag}-{i}", p, spec, on_done)
        if not all_done.wait(3600):
            raise RuntimeError("engine benchmark timed out")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        outs = [results[f"{tag}-{i}"] for i in range(len(prompts))]
        assert [len(o.output_ids) for o in outs] == list(out_lens)
        return {"wall_s": wall, "cpu_s": cpu, **{k: counters[k] - v for k, v in before.items()},
                "outputs": [o.output_ids for o in outs], "logprobs": [o.output_logprobs for o in outs]}

    def close(self) -> None:
        self.engine.shutdown()


def run_generate(model, prompts, out_lens, sampling: dict, pad_id: int) -> dict:
    """One left-padded `model.generate` batch to the longest requested length, with log-probs."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])  # [B, T]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    longest = max(out_lens)
    top_k = sampling["top_k"] if sampling["top_k"] > 0 else 0  # 0: off (transformers' default is 50)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=sampling["temperature"],
                             top_p=sampling["top_p"], top_k=top_k, max_new_tokens=longest, pad_token_id=pad_id,
                             output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[:, width:]  # [B, longest]
        logits = torch.stack(out.logits, dim=1).float() / sampling["temperature"]  # [B, longest, V]
        logprobs = torch.log_softmax(logits, dim=-1).gather(2, tokens.unsqueeze(2)).squeeze(2)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert tokens.shape[1] == longest, tokens.shape
    return {"wall_s": wall, "cpu_s": cpu, "generated_incl_padding": int(tokens.numel()),
            "outputs": [tokens[i, :n].tolist() for i, n in enumerate(out_lens)],
            "logprobs": [logprobs[i, :n].tolist() for i, n in enumerate(out_lens)]}


def linear_floor_s(model, prompts, out_lens) -> float:
    """Seconds the model's linear layers alone take over the engine's token schedule.

    Every prompt token once (packed), then one row per unfinished request per decode step; the
    LM head on one row per request. No exact float32 engine can take less at this thread count,
    so generate's time over this floor bounds the ratio any engine can reach. Each distinct
    matmul shape is timed on its own (best of 3).
    """
    body = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    head = model.lm_head
    width = max(m.in_features for m in body)

    def best_of_3(rows: int, head_rows: int) -> float:
        x = torch.randn(rows, width)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for m in body:
                torch.nn.functional.linear(x[:, : m.in_features], m.weight, m.bias)
            torch.nn.functional.linear(x[:head_rows, : head.in_features], head.weight, head.bias)
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.inference_mode():
        total = best_of_3(sum(len(p) for p in prompts), len(prompts))
        rows = [sum(n > t for n in out_lens) for t in range(1, max(out_lens))]  # decode step t samples token t+1
        for b in set(rows):
            total += rows.count(b) * best_of_3(b, b)
    return total


def max_logprob_error(model, prompts, outputs, logprobs, temperature: float, rows: int = 4) -> float:
    """The largest |reported - plain forward| log-prob over the first `rows` sequences."""
    worst = 0.0
    with torch.inference_mode():
        for p, out, lp in list(zip(prompts, outputs, logprobs))[:rows]:
            logits = model(torch.tensor([p + out])).logits[0, len(p) - 1 : -1].float() / temperature
            ref = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(out).unsqueeze(1)).squeeze(1)
            worst = max(worst, (ref - torch.tensor(lp)).abs().max().item())
    return worst


def bench_one(name: str, threads: int, args) -> dict:
    """Both paths on one model at one thread count, `args.repeats` times in alternating order."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)  # NOTE: before the engine thread starts, which inherits it
    load_before = os.getloadavg()[0]
    spec = MODELS[name]
    sampling = sampling_kwargs(args)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model_dir(f"{tmp}/model", spec))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        model.generation_config.eos_token_id = None  # run to the requested length, as the engine's ignore_eos
        pad = model.config.pad_token_id or 0
        prompts, out_lens = build_workload(args.num_prompts, model.config.vocab_size, args.seed, args.outputs,
                                           args.max_new_tokens)
        engine = EngineRunner(model_dir, args.num_prompts, 64 + max(out_lens) + 1, sampling)
        try:
            # Warm-up outside the timing (allocations, first calls), then the log-prob check.
            warm = engine.run(prompts, [min(8, n) for n in out_lens], "warm")
            gen_warm = run_generate(model, prompts, [min(8, n) for n in out_lens], sampling, pad)
            errors = {path: max_logprob_error(model, prompts, r["outputs"], r["logprobs"], args.temperature)
                      for path, r in (("engine", warm), ("generate", gen_warm))}
            floor = linear_floor_s(model, prompts, out_lens)
            reps = []
            for r in range(args.repeats):
                order = ("engine", "generate") if r % 2 == 0 else ("generate", "engine")
                rec = {}
                for path in order:
                    if path == "engine":
                        rec["engine"] = engine.run(prompts, out_lens, f"r{r}")
                    else:
                        rec["generate"] = run_generate(model, prompts, out_lens, sampling, pad)
                    rec[path].pop("outputs"), rec[path].pop("logprobs")
                rec["ratio"] = rec["generate"]["wall_s"] / rec["engine"]["wall_s"]
                rec["cpu_ratio"] = rec["generate"]["cpu_s"] / rec["engine"]["cpu_s"]
                rec["first"] = order[0]
                reps.append(rec)
                print(f"  {name} {threads}t rep {r}: engine {rec['engine']['wall_s']:.2f}s "
                      f"({rec['engine']['num_steps']} steps), generate {rec['generate']['wall_s']:.2f}s: "
                      f"{rec['ratio']:.2f}x (CPU time {rec['cpu_ratio']:.2f}x)", flush=True)
        finally:
            engine.close()
    ratios = [r["ratio"] for r in reps]
    useful = sum(out_lens)
    eng_wall = statistics.median(r["engine"]["wall_s"] for r in reps)
    gen_wall = statistics.median(r["generate"]["wall_s"] for r in reps)
    return {
        "model": name, "threads": threads, "params": sum(p.numel() for p in model.parameters()),
        "spec": asdict(spec), "useful_tokens": useful,
        "engine": {"wall_s": eng_wall, "tokens_per_s": useful / eng_wall},
        "generate_padded_batch": {"wall_s": gen_wall, "tokens_per_s": useful / gen_wall,
                                  "generated_incl_padding": reps[0]["generate"]["generated_incl_padding"]},
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "linear_floor_s": floor, "ratio_bound": gen_wall / floor,
        # CPU time of the whole process: unlike wall time, not inflated while other work holds the cores.
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in reps),
        "logprob_max_abs_error": errors, "repetitions": reps,
        # The 1-minute load average: above the threads used, other work shared the cores.
        "load_avg": [load_before, os.getloadavg()[0]],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.engine_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--models", default="quickstart,25m", help=f"Comma-separated, from {sorted(MODELS)}.")
    parser.add_argument("--threads", default="1,2", help="Comma-separated torch thread counts.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions per (model, threads).")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--outputs", choices=("fixed", "mixed"), default="fixed")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="Tokens per prompt with --outputs fixed.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="A seconds-long harness check (tiny model, few tokens).")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.threads, args.repeats, args.num_prompts, args.max_new_tokens = "smoke", "1", 2, 6, 8
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {sorted(MODELS)}")
    if args.temperature <= 0:
        parser.error("--temperature must be > 0 (the benchmark samples)")
    thread_counts = [int(t) for t in args.threads.split(",")]
    runs = []
    for name in names:
        for threads in thread_counts:
            print(f"{name}, {threads} torch thread(s), {args.num_prompts} prompts, outputs {args.outputs}", flush=True)
            runs.append(bench_one(name, threads, args))
    print(f"\n{'model':<12}{'threads':>8}{'engine s':>10}{'generate s':>12}{'engine tok/s':>14}"
          f"{'ratio median':>14}{'range':>14}{'CPU ratio':>11}{'floor s':>9}{'bound':>8}{'logp err':>10}")
    for r in runs:
        err = max(r["logprob_max_abs_error"].values())
        print(f"{r['model']:<12}{r['threads']:>8}{r['engine']['wall_s']:>10.2f}"
              f"{r['generate_padded_batch']['wall_s']:>12.2f}"
              f"{r['engine']['tokens_per_s']:>14,.0f}{r['ratio_median']:>13.2f}x"
              f"{r['ratio_min']:>7.2f}-{r['ratio_max']:.2f}{r['cpu_ratio_median']:>10.2f}x"
              f"{r['linear_floor_s']:>9.2f}{r['ratio_bound']:>7.2f}x{err:>10.1e}")
    print("floor: the model's linear layers alone over the engine's tokens; bound: generate s / floor s, the best "
          "ratio an exact float32 engine could reach")
    first = runs[0]
    report = {
        "workload": {"num_prompts": args.num_prompts, "prompt_len": [16, 64], "outputs": args.outputs,
                     "max_new_tokens": args.max_new_tokens, "sampling": sampling_kwargs(args), "repeats": args.repeats,
                     "machine": platform.processor() or platform.machine(), "torch": torch.__version__},
        "runs": runs,
        # The first configuration in the shape `benchmarks.suite` reads.
        "results": {"engine": first["engine"], "generate_padded_batch": first["generate_padded_batch"]},
        "headline": "; ".join(f"{r['model']} {r['threads']}t: engine {r['ratio_median']:.2f}x padded generate "
                              f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" for r in runs),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
