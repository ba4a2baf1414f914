"""The GPU device check: the GPU path end to end on one GPU, with no network, in under 9 minutes.

    python -m benchmarks.gpu_check --out OUT_DIR                       # on one H100 / H200
    python -m benchmarks.gpu_check --out /tmp/gpucheck --device cpu --small   # the same code on a CPU

What it runs (figures in OUT_DIR/gpu_check.json; a summary table is printed last):
  1. environment: torch, CUDA, the device, its memory; `pytest -m gpu tests/gpu` (the GPU test tier);
  2. a random-init model of Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864,
     vocab 151,936) built from a config: nothing is downloaded;
  3. inference: the embedded engine on the device behind its SGLang-API server, driven by our client
     (64 prompts × 128 sampled tokens with log-probs: tokens/s), pause/continue;
  4. weight sync: a one-rank FSDP trainer (fp32 master weights, bf16 compute) makes a PPO update and
     pushes it in bf16 — disk, then distributed (over gloo with CUDA tensors: with one GPU the trainer
     rank and the server share the device, which NCCL refuses) — and after each sync the server's
     log-probs of its greedy continuation are compared with the trainer's for the same tokens;
  5. trainer throughput and MFU (6·params·tokens / time / peak), with and without activation checkpointing,
     and with the varlen attention (`actor.attn_impl=varlen`) against the device's default;
  6. a 3-step RL run through the local launcher, server and trainer colocated on the one GPU (disk weight
     sync: NCCL refuses two ranks of one group on one device).

`--small --device cpu` runs steps 2-5 with a tiny model on the CPU (CI runs it as a smoke test);
step 6 needs a GPU (colocation is a GPU placement). SGLang itself cannot be installed on the lent
machine (no network, and its wheels pin another torch): it is covered by tests/interop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, max_position_embeddings=4096)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=512, max_position_embeddings=1024)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense TFLOP/s (no sparsity)


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------- 1. environment


def environment(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())
    return info


def gpu_tests(out: Path) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/gpu"],
                          capture_output=True, text=True, cwd=REPO, timeout=240)
    (out / "pytest_gpu.log").write_text(proc.stdout + proc.stderr)
    return {"rc": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1],
            "seconds": round(time.monotonic() - t0, 1)}


# --------------------------------------------------------------------------------- 2. model


def build_model(path: Path, shape: dict) -> Path:
    """A randomly initialised Qwen2 of `shape` (bf16 weights) with the project's byte-level tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from areal_lite.tiny.model import build_char_tokenizer

    tok = build_char_tokenizer()
    assert shape["vocab_size"] >= len(tok)
    cfg = Qwen2Config(**shape, tie_word_embeddings=True, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------- 3. inference


def inference(model: Path, device: str, small: bool, out: Path) -> dict:
    import httpx

    from areal_lite.inference.client import InferenceClient, SamplingParams
    from areal_lite.inference.embedded.local_server import start_local_server

    args = ["--skip-tokenizer-init", "--device", device, "--dtype", "bfloat16" if device == "cuda" else "float32",
            "--context-length", "512", "--max-running-requests", "64", "--log-level", "warning"]
    n, new = (8, 16) if small else (64, 128)
    with start_local_server(model, extra_args=args, log_path=out / "server_inference.log", startup_timeout=300) as s:
        prompts = [[5 + (i * 7 + j) % 200 for j in range(8 + i % 24)] for i in range(n)]

        async def go() -> float:
            async with InferenceClient([s.url]) as client:
                await client.agenerate(prompts[0], SamplingParams(max_new_tokens=4))  # warm-up
                t0 = time.perf_counter()
                res = await asyncio.gather(*(client.agenerate(p, SamplingParams(max_new_tokens=new, ignore_eos=True))
                                             for p in prompts))
                assert all(len(r.output_ids) == new and len(r.logprobs) == new for r in res)
                return time.perf_counter() - t0

        seconds = asyncio.run(go())
        paused = httpx.post(f"{s.url}/pause_generation", json={"mode": "abort"}, timeout=60).status_code
        resumed = httpx.post(f"{s.url}/continue_generation", json={}, timeout=60).status_code
    return {"prompts": n, "new_tokens": new, "seconds": round(seconds, 3), "tokens_per_s": round(n * new / seconds, 1),
            "pause_continue_http": [paused, resumed]}


# --------------------------------------------------------------------------------- 4. weight sync


def weight_sync(model: Path, device: str, small: bool, out: Path) -> dict:
    """One-rank trainer in this process; a server subprocess on the same device."""
    import httpx
    import numpy as np

    from areal_lite.config.schema import ActorConfig
    from areal_lite.inference.client import ServerAdmin
    from areal_lite.inference.embedded.local_server import start_local_server
    from areal_lite.run.rundir import RunDir
    from areal_lite.run.weight_sync import DiskWeightSync, DistributedWeightSync
    from areal_lite.trainer.batch import SeqBatch
    from areal_lite.trainer.engine import EngineSpec, FSDPEngine
    from areal_lite.trainer.ppo import PPOActor
    from areal_lite.utils.distributed import init_trainer_dist
    from areal_lite.utils.net import free_port

    d = init_trainer_dist(device)
    engine = FSDPEngine(EngineSpec(path=str(model), lr=1e-4, max_tokens_per_mb=8192, export_dtype="bfloat16"), d,
                        total_optimizer_steps=4)
    engine.initialize()
    actor = PPOActor.build(ActorConfig(path=str(model)), max_new_tokens=64, loss_norm_constant=64.0, seed=0)
    run = RunDir(str(out / "run")).make()
    args = ["--skip-tokenizer-init", "--device", device, "--dtype", "bfloat16" if device == "cuda" else "float32",
            "--context-length", "512", "--weight-version", "0", "--allowed-weight-dir", run.weights_dir,
            "--log-level", "warning"]
    rng = np.random.default_rng(0)
    results = {}
    with start_local_server(model, extra_args=args, log_path=out / "server_sync.log", startup_timeout=300) as s:
        admin = ServerAdmin([s.url], timeout=300)
        syncs = {"disk": DiskWeightSync(admin, run),
                 # NCCL refuses two ranks of one group on one device, and this check has one GPU: the
                 # distributed path runs on gloo here (CUDA tensors on both sides); NCCL needs a 2-GPU machine.
                 "distributed": DistributedWeightSync(admin, master_address="127.0.0.1", master_port=free_port(),
                                                      backend="gloo", timeout_s=300)}
        for version, (mode, sync) in enumerate(syncs.items(), start=1):
            sync.connect(engine)
            batch = _random_batch(rng, num_seqs=16 if small else 64, vocab=200)
            rows = actor.step_rows(engine, batch)
            actor.ppo_update(engine, batch, rows, actor.advantage_fn(batch, rows), step=version)
            t0 = time.perf_counter()
            stats = sync.update(engine, version=version)
            sync_s = time.perf_counter() - t0
            body = httpx.post(f"{s.url}/generate", json={"input_ids": [7, 8, 9, 10], "return_logprob": True,
                              "sampling_params": {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}},
                              timeout=120).json()
            ids = [7, 8, 9, 10] + body["output_ids"]
            server_lp = np.asarray([x[0] for x in body["meta_info"]["output_token_logprobs"]])
            probe = SeqBatch(input_ids=np.asarray(ids, np.int64), loss_mask=np.arange(len(ids)) >= 4,
                             behav_logp=np.zeros(len(ids), np.float32), versions=np.zeros(len(ids), np.int32),
                             seqlens=np.asarray([len(ids)]), prompt_lens=np.asarray([4]), rewards=np.zeros(1),
                             group_ids=np.zeros(1, np.int64), truncated=np.zeros(1, bool), prompt_ids=["p"])
            trainer_lp = actor.compute_logp(engine, probe)[0, 4:len(ids)].numpy()
            diff = np.abs(server_lp - trainer_lp)
            results[mode] = {"version": body["meta_info"]["weight_version"], "sync_s": round(sync_s, 3),
                             "pause_s": round(stats.get("time/weight_pause", 0.0), 3),
                             "bytes": stats.get("weight_sync/bytes"), "logp_max_abs_diff": float(diff.max()),
                             "logp_mean_abs_diff": float(diff.mean())}
        syncs["distributed"].close()
    results["params"] = sum(p.numel() for p in engine.model.parameters())
    del engine
    if device == "cuda":
        torch.cuda.empty_cache()
    return results


def _random_batch(rng, num_seqs: int, vocab: int, prompt: int = 16, max_answer: int = 96):
    import numpy as np

    from areal_lite.trainer.batch import SeqBatch

    answers = rng.integers(8, max_answer, num_seqs)
    lens = prompt + answers
    n = int(lens.sum())
    mask = np.concatenate([np.r_[np.zeros(prompt, bool), np.ones(a, bool)] for a in answers])
    return SeqBatch(input_ids=rng.integers(3, vocab, n), loss_mask=mask,
                    behav_logp=np.where(mask, -rng.random(n) * 3, 0).astype(np.float32),
                    versions=np.zeros(n, np.int32), seqlens=lens.astype(np.int64),
                    prompt_lens=np.full(num_seqs, prompt, np.int64), rewards=rng.integers(0, 2, num_seqs).astype(float),
                    group_ids=np.arange(num_seqs) // 4, truncated=np.zeros(num_seqs, bool),
                    prompt_ids=[str(i // 4) for i in range(num_seqs)])


# --------------------------------------------------------------------------------- 5. MFU


def trainer_mfu(model: Path, device: str, small: bool) -> dict:
    import numpy as np

    from areal_lite.trainer.engine import EngineSpec, FSDPEngine
    from areal_lite.trainer.sft import sft_batch, sft_loss_fn
    from areal_lite.utils.distributed import init_trainer_dist

    d = init_trainer_dist(device)
    rng = np.random.default_rng(1)
    seqs, length = (8, 128) if small else (64, 1024)
    examples = [(list(rng.integers(3, 200, 64)), list(rng.integers(3, 200, length - 64))) for _ in range(seqs)]
    batch = sft_batch(examples)
    out = {}
    # The device's default attention (sdpa on a GPU), then with activation checkpointing, then the
    # per-sequence varlen attention (actor.attn_impl=varlen, the CPU default) for comparison.
    variants = (("without_gc", False, "auto"), ("with_gc", True, "auto"), ("without_gc_varlen", False, "varlen"))
    for key, gc, attn in variants:
        engine = FSDPEngine(EngineSpec(path=str(model), lr=1e-5, gradient_checkpointing=gc, attn_impl=attn,
                                       max_tokens_per_mb=4096 if small else 16384), d, total_optimizer_steps=10)
        engine.initialize()
        params = sum(p.numel() for p in engine.model.parameters())
        mbs = engine.microbatches(batch, [list(range(seqs))])[0]
        loss = sft_loss_fn(batch, float(batch.loss_mask.sum()))
        engine.train_minibatch(batch, mbs, loss)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            engine.train_minibatch(batch, mbs, loss)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / reps
        tokens = int(batch.seqlens.sum())
        flops = 6 * params * tokens
        name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        out[key] = {
            "attn_impl": engine.attn_implementation,
            "tokens_per_s": round(tokens / dt, 1), "tflops": round(flops / dt / 1e12, 2),
            "mfu": round(flops / dt / peak, 4) if peak else None,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        }
        del engine
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------------- 6. RL run


def colocated_run(model: Path, out: Path) -> dict:
    import yaml

    cfg = {
        "experiment_name": "gpu_check", "trial_name": "colocated", "seed": 1, "total_train_steps": 3,
        "cluster": {"fileroot": str(out / "runs"), "n_nodes": 1, "n_gpus_per_node": 1},
        "allocation": {"device": "cuda", "colocate": True, "inference": {"backend": "embedded", "num_servers": 1},
                       "rollout": {"num_workers": 1}, "trainer": {"nnodes": 1, "nproc_per_node": 1}},
        "train_dataset": {"path": "synthetic:arith", "batch_size": 16, "max_prompt_len": 128,
                          "synthetic": {"num_records": 256}},
        "gconfig": {"n_samples": 4, "max_new_tokens": 64},
        "actor": {"path": str(model), "optimizer": {"lr": 1e-6}, "mb_spec": {"max_tokens_per_mb": 8192},
                  "weight_update_mode": "disk"},
        "server": {"context_length": 512, "max_running_requests": 64},
        "saver": {"save_final": True},
    }
    path = out / "colocated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    entry = REPO / "examples" / "math" / "gsm8k_drgrpo.py"
    dry = subprocess.run([sys.executable, "-m", "areal_lite.launcher.local", str(entry), "--config", str(path),
                          "--dry-run"], capture_output=True, text=True, cwd=REPO, timeout=120)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "areal_lite.launcher.local", str(entry), "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=420)
    (out / "colocated_launcher.log").write_text(proc.stdout + proc.stderr)
    rdir = out / "runs" / "gpu_check" / "colocated"
    metrics = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines()] \
        if (rdir / "metrics.jsonl").is_file() else []
    return {"dry_run_rc": dry.returncode, "dry_run": dry.stdout[-1500:], "rc": proc.returncode,
            "seconds": round(time.monotonic() - t0, 1), "steps": [m["step"] for m in metrics],
            "step_s": [round(m["time/step"], 2) for m in metrics], "reward": [m.get("reward/mean") for m in metrics],
            "final_saved": (rdir / "checkpoints" / "final" / "config.json").is_file()}


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--small", action="store_true", help="a tiny model (the CPU smoke run)")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: tests,inference,sync,mfu,run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    from areal_lite.utils.net import free_port

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    report: dict = {"environment": environment(args.device), "date": time.strftime("%Y-%m-%d %H:%M")}
    t_all = time.monotonic()

    def step(name: str, fn) -> None:
        if name in skip:
            return
        log(f"{name} ...")
        t0 = time.monotonic()
        try:
            report[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed step must not hide the others' figures
            report[name] = {"error": f"{type(e).__name__}: {e}"}
        log(f"{name}: {time.monotonic() - t0:.1f}s")
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model", SMALL if args.small else QWEN2_05B)
        if args.device == "cuda":
            step("tests", lambda: gpu_tests(out))
        step("inference", lambda: inference(model, args.device, args.small, out))
        step("sync", lambda: weight_sync(model, args.device, args.small, out))
        step("mfu", lambda: trainer_mfu(model, args.device, args.small))
        if args.device == "cuda":
            step("run", lambda: colocated_run(model, out))
    report["seconds"] = round(time.monotonic() - t_all, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=1, default=str)[-6000:])
    failed = [k for k, v in report.items() if isinstance(v, dict) and ("error" in v or v.get("rc", 0) != 0)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
