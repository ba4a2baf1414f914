"""The update does not depend on the parallel layout: 1 vs 2 gloo ranks, different micro-batch budgets,
packed vs padded micro-batches, sdpa vs varlen attention (with shared prompts) give the same parameters
after one PPO step (issue 6), also with the statistics that need the whole minibatch (top-entropy
quantile, Clip-Cov's token draw; issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("layout_update_worker.py")
REDUCTIONS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
CASES = [*REDUCTIONS, "separate_pass", "whole_batch"]
LAYOUTS = ("100000r40-w1", "64-w1", "pad96-w1", "v64-w1", "64r40-w2", "pad128-w2", "v64-w2")  # against 100000-w1


def _torchrun(nproc: int, model: Path, out: Path, budgets: list[str]) -> None:
    port = 29400 + os.getpid() % 500 + nproc
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={port}",
         str(WORKER), str(model), str(out), ",".join(budgets), ",".join(CASES)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.timeout(900)
def test_update_is_layout_invariant(tiny_model_dir, tmp_path):
    # budgets: one micro-batch, one row, for everything; the same in packed rows of 40 tokens (several
    # sequences per row, row tails padded); 64 tokens (several packed micro-batches); padded rows; and
    # varlen attention (actor.attn_impl) over several micro-batches of one row each, with shared prompts.
    _torchrun(1, tiny_model_dir, tmp_path, ["100000", "100000r40", "64", "pad96", "v64"])
    _torchrun(2, tiny_model_dir, tmp_path, ["64r40", "pad128", "v64"])
    stats = {**json.loads((tmp_path / "stats-w1.json").read_text()),
             **json.loads((tmp_path / "stats-w2.json").read_text())}
    for reduction in CASES:
        ref = load_file(tmp_path / f"{reduction}-100000-w1.safetensors")
        scale = max(float(t.abs().max()) for t in ref.values())
        assert scale > 1e-6, "the update must move the parameters"
        for layout in LAYOUTS:
            other = load_file(tmp_path / f"{reduction}-{layout}.safetensors")
            worst = max(float((other[k] - ref[k]).abs().max()) for k in ref)
            assert worst <= 1e-5 * scale, f"{reduction} {layout}: max |Δ diff| {worst:.3e} vs scale {scale:.3e}"
            assert stats[f"{reduction}-{layout}"]["loss"] == pytest.approx(
                stats[f"{reduction}-100000-w1"]["loss"], rel=1e-5, abs=1e-7)
    # The whole-minibatch statistics acted, the same in every layout: half the tokens by entropy, 10% dropped.
    wb = stats["whole_batch-100000-w1"]
    assert 0.4 < wb["ppo/top_entropy_kept_frac"] < 0.6 and 0.05 < wb["ppo/cov_dropped_frac"] < 0.15
    for layout in LAYOUTS:
        for key in ("ppo/top_entropy_kept_frac", "ppo/cov_dropped_frac", "seq_is/weight_mean", "ppo/entropy"):
            assert stats[f"whole_batch-{layout}"][key] == pytest.approx(wb[key], rel=1e-5), (layout, key)
    # The proximal log-probs taken from the update's own forward (the default with one minibatch) give the
    # update of a separate no-grad pass: the same weights, so the same values up to float rounding.
    for layout in ("100000-w1", *LAYOUTS):
        fused = load_file(tmp_path / f"seq_mean_token_mean-{layout}.safetensors")
        separate = load_file(tmp_path / f"separate_pass-{layout}.safetensors")
        scale = max(float(t.abs().max()) for t in separate.values())
        worst = max(float((fused[k] - separate[k]).abs().max()) for k in fused)
        assert worst <= 1e-5 * scale, f"{layout}: fused vs separate proximal pass differ by {worst:.3e} ({scale:.3e})"
        assert stats[f"separate_pass-{layout}"]["ppo/behav_capped_frac"] == stats[
            f"seq_mean_token_mean-{layout}"]["ppo/behav_capped_frac"]
    # Different reductions really are different updates (the test could not pass vacuously).
    a = load_file(tmp_path / "token_mean-100000-w1.safetensors")
    b = load_file(tmp_path / "seq_mean_token_sum_norm-100000-w1.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-3 * max(float(t.abs().max()) for t in a.values())
    # Packed micro-batches carry no padding; padded rows do.
    assert stats["token_mean-64-w1"]["padding_waste"] == 0.0
    assert stats["token_mean-v64-w1"]["padding_waste"] == stats["token_mean-v64-w2"]["padding_waste"] == 0.0
    # ... and with varlen a group's samples share their prompt: the model runs fewer tokens than the sequences hold.
    assert stats["token_mean-v64-w1"]["model_tokens_per_seq_token"] < 0.9
    assert stats["token_mean-100000-w1"]["model_tokens_per_seq_token"] == 1.0
    assert stats["token_mean-pad96-w1"]["padding_waste"] > 0.0
    # Packed rows pad only their tails: less waste than one padded row per sequence.
    assert 0.0 < stats["token_mean-100000r40-w1"]["padding_waste"] < stats["token_mean-pad96-w1"]["padding_waste"]
