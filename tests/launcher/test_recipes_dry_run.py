"""The GSM8K recipes each plan on 1 node × 8 GPUs (what each changes: tests/config/test_recipes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from areal_lite.config import load_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "examples" / "math"
ENTRY = RECIPES / "gsm8k_drgrpo.py"
BUDGET = 1024  # gconfig.max_new_tokens of the recipes

# Which keys each recipe changes (the algorithm preset) is pinned by tests/config/test_recipes.py.
ALL = ["gsm8k_grpo.yaml", "gsm8k_drgrpo.yaml", "gsm8k_drgrpo_soft.yaml", "gsm8k_dapo.yaml"]


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("synthetic", "env"):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def loaded(name: str) -> dict:
    return flat(asdict(load_config(["--config", str(RECIPES / name)])))


def test_grpo_base_is_grpo():
    base = loaded("gsm8k_grpo.yaml")
    assert base["actor.adv_norm.mean_level"] == "group" and base["actor.adv_norm.std_level"] == "group"
    assert base["actor.loss_reduction"] == "seq_mean_token_mean"
    assert base["gconfig.max_new_tokens"] == BUDGET and base["allocation.inference.backend"] == "sglang"
    assert base["actor.path"] == "Qwen/Qwen2.5-1.5B-Instruct" and base["train_dataset.path"] == "openai/gsm8k"


def _dry_run(module: str, name: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run(
        [sys.executable, "-m", module, str(ENTRY), "--config", str(RECIPES / name),
         f"cluster.fileroot={tmp_path / 'runs'}", "--dry-run"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )


@pytest.mark.parametrize("name", ALL)
def test_local_dry_run_one_node_eight_gpus(name, tmp_path):
    proc = _dry_run("areal_lite.launcher.local", name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "4 server(s), 1 trainer node(s), 4 rollout worker(s)" in out
    for i in range(4):  # one SGLang server per GPU 0-3, the 4-rank trainer on GPUs 4-7
        assert f"[server{i}] role=server host=localhost devices={i}" in out
    assert "[trainer] role=trainer host=localhost devices=4,5,6,7" in out
    assert out.count("sglang.launch_server") == 4 and "--nproc-per-node 4" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("name", ALL)
def test_slurm_dry_run_one_node_eight_gpus(name, tmp_path):
    if not (REPO / "areal_lite" / "launcher" / "slurm.py").is_file():
        pytest.skip("no Slurm launcher in this checkout")
    proc = _dry_run("areal_lite.launcher.slurm", name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "#SBATCH --nodes=1" in out and "#SBATCH --gres=gpu:8" in out
    assert out.count("sglang.launch_server") >= 4 and "--nproc-per-node 4" in out
    assert not (tmp_path / "runs").exists()


def test_cpu_quickstart_config_dry_run(tmp_path):
    proc = _dry_run("areal_lite.launcher.local", "gsm8k_drgrpo_cpu.yaml", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "launch_server" in proc.stdout and "2 server(s), 1 trainer node(s), 1 rollout worker(s)" in proc.stdout
    cfg = loaded("gsm8k_drgrpo_cpu.yaml")
    assert cfg["actor.adv_norm.std_level"] == "none" and cfg["actor.loss_reduction"] == "seq_mean_token_sum_norm"
    assert cfg["prepare.model"] == "tiny" and cfg["prepare.sft.enabled"] and cfg["evaluator.freq_steps"] > 0
