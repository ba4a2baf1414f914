"""The RL update is aligned with supervised learning (issue 8 investigation): on reference solutions,
the trainer's log-probs match a plain transformers forward, and the PPO loss with advantage +1 at
ratio 1 has exactly the SFT gradient (a sign, shift or mask error would break the parallelism)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("rl_alignment_worker.py")


@pytest.mark.timeout(300)
def test_ppo_positive_advantage_gradient_is_sft_gradient(tiny_model_dir, tmp_path):
    port = 29000 + os.getpid() % 400
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, str(WORKER), str(tiny_model_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "alignment.json").read_text())
    assert res["n_microbatches"] >= 2  # the scatter across micro-batches is exercised
    assert res["mask_is_answer"]
    assert res["grad_norm"] > 1e-3  # a real gradient, so the comparisons below mean something
    assert res["max_logp_diff_vs_plain"] < 1e-4
    assert res["cos_sft_vs_plain"] > 0.9999 and res["rel_sft_vs_plain"] < 1e-3
    assert res["cos_ppo_vs_sft"] > 0.9999 and res["rel_ppo_vs_sft"] < 1e-4
