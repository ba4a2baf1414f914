"""Embedded engine throughput against plain `model.generate` on the same model and prompts.

    python -m benchmarks.engine_throughput [--json out.json] [--num-prompts 64] [--threads 1]

Workload: a random Qwen2 model (hidden 256, 4 layers by default; built locally, nothing is
downloaded), `--num-prompts` prompts of 16-64 tokens, each with its own output length drawn from
16-256 (greedy, EOS ignored, so every run produces exactly the same number of tokens). Compared:
- engine: all prompts submitted at once to `engine.Engine` (continuous batching, in process);
- server (with `--http`): the same through the HTTP server (a subprocess), 64 concurrent clients;
- generate, one by one: `model.generate` per prompt with its own max_new_tokens;
- generate, padded batch: one left-padded `model.generate` over all prompts; the batch runs until
  its longest output, and only the requested tokens count as useful.
Tokens/s counts the requested output tokens. Prints a table and writes JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import threading
import time
from typing import Sequence

import torch


def build_workload(num_prompts: int, vocab: int, seed: int, min_out: int = 16, max_out: int = 256):
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(16, 64))] for _ in range(num_prompts)]
    out_lens = [rng.randint(min_out, max_out) for _ in range(num_prompts)]
    return prompts, out_lens


def run_engine(model_dir: str, prompts, out_lens, *, max_running: int) -> dict:
    from areal_lite.inference.embedded.engine import Engine, EngineConfig, SamplingSpec

    engine = Engine(
        EngineConfig(model_path=model_dir, skip_tokenizer_init=True, context_length=512, max_running_requests=max_running)
    ).start()
    try:
        # Warm-up (allocations, first-call overheads) outside the timing.
        done = threading.Event()
        engine.submit("warmup", prompts[0], SamplingSpec(max_new_tokens=4, ignore_eos=True, temperature=0.0), lambda o: done.set())
        done.wait(60)
        results: dict[str, list[int]] = {}
        all_done = threading.Event()

        def on_done(out):
            results[out.rid] = out.output_ids
            if len(results) == len(prompts):
                all_done.set()

        busy0, steps0 = engine.counters["busy_time_s"], engine.counters["num_steps"]
        t0 = time.perf_counter()
        for i, (p, n) in enumerate(zip(prompts, out_lens)):
            engine.submit(f"r{i}", p, SamplingSpec(max_new_tokens=n, ignore_eos=True, temperature=0.0), on_done)
        if not all_done.wait(3600):
            raise RuntimeError("engine benchmark timed out")
        wall = time.perf_counter() - t0
        tokens = sum(len(v) for v in results.values())
        assert tokens == sum(out_lens), (tokens, sum(out_lens))
        return {
            "wall_s": wall,
            "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "steps": engine.counters["num_steps"] - steps0,
            "busy_s": engine.counters["busy_time_s"] - busy0,
            "outputs": [results[f"r{i}"] for i in range(len(prompts))],
        }
    finally:
        engine.shutdown()


def run_http(model_dir: str, prompts, out_lens, *, max_running: int, threads: int) -> dict:
    import concurrent.futures

    import httpx

    from areal_lite.inference.embedded.local_server import start_local_server

    args = ["--skip-tokenizer-init", "--context-length", "512", "--max-running-requests", str(max_running),
            "--log-level", "warning"]
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with start_local_server(model_dir, extra_args=args, env=env, startup_timeout=120) as server, \
            httpx.Client(timeout=3600) as http:

        def one(p, n):
            body = {"input_ids": p, "return_logprob": True,
                    "sampling_params": {"max_new_tokens": n, "temperature": 0.0, "ignore_eos": True}}
            return http.post(server.url + "/generate", json=body).json()["output_ids"]

        one(prompts[0], 4)  # warm-up
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            t0 = time.perf_counter()
            outputs = list(pool.map(one, prompts, out_lens))
            wall = time.perf_counter() - t0
    tokens = sum(len(o) for o in outputs)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "outputs": outputs}


def run_generate_one_by_one(model, prompts, out_lens) -> dict:
    outputs = []
    t0 = time.perf_counter()
    for p, n in zip(prompts, out_lens):
        ids = torch.tensor([p])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        outputs.append(out[0, len(p) :].tolist())
    wall = time.perf_counter() - t0
    tokens = sum(len(o) for o in outputs)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "outputs": outputs}


def run_generate_padded(model, prompts, out_lens, pad_id: int) -> dict:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    longest = max(out_lens)
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest, do_sample=False)
    wall = time.perf_counter() - t0
    useful = sum(out_lens)
    return {
        "wall_s": wall,
        "tokens": useful,
        "tokens_per_s": useful / wall,
        "generated_incl_padding": int(out[:, width:].numel()),
        "outputs": [out[i, width : width + n].tolist() for i, n in enumerate(out_lens)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.engine_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--max-running-requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-one-by-one", action="store_true", help="Skip the slowest baseline.")
    parser.add_argument("--http", action="store_true", help="Also measure through the HTTP server.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir

    spec = TinyModelSpec(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=4 * args.hidden_size,
        max_position_embeddings=512,
        seed=args.seed,
    )
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model_dir(f"{tmp}/model", spec))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        prompts, out_lens = build_workload(args.num_prompts, model.config.vocab_size, args.seed)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: hidden {spec.hidden_size}, {spec.num_hidden_layers} layers, {n_params / 1e6:.2f}M params; "
              f"{len(prompts)} prompts, outputs {min(out_lens)}-{max(out_lens)} tokens ({sum(out_lens)} in all); "
              f"{args.threads} torch thread(s)", flush=True)
        results["engine"] = run_engine(model_dir, prompts, out_lens, max_running=args.max_running_requests)
        print(f"engine done: {results['engine']['tokens_per_s']:.0f} tok/s", flush=True)
        if args.http:
            results["server_http"] = run_http(
                model_dir, prompts, out_lens, max_running=args.max_running_requests, threads=args.threads
            )
            print(f"server done: {results['server_http']['tokens_per_s']:.0f} tok/s", flush=True)
        with torch.inference_mode():
            results["generate_padded_batch"] = run_generate_padded(model, prompts, out_lens, model.config.pad_token_id or 0)
            print(f"padded batch done: {results['generate_padded_batch']['tokens_per_s']:.0f} tok/s", flush=True)
            if not args.skip_one_by_one:
                results["generate_one_by_one"] = run_generate_one_by_one(model, prompts, out_lens)
    # Greedy outputs must agree: the same tokens, only faster.
    ref = results.get("generate_one_by_one", results["generate_padded_batch"])["outputs"]
    agree = sum(a == b for a, b in zip(results["engine"]["outputs"], ref))
    for r in results.values():
        r.pop("outputs")
    base = results["engine"]["tokens_per_s"]
    print(f"\n{'method':<24}{'wall s':>10}{'tokens':>10}{'tok/s':>10}{'engine x':>10}")
    for name, r in results.items():
        print(f"{name:<24}{r['wall_s']:>10.2f}{r['tokens']:>10d}{r['tokens_per_s']:>10.0f}{base / r['tokens_per_s']:>10.2f}")
    print(f"engine greedy outputs equal to the reference on {agree}/{len(prompts)} prompts")
    report = {
        "workload": {
            "num_prompts": len(prompts),
            "prompt_len": [min(map(len, prompts)), max(map(len, prompts))],
            "output_len": [min(out_lens), max(out_lens)],
            "total_output_tokens": sum(out_lens),
            "model": {"hidden_size": spec.hidden_size, "num_layers": spec.num_hidden_layers, "params": n_params},
            "threads": args.threads,
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "results": results,
        "engine_outputs_equal_reference": agree,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
