"""The packing, weight-sync and kernels benchmarks run end to end at a tiny size (the harness, not the figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.timeout(240)
def test_packing_benchmark_smoke(tmp_path):
    out = tmp_path / "packing.json"
    proc = _run(["benchmarks.packing", "--num-seqs", "16", "--max-len", "160", "--max-tokens-per-mb", "320",
                 "--hidden-size", "32", "--num-layers", "1", "--repeats", "1", "--json", str(out)], 220)
    assert "padding waste" in proc.stdout and "trained tok/s" in proc.stdout
    report = json.loads(out.read_text())
    res = report["results"]
    assert set(res) == {"packed", "packed_one_row", "padded", "varlen", "shared"}
    # One row per micro-batch has no padding; rows as long as the longest sequence pad only their tails.
    assert all(res[name]["padding_waste"] == 0.0 for name in ("packed_one_row", "varlen", "shared"))
    # Shared prompts: the model runs fewer tokens than the sequences hold; every other layout runs them all.
    assert res["shared"]["model_tokens_per_seq_token"] < 1.0 == res["varlen"]["model_tokens_per_seq_token"]
    assert 0.0 <= res["packed"]["padding_waste"] < res["padded"]["padding_waste"] < 1.0
    assert all(r["trained_tokens_per_s"] > 0 and r["microbatches"] >= 1 for r in res.values())
    assert report["workload"]["num_seqs"] == 16 and len(report["runs"]["packed"]) == 1
    assert report["speedup_packed_vs_padded"] == pytest.approx(
        res["packed"]["trained_tokens_per_s"] / res["padded"]["trained_tokens_per_s"])


@pytest.mark.timeout(240)
def test_weight_sync_benchmark_smoke(tmp_path):
    out = tmp_path / "weight_sync.json"
    proc = _run(["benchmarks.weight_sync", "--sizes", "tiny", "--repeats", "1", "--json", str(out)], 220)
    assert "sync s/GB" in proc.stdout
    r = json.loads(out.read_text())["results"]["tiny"]
    assert r["bytes"] == 4 * r["params"]
    for mode in ("disk", "distributed"):
        m = r["modes"][mode]
        assert 0 < m["pause_s"] <= m["total_s"] and m["total_s_per_gb"] > 0
        assert 0 < m["server_paused_s"] <= m["pause_s"] + 0.05
    assert r["modes"]["disk"]["write_s"] > 0


@pytest.mark.timeout(240)
def test_kernels_benchmark_smoke(tmp_path):
    out = tmp_path / "kernels.json"
    proc = _run(["benchmarks.kernels", "--hidden", "32", "--layers", "1", "--num-seqs", "8", "--repeats", "1",
                 "--no-compile", "--json", str(out)], 220)
    assert "speed vs fp32" in proc.stdout
    r = json.loads(out.read_text())
    assert {(x["variant"], x["pass"]) for x in r["rows"]} == {(v, p) for v in ("fp32", "bf16") for p in ("no_grad", "train")}
    fp32 = [x for x in r["rows"] if x["variant"] == "fp32"]
    assert all(x["max_abs_dlogp"] == 0.0 and x["speed_vs_fp32"] == 1.0 for x in fp32)
    bf16 = [x for x in r["rows"] if x["variant"] == "bf16"]
    assert all(0.0 < x["max_abs_dlogp"] < 0.5 and x["s"] > 0 for x in bf16)  # bf16 rounds, but stays close
    assert r["tokens"] > 0 and set(r["cpu"]) >= {"capability", "avx512_bf16", "amx_bf16"}


def test_benchmarks_refuse_bad_arguments():
    for args in (["benchmarks.weight_sync", "--sizes", "huge"],
                 ["benchmarks.packing", "--max-len", "512", "--max-tokens-per-mb", "100"]):
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
