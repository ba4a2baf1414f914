"""`python -m areal_lite.tools.ablation --task ...`: the agent tasks pick their entry script and recipes; dry runs
plan six separate runs (CPU) or split the GPUs (GPU recipe); the task table and plot from metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from areal_lite.tools.ablation import TASKS, markdown_table, plot_task_runs, summarize
from areal_lite.tools.plot import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _ablation(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "areal_lite.tools.ablation", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_every_task_has_its_entry_and_recipes():
    for task, files in TASKS.items():
        assert all((REPO / f).is_file() for f in files), task


@pytest.mark.timeout(300)
def test_task_dry_runs(tmp_path):
    cpu = _ablation("--task", "frozenlake", "--steps", "3", "--out", str(tmp_path / "cpu"), "--dry-run")
    assert cpu.returncode == 0, cpu.stderr
    dirs = [line.split(": ", 1)[1] for line in cpu.stdout.splitlines() if line.startswith("run directory: ")]
    assert len(set(dirs)) == 6 and all("agents-ablation" in d for d in dirs)
    assert cpu.stdout.count("examples/agents/train_env.py --config") == 6 * 2  # trainer and worker of each run
    gpu = _ablation("--task", "sokoban", "--gpus", ",".join(map(str, range(16))), "--out", str(tmp_path / "gpu"),
                    "--dry-run", "--only", "drgrpo-all,drgrpo_soft-topk50")
    assert gpu.returncode == 0, gpu.stderr
    assert "CUDA_VISIBLE_DEVICES=8 " in gpu.stdout and "agents-sokoban-ablation" in gpu.stdout
    assert not (tmp_path / "cpu").exists() and not (tmp_path / "gpu").exists()
    bad = _ablation("--task", "frozenlake", "--gpus", "0", "--config", "examples/agents/frozenlake_cpu.yaml",
                    "--dry-run")
    assert bad.returncode == 2 and "--gpus given but the config runs on CPU" in bad.stderr


def test_task_table_and_plot(tmp_path):
    runs = []
    for name, gain in (("grpo-all", -0.4), ("drgrpo_soft-all", 0.4)):
        rdir = tmp_path / name
        rdir.mkdir()
        lines = []
        for s in range(10):
            m = {"step": s, "reward/mean": 0.2 + gain * s / 90, "env/success": 0.5 + gain * s / 9, "time/elapsed": s}
            if name.startswith("drgrpo_soft"):
                m.update({"train/soft_reweight_min": 0.1, "train/soft_reweight_max": 1.0,
                          "train/soft_reweight_mean": 0.5})
            if s == 0:
                m["eval/accuracy_initial"] = 0.5
            if s == 9:
                m["eval/accuracy"] = 0.5 + gain
            lines.append(json.dumps(m))
        (rdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        runs.append({"name": name, "returncode": 0, "wall_s": 30.0, "summary": summarize(str(rdir)), "dir": rdir})
    table = markdown_table(runs).splitlines()
    assert table[0] == ("| variant | exit | reward first → last 10% | success first → last 10% "
                        "| eval success start → end | soft weight min/mean/max | wall s |")
    assert table[2] == "| grpo-all | 0 | 0.200 → 0.160 | 0.500 → 0.100 | 0.500 → 0.100 | - | 30 |"
    assert table[3] == "| drgrpo_soft-all | 0 | 0.200 → 0.240 | 0.500 → 0.900 | 0.500 → 0.900 | 0.10/0.50/1.00 | 30 |"
    out = plot_task_runs([(r["name"], read_metrics(str(r["dir"]))) for r in runs], str(tmp_path / "a.png"), title="t")
    assert Path(out).read_bytes().startswith(b"\x89PNG")
