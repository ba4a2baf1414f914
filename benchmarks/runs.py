"""Shared harness of the system benchmarks: real runs through the local launcher, summarised from metrics.

Every run is `python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py --config X.yaml` in a
subprocess (real server, rollout worker(s), controller, FSDP trainer, weight sync), and everything
reported is computed from the run's `metrics.jsonl`: each step logs its phase times (`time/*`),
cumulative trainer counters (`time/elapsed`, `time/fwd_bwd_total`, `time/optimizer_total`) and the
inference servers' cumulative counters from `/get_server_info` (`server/busy_time_s`,
`server/paused_time_s`, `server/prefill_time_s`, `server/decode_time_s`, `server/queue_time_s`, ...).
Windows exclude the first `warmup` steps (the pipeline filling up, first-call allocations).

The workload: the tiny random-initialised Qwen2 model the launcher prepares, with extra stop tokens
(`gconfig.stop_token_ids`) so that an answer ends with probability ≈ (stops + 1) / vocab per token:
a geometric length distribution with a long tail (the longest of a batch is several times the
mean) cut at `max_new_tokens`, as reasoning answers are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "examples" / "math" / "gsm8k_drgrpo.py"
CPU_CONFIG = REPO / "examples" / "math" / "gsm8k_drgrpo_cpu.yaml"


@dataclass
class Workload:
    """The knobs the benchmarks vary; everything else comes from the CPU example config."""

    steps: int = 12
    batch_size: int = 8  # prompts per step
    n_samples: int = 4  # answers per prompt
    max_new_tokens: int = 256
    stop_tokens: int = 10  # extra stop ids → mean answer ≈ vocab / (stop_tokens + 1) tokens
    num_workers: int = 1
    eta: int = 2  # rollout.max_head_offpolicyness
    hidden_size: int = 128
    num_layers: int = 4
    seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # further config overrides (nested dict)

    def label(self) -> str:
        return (f"eta{self.eta}-b{self.batch_size}x{self.n_samples}-len{self.max_new_tokens}"
                f"-stop{self.stop_tokens}-w{self.num_workers}")


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Everything the figures depend on is pinned here (not read from the example config, which may change).
PINNED = {
    "total_train_epochs": 1,
    "train_dataset": {"path": "synthetic:arith", "max_prompt_len": 192, "prompt_template": "plain"},
    "valid_dataset": {"path": "synthetic:arith", "split": "test", "max_prompt_len": 192, "prompt_template": "plain"},
    "actor": {"optimizer": {"lr": 1.0e-3, "weight_decay": 0.0}, "mb_spec": {"max_tokens_per_mb": 4096},
              "adv_norm": {"mean_level": "group", "std_level": "none"}, "loss_reduction": "seq_mean_token_sum_norm",
              "use_decoupled_loss": True, "behav_weight_cap": 5.0, "mask_truncated_reward": False},
    "prepare": {"tiny": {"num_attention_heads": 4, "num_key_value_heads": 2}},
}


def build_config(w: Workload, *, fileroot: Path, model_dir: Path, trial: str) -> dict:
    base = deep_merge(yaml.safe_load(CPU_CONFIG.read_text()), PINNED)
    over = {
        "experiment_name": "bench",
        "trial_name": trial,
        "seed": w.seed,
        "total_train_steps": w.steps,
        "cluster": {"fileroot": str(fileroot)},
        "allocation": {"device": "cpu", "inference": {"backend": "embedded", "num_servers": 1},
                       "rollout": {"num_workers": w.num_workers}, "trainer": {"nnodes": 1, "nproc_per_node": 1}},
        "prepare": {"model": "tiny", "sft": {"enabled": False},
                    "tiny": {"hidden_size": w.hidden_size, "num_hidden_layers": w.num_layers,
                             "intermediate_size": 2 * w.hidden_size, "max_position_embeddings": 1024}},
        "train_dataset": {"batch_size": w.batch_size, "synthetic": {"num_records": 4096}},
        "gconfig": {"n_samples": w.n_samples, "max_new_tokens": w.max_new_tokens, "temperature": 1.0,
                    # Byte tokens 40.. (printable ASCII); never the digits the reward reads.
                    "stop_token_ids": [i for i in range(40, 40 + w.stop_tokens)]},
        "rollout": {"max_head_offpolicyness": w.eta},
        "actor": {"path": str(model_dir)},
        "server": {"context_length": 1024, "max_running_requests": 256},
        "saver": {"save_final": False},
        "evaluator": {"freq_steps": 0},
        "stats_logger": {"wandb": {"mode": "disabled"}},
    }
    return deep_merge(deep_merge(base, over), w.extra)


@dataclass
class RunResult:
    label: str
    run_dir: Path
    returncode: int
    wall_s: float  # the launcher process, start to exit (includes start-up)
    metrics: list[dict]
    log_tail: str = ""
    loadavg: tuple[float, float] = (0.0, 0.0)  # the machine's 1-minute load average at start and end
    cpu_window: dict[str, float] = field(default_factory=dict)  # CPU cores used per role over the window

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.metrics)


def _role(proc) -> str:
    """server | trainer | worker | reward | launcher, from a process of the run's tree."""
    cmd = " ".join(proc.cmdline())
    if "launch_server" in cmd:
        return "server"
    if "multiprocessing" in cmd:
        return "reward"  # the reward pool's processes (children of a worker)
    if "torch.distributed.run" in cmd or "areal_lite.launcher" in cmd:
        return "launcher"
    return "worker" if proc.environ().get("AREAL_LITE_ROLE") == "rollout" else "trainer"


