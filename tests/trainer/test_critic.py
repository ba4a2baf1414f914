"""The critic of adv_estimator=gae (trainer/critic.py) on a tiny model, 1 and 2 gloo ranks under torchrun:
its values are plain transformers' AutoModelForTokenClassification values at the log-probs' alignment,
its update is the same in any layout, it learns its targets, and the recover checkpoint restores it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("critic_worker.py")


def _torchrun(nproc: int, model: Path, out: Path) -> None:
    port = 29900 + os.getpid() % 500 + nproc
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={port}",
         str(WORKER), str(model), str(out)],
        capture_output=True, text=True, timeout=500, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("critic")
    _torchrun(1, tiny_model_dir, out)
    _torchrun(2, tiny_model_dir, out)
    return out


@pytest.mark.timeout(900)
def test_values_are_the_token_classification_models_at_the_logprob_alignment(runs):
    facts = json.loads((runs / "w1.json").read_text())
    assert facts["head_keys"] == ["score.bias", "score.weight"]  # a scalar head on the policy's backbone
    assert facts["value_scale"] > 1e-3
    assert facts["max_abs_vs_transformers"] <= 1e-5 * max(facts["value_scale"], 1.0)


@pytest.mark.timeout(900)
def test_critic_update_is_layout_invariant(runs):
    ref = load_file(runs / "packed-w1.safetensors")
    scale = max(float(v.abs().max()) for k, v in ref.items() if k.startswith("delta."))
    assert scale > 1e-6, "the update must move the value model"
    for layout in ("padded-w1", "packed-w2", "padded-w2"):
        other = load_file(runs / f"{layout}.safetensors")
        assert float((other["values"] - ref["values"]).abs().max()) <= 1e-5 * float(ref["values"].abs().max())
        worst = max(float((other[k] - ref[k]).abs().max()) for k in ref if k.startswith("delta."))
        assert worst <= 1e-5 * scale, f"{layout}: max |Δ diff| {worst:.3e} vs scale {scale:.3e}"
    facts = [json.loads((runs / f"w{w}.json").read_text()) for w in (1, 2)]
    base = facts[0]["packed_stats"]
    for f in facts:
        for layout in ("packed_stats", "padded_stats"):
            for key in ("critic/loss", "critic/mse", "critic/clip_frac", "critic/value_mean"):
                assert f[layout][key] == pytest.approx(base[key], rel=1e-5, abs=1e-7), (layout, key)
    assert base["critic/loss"] > 0 and base["critic/mse"] > 0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("world", [1, 2])
def test_critic_learns_and_the_recover_checkpoint_restores_it(runs, world):
    f = json.loads((runs / f"w{world}.json").read_text())
    mse = f["mse"]
    assert mse[-1] < 0.5 * mse[0], mse  # the value model fits its targets (±1)
    assert f["trainer_state"] == {"step": 7}
    assert f["moved_by"] > 1e-3 and f["next_step_moved"] > 1e-3  # the later updates did move the critic
    assert f["restored_error"] <= 1e-6  # the checkpoint brought the critic's weights back ...
    assert f["next_step_error"] <= 1e-5 * f["next_step_moved"] + 1e-7  # ... and its Adam moments
    assert f["actor_restored_error"] == 0.0  # ... and the policy's weights beside it
