"""Every GPU recipe planned on one GPU (colocated), one 8-GPU node and two 8-GPU nodes, by the local, Ray
and Slurm launchers' `--dry-run` (nothing starts, no GPU needed): every trainer rank has a GPU of its own (or,
colocated, exactly the server's), servers never share a GPU, and with distributed weight sync every
server rank holds a distinct rank of the weight-update group, 1 .. world-1. Impossible allocations exit 2
with one line (tests/launcher/test_dry_run.py)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tests.launcher.test_dry_run import BLOCK

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.name for p in (REPO / "examples" / "math").glob("gsm8k_*.yaml")
                 if not p.stem.endswith(("_cpu", "_1gpu")))
ENTRY = str(REPO / "examples" / "math" / "gsm8k_drgrpo.py")
LAYOUTS = {
    "1gpu_colocated": ["cluster.n_gpus_per_node=1", "allocation.colocate=true", "allocation.inference.num_servers=1",
                       "allocation.trainer.nproc_per_node=1", "allocation.rollout.num_workers=1"],
    "1x8": [],
    "2x8": ["cluster.n_nodes=2", "cluster.bind_host=0.0.0.0", "cluster.n_cpus_per_node=64",
            "allocation.inference.num_servers=4", "allocation.inference.tp_size=2",
            "allocation.trainer.nproc_per_node=8"],
}


def plan_of(module: str, recipe: str, layout: str, tmp_path) -> dict[str, dict]:
    import importlib

    main = importlib.import_module(module).main
    # Distributed weight sync where it can run: NCCL refuses two ranks of one group on one GPU (colocated).
    mode = "disk" if layout.endswith("colocated") else "distributed"
    argv = [ENTRY, "--config", str(REPO / "examples" / "math" / recipe), f"cluster.fileroot={tmp_path}",
            f"actor.weight_update_mode={mode}", *LAYOUTS[layout], "--dry-run"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    text = out.getvalue()
    procs = {}
    for block in text.split("\n[")[1:]:
        block = "[" + block
        m = BLOCK.match(block)
        if m is None:
            continue
        name, role, host, devices = m.group(1, 2, 3, 4)
        ranks = block.split("weight_ranks=")[1].split()[0] if "weight_ranks=" in block.split("\n")[0] else ""
        procs[name] = {"role": role, "host": host, "devices": [] if devices == "-" else devices.split(","),
                       "weight_ranks": [int(r) for r in ranks.split(",")] if ranks else []}
    assert procs, text
    return procs


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("module", ["areal_lite.launcher.local", "areal_lite.launcher.ray", "areal_lite.launcher.slurm"])
def test_recipe_placement(module, recipe, layout, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if module.endswith("local") and layout == "2x8":
        pytest.skip("the local launcher runs on one machine")
    procs = plan_of(module, recipe, layout, tmp_path)
    servers = [p for p in procs.values() if p["role"] == "server"]
    trainers = [p for p in procs.values() if p["role"] == "trainer"]
    used = {}
    for s in servers:
        assert s["devices"], s
        for d in s["devices"]:
            assert (s["host"], d) not in used, "two servers on one GPU"
            used[(s["host"], d)] = "server"
    trainer_gpus = [(t["host"], d) for t in trainers for d in t["devices"]]
    assert len(trainer_gpus) == len(set(trainer_gpus))
    ranks_per_node = {"1gpu_colocated": 1, "1x8": 4, "2x8": 8}[layout]
    assert all(len(t["devices"]) == ranks_per_node for t in trainers)  # a GPU for every rank
    if layout == "1gpu_colocated":
        assert set(trainer_gpus) == set(used)  # server and trainer share the one GPU
    else:
        assert not set(trainer_gpus) & set(used)
    if layout.endswith("colocated"):
        return
    ranks = sorted(r for s in servers for r in s["weight_ranks"])
    assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) == sum(len(s["devices"]) for s in servers)


def test_the_one_gpu_recipe_shares_its_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    from areal_lite.launcher.local import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([ENTRY, "--config", str(REPO / "examples" / "math" / "gsm8k_drgrpo_1gpu.yaml"),
                     f"cluster.fileroot={tmp_path}", "--dry-run"]) == 0
    text = out.getvalue()
    assert "[server0] role=server host=localhost devices=0" in text
    assert "[trainer] role=trainer host=localhost devices=0" in text
    assert "--mem-fraction-static 0.4" in text and "--dtype bfloat16" in text