class CpuSampler:
    """CPU seconds used by each role of a run's process tree, sampled while it runs (psutil)."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[int, tuple[str, float]] = {}  # pid → (role, latest cpu seconds)

    def sample(self) -> dict[str, float]:
        import psutil

        try:
            procs = self.root.children(recursive=True)
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                t = p.cpu_times()
                role = self.seen[p.pid][0] if p.pid in self.seen else _role(p)
                self.seen[p.pid] = (role, t.user + t.system)
            except psutil.Error:  # exited between listing and reading
                continue
        totals: dict[str, float] = {}
        for role, cpu in self.seen.values():
            totals[role] = totals.get(role, 0.0) + cpu
        return totals


def launch(w: Workload, *, root: Path, model_dir: Path, trial: str, timeout: float = 1800,
           warmup: int = 2) -> RunResult:
    """One real run through the local launcher; returns its metrics and the CPU each role used.

    CPU seconds per role are sampled twice a second; `cpu_window` holds the cores each role used from
    the end of step `warmup - 1` (or the first step seen after it) to the end of the last step.
    """
    cfg = build_config(w, fileroot=root / "runs", model_dir=model_dir, trial=trial)
    cfg_path = root / f"{trial}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(cfg))
    rdir = root / "runs" / "bench" / trial
    mpath = rdir / "metrics.jsonl"
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    log_path = root / f"{trial}.launcher.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "areal_lite.launcher.local", str(ENTRY), "--config", str(cfg_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        sampler = CpuSampler(proc.pid)
        marks: dict[int, dict[str, float]] = {}  # steps logged → CPU totals at that moment
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                break
            totals = sampler.sample()
            n = _count_lines(mpath)
            if n not in marks:
                marks[n] = totals
            time.sleep(0.5)
        rc = proc.wait()
    wall = time.monotonic() - t0
    metrics = [json.loads(line) for line in mpath.read_text().splitlines() if line.strip()] if mpath.is_file() else []
    cpu_window: dict[str, float] = {}
    first = min((n for n in marks if warmup <= n < len(metrics)), default=None)
    if first is not None and len(metrics) in marks:
        a, b = marks[first], marks[len(metrics)]
        span = metrics[-1].get("time/elapsed", 0.0) - (metrics[first - 1].get("time/elapsed", 0.0) if first else 0.0)
        if span > 0:
            cpu_window = {role: (b.get(role, 0.0) - a.get(role, 0.0)) / span for role in b}
    out = log_path.read_text(errors="replace")
    return RunResult(w.label(), rdir, rc, wall, metrics, "" if rc == 0 else out[-3000:], (load0, os.getloadavg()[0]),
                     cpu_window)


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _delta(metrics: list[dict], key: str, warmup: int) -> float | None:
    """Increase of a cumulative counter from the end of step `warmup - 1` to the end of the last step."""
    if not metrics or key not in metrics[-1]:
        return None
    start = metrics[warmup - 1].get(key, 0.0) if warmup > 0 else 0.0
    return float(metrics[-1][key]) - float(start)


def summarize(metrics: list[dict], warmup: int = 2, cpu_window: dict[str, float] | None = None) -> dict[str, Any]:
    """The figures of one run over steps [warmup, K): wall, throughput, utilisations, staleness, reward."""
    if not metrics:
        return {}
    warmup = min(warmup, max(0, len(metrics) - 1))
    win = metrics[warmup:]

    def total(key: str) -> float:
        return float(sum(m.get(key, 0.0) for m in win))

    wall = _delta(metrics, "time/elapsed", warmup)
    if wall is None:
        wall = total("time/step")
    tokens = sum(m.get("throughput/trained_tokens_per_s", 0.0) * m.get("time/step", 0.0) for m in win)
    gen_tokens = sum(m.get("throughput/trained_gen_tokens_per_s", 0.0) * m.get("time/step", 0.0) for m in win)
    step_sum = total("time/step")
    wait = total("time/wait_data")
    out: dict[str, Any] = {
        "steps": len(metrics),
        "window_steps": len(win),
        "wall_s": wall,
        "wall_all_steps_s": _delta(metrics, "time/elapsed", 0) or float(sum(m.get("time/step", 0.0) for m in metrics)),
        "trained_tokens": tokens,
        "trained_tokens_per_s": tokens / max(wall, 1e-9),
        "trained_gen_tokens_per_s": gen_tokens / max(wall, 1e-9),
        "step_s_mean": step_sum / len(win),
        "trainer_util": 1.0 - wait / max(step_sum, 1e-9),
        "staleness_mean": sum(m.get("staleness/mean", 0.0) for m in win) / len(win),
        "staleness_max": max(m.get("staleness/max", 0.0) for m in win),
        "reward_first": metrics[0].get("reward/mean"),
        "reward_final": sum(m.get("reward/mean", 0.0) for m in metrics[-3:]) / len(metrics[-3:]),
        "gen_len_mean": sum(m.get("len/gen_mean", 0.0) for m in win) / len(win),
        "gen_len_max": max(m.get("len/gen_max", 0.0) for m in win),
        "truncated_frac": sum(m.get("len/truncated_frac", 0.0) for m in win) / len(win),
    }
    # Trainer phases, seconds per step (means over the window).
    for key in ("wait_data", "prox_logp", "advantages", "train", "weight_sync", "weight_write", "weight_pause",
                "save", "recover_checkpoint"):
        out[f"phase_{key}_s"] = total(f"time/{key}") / len(win)
    for key in ("fwd_bwd", "optimizer"):
        d = _delta(metrics, f"time/{key}_total", warmup)
        out[f"phase_{key}_s"] = None if d is None else d / len(win)
    # Servers: fractions of the window's wall time (summed over servers, divided by their number).
    uptime = _delta(metrics, "server/uptime_s", warmup)
    if uptime:
        for key in ("busy_time_s", "paused_time_s", "prefill_time_s", "decode_time_s"):
            d = _delta(metrics, f"server/{key}", warmup)
            out[f"server_{key[:-7]}_frac"] = None if d is None else d / uptime
        admitted = _delta(metrics, "server/num_admitted", warmup) or 0.0
        q = _delta(metrics, "server/queue_time_s", warmup)
        out["server_queue_s_per_request"] = None if q is None or not admitted else q / admitted
        out["server_requests"] = admitted
        for key in ("prefill_time_s", "decode_time_s"):
            d = _delta(metrics, f"server/{key}", warmup)
            out[f"server_{key[:-7]}_s_per_step"] = None if d is None else d / len(win)
    threads = [m["perf/trainer_threads"] for m in win if "perf/trainer_threads" in m]
    out["trainer_threads_mean"] = sum(threads) / len(threads) if threads else None
    # CPU cores each role used over the window (a role below 1.0 while busy was starved by others).
    for role, cores in (cpu_window or {}).items():
        out[f"cpu_cores_{role}"] = cores
    # Rollout latencies as the worker saw them (means over the trained samples).
    for key in ("gen_latency_s", "reward_s", "buffer_wait_s"):
        vals = [m[f"rollout/{key}"] for m in win if f"rollout/{key}" in m]
        out[f"rollout_{key}"] = sum(vals) / len(vals) if vals else None
    return out


def machine() -> dict[str, Any]:
    """The machine the figures come from (with the caveat that it may be shared)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem_gib, "gpu": gpu,
            "loadavg_at_start": load, "python": sys.version.split()[0]}


def fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
