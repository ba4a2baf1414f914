"""The engine benchmark runs end to end at a tiny size (its --quick mode, as the suite runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_engine_throughput_quick(tmp_path):
    out = tmp_path / "engine.json"
    cmd = [sys.executable, "-m", "benchmarks.engine_throughput", "--quick", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio median" in proc.stdout
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["model"] == "smoke" and run["threads"] == 1 and len(run["repetitions"]) == 2
    # Alternating order, and both paths produced every requested token.
    assert [r["first"] for r in run["repetitions"]] == ["engine", "generate"]
    assert run["useful_tokens"] == report["workload"]["num_prompts"] * report["workload"]["max_new_tokens"]
    # Both paths report the log-probs of a plain forward (the comparison is like for like).
    assert max(run["logprob_max_abs_error"].values()) < 1e-4
    assert run["ratio_min"] <= run["ratio_median"] <= run["ratio_max"]
    assert 0 < run["linear_floor_s"] < run["engine"]["wall_s"]
    # The shape the benchmark suite reads.
    assert report["results"]["engine"]["tokens_per_s"] > 0
    assert report["results"]["generate_padded_batch"]["tokens_per_s"] > 0


def test_engine_throughput_rejects_an_unknown_model():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.engine_throughput", "--models", "huge"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown model 'huge'" in proc.stderr
