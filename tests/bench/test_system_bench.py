"""Harness checks of the system benchmarks (async vs sync, breakdown, scaling, suite): seconds-long
versions through the real launcher. No speed is asserted: benchmarks are not timed tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import suite
from benchmarks.async_vs_sync import overlap_bound


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    """The suite without components: sync + η=1 runs, their breakdown, scaling with 2 workers."""
    out = tmp_path_factory.mktemp("suite")
    proc = run_module("benchmarks.suite", "--out", str(out), "--quick", "--skip", "components")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "suite.json").read_text()), (out / "suite.md").read_text()


@pytest.mark.timeout(900)
@pytest.mark.slow  # the quick suite runs the system twice (~90 s)
def test_async_vs_sync_figures(quick_suite):
    _, report, md = quick_suite
    avs = report["async_vs_sync"]
    per_eta = avs["per_eta"]
    assert set(per_eta) == {"0", "1"}
    for eta, s in per_eta.items():
        assert s["window_steps"] == 2 and s["trained_tokens"] > 0 and s["wall_s"] > 0
        assert 0.0 < s["server_busy_frac"] <= 1.0 and 0.0 <= s["server_paused_frac"] < 1.0
        assert 0.0 <= s["trainer_util"] <= 1.0
        assert s["server_requests"] > 0 and s["server_decode_s_per_step"] > 0
        assert s["staleness_max"] <= int(eta)  # the bound each run was given
    assert per_eta["0"]["staleness_max"] == 0  # synchronous: every batch from the current weights
    assert per_eta["0"]["phase_wait_data_s"] > 0  # ... and the trainer waited for each one
    cmp = avs["comparison"]
    assert cmp["best_eta"] == 1
    assert 1.0 <= cmp["overlap"]["bound"] <= 2.0
    assert set(cmp["targets"]) == {"speedup", "bound", "pause", "reward"}
    assert all(isinstance(t["met"], bool) for t in cmp["targets"].values())
    assert "| sync (η=0) |" in md and "| async η=1 |" in md and "ideal overlap bound" in md
    assert report["machine"]["nproc"] >= 1 and report["command"].startswith("python -m benchmarks.suite")


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_breakdown_and_scaling_sections(quick_suite, tmp_path):
    out, report, md = quick_suite
    train = report["breakdown"]["train"]
    assert set(train) == {"sync (η=0)", "async η=1"}
    for phases in train.values():
        assert phases["forward/backward"] > 0 and phases["step"] > 0
        assert sum(v for k, v in phases.items() if k != "step") == pytest.approx(phases["step"], rel=0.02)
    assert "Training step" in md and "server queueing per request" in md
    rows = report["scaling"]["rows"]
    assert [r["variant"] for r in rows] == ["base", "workers=2"]
    assert rows[0]["run_dir"] == report["async_vs_sync"]["runs"][1]["run_dir"]  # the η=1 run, reused
    assert rows[1]["workload"]["num_workers"] == 2 and rows[1]["summary"]["trained_tokens"] > 0
    assert "| workers=2 |" in md
    # The breakdown CLI tabulates finished runs from their metrics.
    dirs = [r["run_dir"] for r in report["async_vs_sync"]["runs"]]
    proc = run_module("benchmarks.breakdown", "--out", str(tmp_path), "--from", *dirs, "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    bd = json.loads((tmp_path / "breakdown.json").read_text())
    assert set(bd["train"]) == {"eta0-r0", "eta1-r0"}


def test_overlap_bound():
    assert overlap_bound({"phase_wait_data_s": 1.0, "step_s_mean": 2.0})["bound"] == pytest.approx(2.0)
    b = overlap_bound({"phase_wait_data_s": 1.0, "step_s_mean": 4.0})
    assert (b["t_gen_s"], b["t_train_s"], b["bound"]) == (1.0, 3.0, pytest.approx(4 / 3))


@pytest.mark.timeout(300)
def test_components_present_and_absent(tmp_path):
    absent = suite.run_component(suite.Component("benchmarks.no_such_benchmark", "nothing"), tmp_path, True, 60)
    assert absent["status"] == "absent"
    logprob = next(c for c in suite.COMPONENTS if c.module.endswith("logprob_memory"))
    rec = suite.run_component(logprob, tmp_path, True, 240)
    assert rec["status"] == "ok", rec.get("stdout_tail")
    assert "naive" in rec["headline"] and rec["result"]["config"]["tokens"] == 64


@pytest.mark.parametrize("module,args", [
    ("benchmarks.async_vs_sync", ["--out", "x", "--etas", "zero"]),
    ("benchmarks.async_vs_sync", ["--out", "x", "--quick", "--warmup", "5"]),
    ("benchmarks.scaling", ["--out", "x", "--knobs", "colour"]),
    ("benchmarks.suite", ["--out", "x", "--skip", "everything"]),
])
def test_user_mistakes_exit_2(tmp_path, module, args):
    args = [str(tmp_path / a) if a == "x" else a for a in args]
    proc = run_module(module, *args, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
