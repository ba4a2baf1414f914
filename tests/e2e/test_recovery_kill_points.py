"""The three kill points that once broke exactly-once training and the staleness bound (issue 20),
each through the real local launcher on one epoch of a small run (32 prompts, 8 steps, η = 1):

- the trainer killed before its first recover checkpoint: the restart starts over at step 0, and
  nothing of the first attempt (ledger lines, metrics rows, served weights, in-flight groups) leaks
  into the second;
- the whole trainer job killed at once (torchrun and its rank, as an OOM kill of the process group
  or a lost node does): no rank survives, the restarted trainer binds its ports and resumes from its
  checkpoint, and nothing is left running after the run;
- a server killed right after the trainer resumed from a checkpoint older than the newest weights:
  the restarted server never serves weights newer than the trainer's.

Each asserts from the ledger that every prompt of the epoch was trained exactly once, and from the
metrics that every step has one row and staleness stayed in [0, η].
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from areal_lite.run.checkpoint import RecoverCheckpointer
from tests.e2e.conftest import run_dir, write_config
from tests.reliability.audit import (
    alive,
    assert_epoch_trained_once,
    assert_metrics_sound,
    epoch_config,
    launched,
    read_jsonl,
    wait_for_ranks,
)

LOCAL = "areal_lite.launcher.local"
ETA = 1


def _config(tmp_path, tiny_model_dir, freq_steps: int):
    return write_config(tmp_path, tiny_model_dir, epoch_config({
        "rollout": {"max_head_offpolicyness": ETA},
        "recover": {"mode": "auto", "freq_steps": freq_steps, "retries": 2},
    }))


def _finish(launch, rdir) -> None:
    rc = launch.wait(400)
    assert rc == 0, launch.output
    assert launch.output.count("restarting it") >= 1, launch.output
    assert_epoch_trained_once(rdir)
    assert_metrics_sound(rdir, eta=ETA)
    assert launch.leftovers() == []


@pytest.mark.timeout(600)
def test_trainer_killed_before_its_first_checkpoint(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, freq_steps=7)  # the first checkpoint would follow step 6
    with launched(LOCAL, cfg) as launch:
        rdir = run_dir(tmp_path)
        launch.wait_for_step(rdir, 2)
        _, rank = wait_for_ranks(launch.pids["trainer"], 1)
        rank.kill()  # the rank alone: torchrun reports it and exits
        _finish(launch, rdir)
        assert "trainer exited with status 1; restarting it (1/2)" in launch.output


@pytest.mark.timeout(600)
def test_whole_trainer_job_killed(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, freq_steps=2)
    with launched(LOCAL, cfg) as launch:
        rdir = run_dir(tmp_path)
        launch.wait_for_step(rdir, 2)
        first = launch.pids["trainer"]
        procs = wait_for_ranks(first, 1)
        # Caught the moment its checkpoint of step 3 appears (the rank stopped): that step's metrics row
        # is already written, since a step's recover checkpoint is its last act. A row written after
        # the checkpoint was lost to a kill in between (the resume starts one step past it).
        checkpointer = RecoverCheckpointer(str(rdir / "recover"))
        launch.wait_for(lambda: checkpointer.start_step() >= 4, "the checkpoint of step 3", poll=0.002)
        procs[1].suspend()
        written = [m["step"] for m in read_jsonl(rdir / "metrics.jsonl")]
        assert checkpointer.start_step() - 1 in written, (checkpointer.latest(), written)
        procs[1].resume()
        # SIGKILL to torchrun's process group, as a job's group kill or the OOM killer's group kill does:
        # the rank runs in a session of its own (torchrun's doing), so only torchrun dies, and the rank
        # lives on as an orphan holding the controller's ports unless the launcher finds it.
        os.killpg(first, signal.SIGKILL)
        launch.wait_for(lambda: launch.pids["trainer"] != first, "the trainer's restart")
        survivors = [f"{p.pid} {p.status()} {p.cmdline()[-3:]}" for p in procs if alive(p)]
        assert not survivors, f"the killed trainer's processes outlived its restart: {survivors}\n{launch.output}"
        _finish(launch, rdir)
        assert "trainer was killed by signal 9; restarting it (1/2)" in launch.output
        log = (rdir / "logs" / "trainer.log").read_text(errors="replace")
        assert "Address already in use" not in log
        assert "starting at step" in log  # resumed from its checkpoint, not from scratch


@pytest.mark.timeout(600)
def test_server_restarted_after_a_resume_never_serves_newer_weights(tmp_path, tiny_model_dir):
    # Checkpoints after steps 1, 3, 5: killed after step 4, the trainer resumes at step 4 while
    # weights v5 (and maybe v6) are on disk; the server then restarts from what is on disk.
    cfg = _config(tmp_path, tiny_model_dir, freq_steps=2)
    with launched(LOCAL, cfg) as launch:
        rdir = run_dir(tmp_path)
        launch.wait_for_step(rdir, 4)
        first = launch.pids["trainer"]
        _, rank = wait_for_ranks(first, 1)
        rank.kill()
        launch.wait_for(lambda: launch.pids["trainer"] != first, "the trainer's restart")
        os.kill(launch.pids["server0"], signal.SIGKILL)
        _finish(launch, rdir)
        assert "server0 was killed by signal 9; restarting it (1/2)" in launch.output
        # The resumed trainer's start (step 4, or 6 when the checkpoint after step 5 beat the kill).
        start = int(re.findall(r"starting at step (\d+)", (rdir / "logs" / "trainer.log").read_text())[-1])
        cmd = launch.cmdlines[launch.pids["server0"]]
        assert int(cmd[cmd.index("--weight-version") + 1]) <= start, cmd
