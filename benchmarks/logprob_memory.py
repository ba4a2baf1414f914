"""Peak memory of chunked vs naive per-token log-probs + entropy at Qwen's vocabulary (151,936).

    python -m benchmarks.logprob_memory                       # 2,048 tokens, bf16 logits
    python -m benchmarks.logprob_memory --tokens 4096 --json logprob_memory.json
    python -m benchmarks.logprob_memory --tokens 64 --vocab 1000   # smoke size

Each (path, pass) runs in a fresh subprocess so that allocator caches never carry over:
- "train": logp and entropy with autograd, then backward of Σ w·logp + Σ entropy;
- "no_grad": logp and entropy under `torch.no_grad()` (the proximal / reference passes).
Peak = extra memory above what was allocated before the call (the logits and labels): on CUDA
`torch.cuda.max_memory_allocated` minus the allocation before; on CPU the peak resident set size
(VmHWM, reset through /proc/self/clear_refs) minus the resident set before. The gradient of the
logits (`tokens × vocab` in the logits' dtype) is part of both "train" numbers: autograd needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = (("naive", "train"), ("chunked", "train"), ("naive", "no_grad"), ("chunked", "no_grad"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_variant(path: str, mode: str, tokens: int, vocab: int, dtype: str, chunk_size: int, device: str) -> dict:
    """One measurement in this process (call it in a fresh process)."""
    import torch

    from areal_lite.algo import logprobs_and_entropy, logprobs_and_entropy_naive

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    logits = torch.empty(tokens, vocab, dtype=dt, device=device)
    for s in range(0, tokens, 256):  # fill in slices: no full-size float32 temporary before the baseline
        logits[s : s + 256].normal_(0.0, 2.0)
    labels = torch.randint(0, vocab, (tokens,), device=device)
    weights = torch.randn(tokens, device=device)
    logits.requires_grad_(mode == "train")

    def call():
        if path == "naive":
            return logprobs_and_entropy_naive(logits, labels)
        return logprobs_and_entropy(logits, labels, chunk_size=chunk_size)

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        before = _rss_bytes()
    t0 = time.perf_counter()
    if mode == "train":
        lp, ent = call()
        (lp * weights).sum().add(ent.sum()).backward()
    else:
        with torch.no_grad():
            lp, ent = call()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _peak_rss_bytes() - before
    seconds = time.perf_counter() - t0
    # checksums after the measurement (a float64 copy of the gradient would dwarf the peak)
    grad_sum = sum(float(g.double().sum()) for g in logits.grad.split(256)) if mode == "train" else 0.0
    return {
        "path": path,
        "mode": mode,
        "peak_extra_mib": peak / 2**20,
        "seconds": seconds,
        "logp_sum": float(lp.double().sum()),
        "entropy_sum": float(ent.double().sum()),
        "grad_sum": grad_sum,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--chunk-size", type=int, default=None, help="default: areal_lite.algo.DEFAULT_CHUNK_SIZE")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--variants", default=",".join(f"{a}:{b}" for a, b in VARIANTS))
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.chunk_size is None:
        from areal_lite.algo import DEFAULT_CHUNK_SIZE

        args.chunk_size = DEFAULT_CHUNK_SIZE
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._worker:
        path, mode = args._worker.split(":")
        res = run_variant(path, mode, args.tokens, args.vocab, args.dtype, args.chunk_size, args.device)
        print(json.dumps(res))
        return 0

    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "benchmarks.logprob_memory", "--_worker", variant,
               "--tokens", str(args.tokens), "--vocab", str(args.vocab), "--dtype", args.dtype,
               "--chunk-size", str(args.chunk_size), "--device", args.device]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    full_fp32_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"tokens={args.tokens} vocab={args.vocab} logits={args.dtype} chunk={args.chunk_size} "
          f"device={args.device}; one float32 [tokens x vocab] = {full_fp32_mib:.0f} MiB")
    print(f"{'path':<8} {'pass':<8} {'peak extra MiB':>15} {'seconds':>8} {'logp sum':>14} {'entropy sum':>14}")
    for r in results:
        print(f"{r['path']:<8} {r['mode']:<8} {r['peak_extra_mib']:>15.1f} {r['seconds']:>8.2f} "
              f"{r['logp_sum']:>14.4f} {r['entropy_sum']:>14.4f}")
    report = {
        "config": {"tokens": args.tokens, "vocab": args.vocab, "dtype": args.dtype,
                   "chunk_size": args.chunk_size, "device": args.device},
        "full_fp32_tensor_mib": full_fp32_mib,
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
