"""The GPU device check's code on a CPU (`--device cpu --small`): every step it runs on a GPU except
the GPU test tier and the colocated launcher run, with a tiny model. Seconds, no speed asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_gpu_check_runs_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path), "--device", "cpu",
                           "--small"], capture_output=True, text=True, cwd=REPO, timeout=280)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0, json.dumps(report, indent=1) + proc.stderr[-3000:]
    assert report["inference"]["tokens_per_s"] > 0 and report["inference"]["pause_continue_http"] == [200, 200]
    for mode in ("disk", "distributed"):
        sync = report["sync"][mode]
        assert sync["version"] == str(1 if mode == "disk" else 2)
        # fp32 serving on CPU: the server's log-probs are the trainer's
        assert sync["logp_max_abs_diff"] < 1e-3, sync
    assert report["sync"]["distributed"]["bytes"] > 0
    for variant in ("without_gc", "with_gc", "without_gc_varlen"):
        assert report["mfu"][variant]["tokens_per_s"] > 0
    assert report["mfu"]["without_gc_varlen"]["attn_impl"] == "areal_varlen"
