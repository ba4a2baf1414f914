"""The bandit CPU recipe, shortened, learns: real launcher, real warm start, Dr.GRPO moves the model
from picking either arm to picking the arm with the better mean (Dragon).

Slow (about 3 minutes a seed on the 2-core machine), so not in the default run:
    python -m pytest -q -p no:cacheprovider -m slow tests/e2e/test_agents_learning.py

Same config as the docs' command (examples/agents/bandit_cpu.yaml) with a shorter warm start (640
scripted episodes instead of 1,500), 8 seeds per step instead of 16, 12 steps instead of 30, the
model built in the test's tmp dir, no evaluation. The margin is on the success rate (the share of
episodes that pick Dragon) of the last 3 steps over the first 3. Measured 2026-12-06 (2-core AMD
EPYC, torch 2.13 CPU, shared machine): seed 1 0.615 -> 0.760, seed 2 0.568 -> 0.688, seed 3
0.620 -> 0.812, gains +0.15/+0.12/+0.19; the assertion asks for +0.05, well under the smallest.
The reward is not asserted: with 8 seeds per step Dragon's 1-in-4 payout makes the mean reward of
three steps too noisy for a margin (measured: 0.189 -> 0.102, 0.168 -> 0.170, 0.099 -> 0.236).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import explain, launch, read_jsonl

REPO = Path(__file__).resolve().parents[2]
AGENTS = REPO / "examples" / "agents"
STEPS = 12
MIN_SUCCESS_GAIN = 0.05


@pytest.mark.slow  # minutes per seed: not in CI's default run (`-m slow` runs it)
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shortened_bandit_recipe_learns_the_better_arm(tmp_path, seed):
    rdir = tmp_path / "runs" / "agents" / "bandit-cpu"
    proc = launch(
        "areal_lite.launcher.local", AGENTS / "bandit_cpu.yaml", f"seed={seed}",
        f"cluster.fileroot={tmp_path / 'runs'}", f"actor.path={tmp_path / 'model'}",
        f"total_train_steps={STEPS}", "train_dataset.batch_size=8", "evaluator.freq_steps=0",
        "train_dataset.synthetic.warm_start.episodes=640", "train_dataset.synthetic.warm_start.batch_size=8",
        entry=AGENTS / "train_env.py", timeout=580,
    )
    assert proc.returncode == 0, explain(proc, rdir)
    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    k = STEPS // 4
    success = [m["env/success"] for m in metrics]
    first, last = sum(success[:k]) / k, sum(success[-k:]) / k
    assert last - first >= MIN_SUCCESS_GAIN, success
    assert max(m["staleness/max"] for m in metrics) <= 2  # the async bound held while learning
    assert all(m["check/env_token_grad_max"] == 0.0 for m in metrics)
