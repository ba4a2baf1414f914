"""Helpers for end-to-end runs through the real launchers (real processes, sockets, HTTP, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "examples" / "math" / "gsm8k_drgrpo.py"

# A run small enough for seconds per step on 2 cores: tiny model, short answers, small batches.
SMALL = {
    "experiment_name": "e2e",
    "trial_name": "t0",
    "seed": 1,
    "allocation": {"device": "cpu", "inference": {"num_servers": 1}, "rollout": {"num_workers": 1},
                   "trainer": {"nproc_per_node": 1}},
    "train_dataset": {"path": "synthetic:arith", "batch_size": 4, "max_prompt_len": 128,
                      "synthetic": {"num_records": 64}},
    "valid_dataset": {"path": "synthetic:arith", "split": "test", "max_prompt_len": 128,
                      "synthetic": {"num_records": 16}},
    "gconfig": {"n_samples": 2, "max_new_tokens": 16},
    "rollout": {"max_head_offpolicyness": 1, "heartbeat_s": 0.5, "worker_timeout_s": 3.0},
    "actor": {"optimizer": {"lr": 1e-3}, "mb_spec": {"max_tokens_per_mb": 1024}},
    "server": {"context_length": 256, "max_running_requests": 32},
    "saver": {"save_final": False},
}


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(tmp_path: Path, model_dir: Path, extra: dict | None = None) -> Path:
    cfg = deep_merge(SMALL, {"cluster": {"fileroot": str(tmp_path / "runs")}, "actor": {"path": str(model_dir)}})
    cfg = deep_merge(cfg, extra or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(module: str, config: Path, *overrides: str, timeout: float = 300, env: dict | None = None,
           entry: Path = ENTRY) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, str(entry), "--config", str(config), *overrides],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def run_dir(tmp_path: Path, experiment: str = "e2e", trial: str = "t0") -> Path:
    return tmp_path / "runs" / experiment / trial


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_tails(rdir: Path, lines: int = 25) -> str:
    """The last `lines` lines of every process log of the run directory `rdir` ("" when it has none)."""
    logs = rdir / "logs"
    if not logs.is_dir():
        return ""
    return "".join(f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                   for log in sorted(logs.iterdir()))


def explain(proc: subprocess.CompletedProcess, rdir: Path) -> str:
    """Launcher output plus the tails of every log, for assertion messages."""
    return "\n".join([f"exit {proc.returncode}", proc.stdout[-3000:], proc.stderr[-3000:]]) + log_tails(rdir)


@pytest.fixture
def small_config(tmp_path, tiny_model_dir):
    return lambda extra=None: write_config(tmp_path, tiny_model_dir, extra)
