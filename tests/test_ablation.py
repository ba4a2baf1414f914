"""`python -m areal_lite.tools.ablation`: the six override sets, GPU spreading, dry runs, the table; one real short run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from areal_lite.tools.ablation import Variant, assign_gpus, devices_per_run, markdown_table, run_overrides, summarize, variants
from areal_lite.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
CPU_CFG = str(REPO / "examples" / "math" / "gsm8k_drgrpo_cpu.yaml")
GPU_CFG = str(REPO / "examples" / "math" / "gsm8k_grpo.yaml")


def test_six_variants_resolve_to_the_intended_algorithms(tmp_path):
    vs = variants()
    assert [v.name for v in vs] == ["grpo-all", "grpo-topk50", "drgrpo-all", "drgrpo-topk50",
                                    "drgrpo_soft-all", "drgrpo_soft-topk50"]
    seen = set()
    for v in vs:
        cfg = load_config(["--config", CPU_CFG, *run_overrides(v, experiment="q", out_dir=str(tmp_path), steps=7,
                                                               extra=["seed=3"])])
        a = cfg.actor
        algo = (a.adv_norm.std_level, a.loss_reduction, a.group_filter.soft_reweight, a.group_filter.top_k_ratio)
        seen.add(algo)
        assert algo[0] == ("group" if v.name.startswith("grpo") else "none")
        assert algo[1] == ("seq_mean_token_mean" if v.name.startswith("grpo") else "seq_mean_token_sum_norm")
        assert algo[2] == v.name.startswith("drgrpo_soft")
        assert algo[3] == (0.5 if v.name.endswith("topk50") else 1.0)
        # same seed, budget and model; a run directory of its own
        assert cfg.seed == 3 and cfg.total_train_steps == 7 and a.adv_norm.mean_level == "group"
        assert cfg.trial_name == v.name and cfg.cluster.fileroot == str(tmp_path / "runs")
    assert len(seen) == 6


def test_gpu_spreading():
    gpu_cfg = load_config(["--config", GPU_CFG])
    assert devices_per_run(gpu_cfg) == 8 and devices_per_run(load_config(["--config", CPU_CFG])) == 0
    runs = [Variant(f"v{i}", []) for i in range(6)]
    gpus = [str(i) for i in range(16)]
    assert assign_gpus(runs, gpus, 8) == 2
    assert runs[0].gpus == gpus[:8] and runs[1].gpus == gpus[8:] and runs[2].gpus == gpus[:8]
    assert assign_gpus(runs, gpus[:9], 4) == 2 and set(runs[0].gpus).isdisjoint(runs[1].gpus)
    with pytest.raises(ConfigError):
        assign_gpus(runs, ["0", "1"], 8)
    assert assign_gpus(runs, [], 0) == 0


def _ablation(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "areal_lite.tools.ablation", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.timeout(300)
@pytest.mark.slow  # six launcher dry runs; tests/e2e/test_agents_ablation.py plans six runs in the default tier
def test_dry_run_plans_six_separate_runs(tmp_path):
    out = tmp_path / "abl"
    proc = _ablation("--config", CPU_CFG, "--steps", "2", "--out", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    dirs = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("run directory: ")]
    assert len(dirs) == 6 and len(set(dirs)) == 6
    assert all(d.startswith(str(out / "runs" / "quickstart-ablation")) for d in dirs)
    assert not out.exists()  # nothing written
    gpu = _ablation("--config", GPU_CFG, "--gpus", ",".join(map(str, range(16))), "--out", str(out), "--dry-run",
                    "--only", "grpo-all,grpo-topk50")
    assert gpu.returncode == 0, gpu.stderr
    # the second run's processes see the second half of the GPUs
    assert "CUDA_VISIBLE_DEVICES=8 " in gpu.stdout and "CUDA_VISIBLE_DEVICES=12,13,14,15 " in gpu.stdout


def test_any_presets_can_be_compared(tmp_path):
    vs = variants(["cispo", "gpg"])
    assert [v.name for v in vs] == ["cispo-all", "cispo-topk50", "gpg-all", "gpg-topk50"]
    for v in vs:
        cfg = load_config(["--config", CPU_CFG, *run_overrides(v, experiment="q", out_dir=str(tmp_path), steps=3,
                                                               extra=[])])
        want = load_config(["--config", CPU_CFG, f"algo={v.name.split('-')[0]}"]).actor
        assert cfg.actor.policy_loss == want.policy_loss and cfg.actor.loss_reduction == want.loss_reduction
        assert cfg.actor.group_filter.top_k_ratio == (0.5 if v.name.endswith("topk50") else 1.0)
    assert {load_config(["--config", CPU_CFG, "algo=cispo"]).actor.policy_loss,
            load_config(["--config", CPU_CFG, "algo=gpg"]).actor.policy_loss} == {"cispo", "reinforce"}


@pytest.mark.parametrize("args, message", [
    (["--presets", "cispo,nope"], "algo: no config 'nope' in group 'algo'"),
    (["--only", "ppo"], "--only: unknown variant(s) ppo"),
    (["--gpus", "0,1"], "--gpus given but the config runs on CPU"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["actor.lr=1"], "unknown config key 'actor.lr'"),
])
def test_mistakes_are_one_line_errors(args, message, tmp_path):
    proc = _ablation("--config", CPU_CFG, "--out", str(tmp_path / "x"), *args, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and message in proc.stderr and "\n" not in proc.stderr.strip()


def test_table_from_run_dirs(tmp_path):
    rows = []
    for name, soft in (("drgrpo-all", False), ("drgrpo_soft-all", True)):
        rdir = tmp_path / name
        rdir.mkdir()
        lines = []
        for s in range(10):
            m = {"step": s, "reward/mean": 0.1 * s, "len/gen_mean": 20.0, "train/num_seqs": 64.0, "time/elapsed": s}
            if soft:
                m.update({"train/soft_reweight_min": 0.2, "train/soft_reweight_max": 1.0, "train/soft_reweight_mean": 0.6})
            if s == 9:
                m["eval/accuracy"] = 0.5
            lines.append(json.dumps(m))
        (rdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        rows.append({"name": name, "returncode": 0, "wall_s": 12.0, "summary": summarize(str(rdir))})
    rows.append({"name": "grpo-all", "returncode": 1, "wall_s": 3.0, "summary": summarize(str(tmp_path / "none"))})
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| variant |") and table[1].count("---") == 8
    assert "| drgrpo-all | 0 | 0.900 | +0.900 | 0.500 → 0.500 | 20.0 | - | 12 |" == table[2]
    assert "| 0.20/0.60/1.00 |" in table[3]
    assert table[4].startswith("| grpo-all | 1 | - |")


@pytest.mark.timeout(400)
def test_one_real_soft_reweight_run(tmp_path, tiny_model_dir):
    """The harness end to end on one variant (2 steps, tiny untrained model): table, plot, soft weights logged."""
    from tests.e2e.conftest import write_config

    cfg = write_config(tmp_path / "cfg", tiny_model_dir, {"train_dataset": {"batch_size": 4}})
    out = tmp_path / "abl"
    proc = _ablation("--config", str(cfg), "--steps", "2", "--out", str(out), "--only", "drgrpo_soft-topk50",
                     "gconfig.n_samples=4", timeout=380)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in result] == ["drgrpo_soft-topk50"]
    s = result[0]["summary"]
    assert s["steps"] == 2
    assert 0 <= s["train/soft_reweight_min"] <= s["train/soft_reweight_mean"] <= s["train/soft_reweight_max"] <= 1
    assert s["seqs_per_step"] == 2 * 4  # top-k kept half of the 4 groups of 4 answers
    assert (out / "ablation.png").read_bytes().startswith(b"\x89PNG")
    assert "| drgrpo_soft-topk50 | 0 |" in (out / "ablation.md").read_text()
