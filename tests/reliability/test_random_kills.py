"""SIGKILL of a random process (rollout worker, inference server or trainer) at a random time of a real
run, several seeds; the run must finish with every prompt's outcome recorded exactly once, no group
trained twice, and the staleness bound held at every step, including right after each restart.

Slow (minutes): `python -m pytest -m slow tests/reliability` runs it; the default suite skips it.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest

from tests.e2e.conftest import read_jsonl, write_config
from tests.e2e.test_recovery import Launch, assert_exactly_once, trained_by_step, wait_for_step

SEEDS = [0, 1, 2, 3]
VICTIMS = ["trainer", "server0", "worker0", "worker1"]  # one kind per seed; the moment is random
STEPS = 6
ETA = 1
BATCH = 4


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_sigkill_run_finishes_exactly_once(tmp_path, tiny_model_dir, seed):
    rng = random.Random(seed)
    extra = {"allocation": {"rollout": {"num_workers": 2}},
             "rollout": {"max_head_offpolicyness": ETA},
             "recover": {"mode": "auto", "freq_steps": 1, "retries": 3}}
    cfg = write_config(tmp_path, tiny_model_dir, extra)
    run = Launch(cfg, f"total_train_steps={STEPS}")
    rdir = tmp_path / "runs" / "e2e" / "t0"
    victim = VICTIMS[seed % len(VICTIMS)]
    after_step, delay = rng.randint(0, 2), rng.uniform(0.0, 3.0)
    wait_for_step(rdir, after_step, run)
    time.sleep(delay)
    if run.proc.poll() is None:
        pid = run.pids[victim]
        if victim == "trainer":
            os.killpg(pid, signal.SIGKILL)  # the whole torchrun job, as a lost node
        else:
            os.kill(pid, signal.SIGKILL)
    assert run.wait(720) == 0, run.output
    print(f"\nseed {seed}: killed {victim} after step {after_step} + {delay:.2f}s; "
          f"restarts: {run.output.count('restarting it')}")
    assert run.output.count("restarting it") == 1, run.output

    assert_exactly_once(rdir)  # every prompt's outcome at most once
    trained = trained_by_step(rdir)
    assert sorted(trained) == list(range(STEPS)) and all(len(v) == BATCH for v in trained.values())
    per_prompt = Counter(p for ids in trained.values() for p in ids)
    assert max(per_prompt.values()) == 1, "a group was trained twice"
    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert metrics and max(m["staleness/max"] for m in metrics) <= ETA, [m["staleness/max"] for m in metrics]
