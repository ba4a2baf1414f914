"""Faster kernels for the trainer's passes on this machine: bf16 autocast and `torch.compile` against
fp32 eager, with the log-prob agreement each one costs (issue 19).

    python -m benchmarks.kernels                          # the CPU quickstart's model and batch
    python -m benchmarks.kernels --hidden 512 --layers 8  # the ~25M-parameter shape
    python -m benchmarks.kernels --num-seqs 16 --repeats 1 --no-compile   # smoke size

Workload: one RL batch as `benchmarks.packing` builds it (groups of 8 sharing a prompt, long-tailed
answers), through the trainer's own micro-batch layout (`build_microbatch`, packed rows) and per-token
log-probs (`algo.logprobs_and_entropy`) on a Qwen2 model of the quickstart's shape built locally.
Passes: `no_grad` (the proximal and reference passes) and `train` (forward, entropy and backward of a
token-weighted log-prob sum, as the update). Variants, interleaved per repeat:
- `fp32`: what the trainer runs;
- `bf16`: `torch.autocast("cpu", torch.bfloat16)` around the forward;
- `compile`: `torch.compile(model, dynamic=True)`, fp32; its first call (the compile) is timed apart.
Reported: seconds per pass (median over `--repeats`), speed against fp32, and the largest and mean
|Δ log-prob| against fp32 over the trained tokens. The CPU's flags decide whether bf16 is native
(AVX512-BF16 or AMX) or emulated: the trainer should use it only where it is native and faster.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext

import torch


def cpu_flags() -> dict:
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"capability": torch.backends.cpu.get_cpu_capability(), "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def build(args):
    from transformers import AutoModelForCausalLM

    from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir
    from areal_lite.trainer.batch import build_microbatch, pack_microbatches
    from benchmarks.packing import build_batch

    spec = TinyModelSpec(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=max(1, args.heads // 2), intermediate_size=2 * args.hidden,
                         max_position_embeddings=512)
    path = build_tiny_model_dir(tempfile.mkdtemp(prefix="kernels_"), spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    batch = build_batch(args.num_seqs, model.config.vocab_size, 256, seed=0)
    lens = [int(n) for n in batch.seqlens]
    mbs = [build_microbatch(batch, mb, packed=True, device=torch.device("cpu"))
           for mb in pack_microbatches(lens, range(len(lens)), args.max_tokens_per_mb)]
    n_params = sum(p.numel() for p in model.parameters())
    return model, mbs, n_params


def run_pass(model, mbs, *, train: bool, bf16: bool) -> tuple[float, list[torch.Tensor]]:
    from areal_lite.algo import logprobs_and_entropy

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    out = []
    t0 = time.perf_counter()
    with torch.set_grad_enabled(train):
        for mb in mbs:
            with ctx:
                logits = model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False).logits
            lp, ent = logprobs_and_entropy(logits[:, :-1].float(), mb.input_ids[:, 1:], temperature=1.0,
                                           chunk_size=1024, with_entropy=train)
            if train:
                (lp.sum() * 1e-3 + ent.sum() * 1e-4).backward()
            out.append(lp.detach())
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, out


def agreement(ref: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float]:
    d = torch.cat([(a - b).abs().reshape(-1) for a, b in zip(ref, other)])
    return float(d.max()), float(d.mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks.kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--max-tokens-per-mb", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, mbs, n_params = build(args)
    variants = {"fp32": (model, False), "bf16": (model, True)}
    compile_s = {}
    if not args.no_compile:
        compiled = torch.compile(model, dynamic=True)
        for train in (False, True):  # the first call of each pass compiles it
            t, _ = run_pass(compiled, mbs, train=train, bf16=False)
            compile_s["train" if train else "no_grad"] = t
        variants["compile"] = (compiled, False)
    times = {(v, p): [] for v in variants for p in ("no_grad", "train")}
    logps = {}
    for _ in range(args.repeats):
        for name, (m, bf16) in variants.items():
            for p in ("no_grad", "train"):
                t, lp = run_pass(m, mbs, train=p == "train", bf16=bf16)
                times[(name, p)].append(t)
                logps[(name, p)] = lp
    n_tokens = sum(mb.num_real_tokens for mb in mbs)
    rows = []
    for (name, p), ts in times.items():
        med = statistics.median(ts)
        worst, mean = agreement(logps[("fp32", p)], logps[(name, p)])
        rows.append({"variant": name, "pass": p, "s": med, "speed_vs_fp32": statistics.median(times[("fp32", p)]) / med,
                     "max_abs_dlogp": worst, "mean_abs_dlogp": mean, "compile_s": compile_s.get(p) if name == "compile" else None})
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "cpu": cpu_flags(),
              "threads": args.threads, "params": n_params, "tokens": n_tokens, "micro_batches": len(mbs), "rows": rows}
    print(f"{n_params / 1e6:.2f}M parameters, {n_tokens} tokens in {len(mbs)} micro-batches, {args.threads} thread(s); "
          f"CPU {result['cpu']}")
    print("| variant | pass | s | speed vs fp32 | max abs dlogp | mean abs dlogp | first call (compile) s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        first = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else ""
        print(f"| {r['variant']} | {r['pass']} | {r['s']:.3f} | {r['speed_vs_fp32']:.2f}x | {r['max_abs_dlogp']:.2e} | "
              f"{r['mean_abs_dlogp']:.2e} | {first} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
