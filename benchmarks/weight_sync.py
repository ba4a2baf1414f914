"""Weight sync time per GB, disk vs distributed, from a real trainer engine to a real inference server.

    python -m benchmarks.weight_sync [--json out.json] [--sizes tiny,medium] [--repeats 3]

For each model size (random Qwen2 models built locally): one embedded inference server (subprocess,
HTTP) and an FSDP engine with one gloo rank in this process. The two modes alternate on the same
server (disk, distributed, disk, ...), each pushing a new version:
- disk: rank 0 writes HF safetensors to weights/v{N} (before pausing), then pause →
  /update_weights_from_disk → continue;
- distributed: pause → per bucket, /update_weights_from_distributed + torch.distributed broadcast
  (gloo on CPU) → continue.
Reported per mode (median over `--repeats`): total sync time, the part with generation paused, and
both per GB of parameters (fp32), plus the pause the server itself measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Sequence

import torch

from areal_lite.utils.distributed import init_trainer_dist, run_and_exit

SIZES = {
    # name: (hidden, layers, intermediate)
    "tiny": (64, 2, 128),
    "small": (256, 4, 1024),
    "medium": (512, 8, 2048),
}


def _init_single_rank() -> None:
    import torch.distributed as dist

    from areal_lite.inference.embedded.local_server import free_port

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)


def bench_size(name: str, tmp: str, repeats: int) -> dict:
    import httpx

    from areal_lite.inference.client import ServerAdmin
    from areal_lite.inference.embedded.local_server import free_port, start_local_server
    from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir
    from areal_lite.trainer.engine import EngineSpec, FSDPEngine
    from areal_lite.run.rundir import RunDir
    from areal_lite.run.weight_sync import DiskWeightSync, DistributedWeightSync

    hidden, layers, inter = SIZES[name]
    spec = TinyModelSpec(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=inter, max_position_embeddings=256)
    model_dir = str(build_tiny_model_dir(os.path.join(tmp, name, "model"), spec))
    weights = os.path.join(tmp, name, "weights")
    os.makedirs(weights)
    engine = FSDPEngine(EngineSpec(path=model_dir), init_trainer_dist("cpu"), total_optimizer_steps=1)
    engine.initialize(with_optimizer=False)
    n_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    gb = n_bytes / 1e9
    args = ["--skip-tokenizer-init", "--context-length", "256", "--weight-version", "0",
            "--allowed-weight-dir", weights, "--log-level", "warning"]
    runs: dict[str, list[dict]] = {"disk": [], "distributed": []}
    with start_local_server(model_dir, extra_args=args, startup_timeout=180) as server:
        admin = ServerAdmin([server.url])
        syncs = {
            "disk": DiskWeightSync(admin, RunDir(os.path.dirname(weights))),
            "distributed": DistributedWeightSync(admin, master_address="127.0.0.1", master_port=free_port(),
                                                 timeout_s=300),
        }
        syncs["distributed"].connect(engine)
        version = 0
        for rep in range(repeats + 1):  # round 0 warms up both paths and is not counted
            for mode, sync in syncs.items():
                version += 1
                paused0 = httpx.get(f"{server.url}/get_server_info", timeout=30).json()["paused_time_s"]
                t0 = time.perf_counter()
                stats = sync.update(engine, version)
                total = time.perf_counter() - t0
                info = httpx.get(f"{server.url}/get_server_info", timeout=30).json()
                assert info["weight_version"] == str(version), info["weight_version"]
                row = {"total_s": total, "pause_s": stats["time/weight_pause"],
                       "server_paused_s": info["paused_time_s"] - paused0,
                       "write_s": stats.get("time/weight_write", 0.0)}
                if rep > 0:
                    runs[mode].append(row)
                print(f"  {name} round {rep}{' (warm-up)' if rep == 0 else ''} {mode}: {total:.3f} s "
                      f"(paused {row['pause_s']:.3f} s)", flush=True)
        syncs["distributed"].close()
    out = {"params": sum(p.numel() for p in engine.model.parameters()), "bytes": n_bytes, "modes": {}}
    for mode, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        out["modes"][mode] = {**med, "total_s_per_gb": med["total_s"] / gb, "pause_s_per_gb": med["pause_s"] / gb}
    out["runs"] = runs
    del engine
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.weight_sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--sizes", default="tiny,medium", help=f"Comma-separated, from {', '.join(SIZES)}.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared).")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes or args.repeats < 1:
        print(f"error: --sizes takes names from {', '.join(SIZES)} and --repeats must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    _init_single_rank()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sizes:
            results[name] = bench_size(name, tmp, args.repeats)
    print(f"\n{'model':<8}{'params':>10}{'MB':>8}{'mode':>13}{'sync s':>9}{'paused s':>10}{'sync s/GB':>11}"
          f"{'paused s/GB':>13}")
    for name, r in results.items():
        for mode, m in r["modes"].items():
            print(f"{name:<8}{r['params'] / 1e6:>9.2f}M{r['bytes'] / 1e6:>8.1f}{mode:>13}{m['total_s']:>9.3f}"
                  f"{m['pause_s']:>10.3f}{m['total_s_per_gb']:>11.2f}{m['pause_s_per_gb']:>13.2f}")
    report = {
        "config": {"sizes": {n: dict(zip(("hidden", "layers", "intermediate"), SIZES[n])) for n in sizes},
                   "repeats": args.repeats, "threads": args.threads,
                   "machine": platform.processor() or platform.machine(), "torch": torch.__version__},
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
