"""The transport throughput benchmark runs end to end in seconds and reports every path (harness check only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_transport_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks.transport_throughput", "--sizes", "64K,1M", "--rounds", "1",
           "--mb-per-trial", "4", "--hmac", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "vs raw" in proc.stdout
    report = json.loads(out.read_text())
    got = {(r["size"], r["mode"]): r for r in report["results"]}
    assert set(got) == {(s, m) for s in (64 << 10, 1 << 20) for m in ("raw", "codec", "codec+hmac")}
    for (size, mode), r in got.items():
        # The same payload on every path: the group's arrays (about `size`) plus its msgpack header.
        assert size * 0.99 < r["payload_bytes"] < size + 4096
        assert r["payload_bytes"] == got[size, "raw"]["payload_bytes"]
        assert r["median_mb_per_s"] > 0 and len(r["mb_per_s"]) == 1
    assert all(got[s, "raw"]["ratio_to_raw"] == 1.0 for s in (64 << 10, 1 << 20))
    assert report["machine"]["cpus"] >= 1 and report["config"]["rounds"] == 1


def test_transport_benchmark_rejects_bad_sizes():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.transport_throughput", "--sizes", "big"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --sizes")
