"""SIGKILL of each kind of process at a random moment of a real run, over several seeds: an inference
server, a rollout worker, one trainer rank (of two), torchrun alone (its ranks orphaned) and the whole
trainer job at once. The run must finish with every prompt of the epoch trained exactly once (from the
ledger), one metrics row per step with staleness in [0, η], one restart, and no process left behind.

Slow (about a minute and a half per run on 2 cores): `python -m pytest -m slow tests/reliability/test_random_kills.py -s`;
the default suite skips it. More seeds: AREAL_LITE_KILL_SEEDS=0,1,2,3 (each kind runs once per seed).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.e2e.conftest import run_dir, write_config
from tests.reliability.audit import (
    assert_epoch_trained_once,
    assert_metrics_sound,
    epoch_config,
    launched,
    wait_for_ranks,
)

LOCAL = "areal_lite.launcher.local"
SEEDS = [int(s) for s in os.environ.get("AREAL_LITE_KILL_SEEDS", "0,1").split(",")]
KINDS = ["server", "worker", "trainer_rank", "torchrun", "trainer_job"]
ETA = 1


def kill(launch, kind: str, rng: random.Random) -> str:
    """SIGKILL one process of `kind`; returns what was killed."""
    pids = launch.pids
    if kind == "server":
        os.kill(pids["server0"], signal.SIGKILL)
        return "server0"
    if kind == "worker":
        name = rng.choice(["worker0", "worker1"])
        os.kill(pids[name], signal.SIGKILL)
        return name
    torchrun, *ranks = wait_for_ranks(pids["trainer"], 2)
    if kind == "trainer_rank":
        victim = rng.choice(ranks)
        victim.kill()
        return f"trainer rank pid {victim.pid}"
    if kind == "torchrun":
        torchrun.kill()  # its ranks live on in sessions of their own: orphans the launcher must find
        return "torchrun"
    for p in (torchrun, *ranks):  # the whole job at once, as the OOM killer takes a cgroup
        p.kill()
    return "torchrun and both ranks"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_random_sigkill_run_finishes_exactly_once(tmp_path, tiny_model_dir, kind, seed):
    rng = random.Random(f"{kind}-{seed}")
    cfg = write_config(tmp_path, tiny_model_dir, epoch_config({
        "allocation": {"rollout": {"num_workers": 2}, "trainer": {"nproc_per_node": 2}},
        "rollout": {"max_head_offpolicyness": ETA},
        "recover": {"mode": "auto", "freq_steps": rng.choice([1, 2, 3]), "retries": 2},
    }))
    rdir = run_dir(tmp_path)
    # At most after step 3 of 8 (+ 1.5 s): later, a fast trainer may have finished before the kill.
    after_step, delay = rng.randint(0, 3), rng.uniform(0.0, 1.5)
    with launched(LOCAL, cfg) as launch:
        launch.wait_for_step(rdir, after_step)
        time.sleep(delay)
        if launch.proc.poll() is not None:
            pytest.fail(f"the run ended before the kill:\n{launch.output}")
        killed = kill(launch, kind, rng)
        rc = launch.wait(600)
        out = launch.output
        print(f"\n{kind} seed {seed}: killed {killed} after step {after_step} + {delay:.2f}s; "
              f"restarts: {out.count('restarting it')}")
        assert rc == 0, out
        assert out.count("restarting it") == 1, out
        assert launch.leftovers() == []
    assert_epoch_trained_once(rdir)
    assert_metrics_sound(rdir, eta=ETA)
