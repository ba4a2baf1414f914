"""The log-prob memory benchmark runs end to end at a tiny size and reports both paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_logprob_memory_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks.logprob_memory", "--tokens", "64", "--vocab", "1000",
           "--chunk-size", "16", "--device", "cpu", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "peak extra MiB" in proc.stdout
    report = json.loads(out.read_text())
    assert report["config"]["vocab"] == 1000
    by = {(r["path"], r["mode"]): r for r in report["results"]}
    assert set(by) == {("naive", "train"), ("chunked", "train"), ("naive", "no_grad"), ("chunked", "no_grad")}
    # both paths computed the same numbers (bf16 logits, float32 math, 64 tokens)
    for mode in ("train", "no_grad"):
        assert by["naive", mode]["logp_sum"] == pytest.approx(by["chunked", mode]["logp_sum"], rel=1e-5)
        assert by["naive", mode]["entropy_sum"] == pytest.approx(by["chunked", mode]["entropy_sum"], rel=1e-5)
    assert by["naive", "train"]["grad_sum"] == pytest.approx(by["chunked", "train"]["grad_sum"], abs=1e-3)
