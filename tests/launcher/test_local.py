"""Faults through the real local launcher (real processes, tiny model): a killed server, a process that
fails at start, Ctrl-C; and nothing left running afterwards. (A killed trainer resuming from its
checkpoint is tests/e2e/test_recovery.py.)"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request

import pytest

from tests.e2e.conftest import ENTRY, read_jsonl, run_dir, write_config
from tests.launcher.helpers import Launch

LOCAL = "areal_lite.launcher.local"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.timeout(600)
def test_killed_server_is_restarted_and_the_run_finishes(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path, tiny_model_dir, {"recover": {"mode": "auto", "retries": 2, "freq_steps": 2}})
    launch = Launch(LOCAL, cfg, "total_train_steps=4")
    rdir = run_dir(tmp_path)
    launch.wait_for_step(rdir, 0)
    os.kill(launch.pids["server0"], signal.SIGKILL)

    rc = launch.wait(480)
    out = launch.output
    assert rc == 0, out
    assert "server0 was killed by signal 9; restarting it (1/2)" in out
    assert out.count("started server0") == 2
    # The restarted server started from the newest weights the trainer had published (pinned by hard
    # links so that the trainer's pruning cannot remove them while it loads).
    cmd = launch.cmdlines[launch.pids["server0"]]
    assert int(cmd[cmd.index("--weight-version") + 1]) >= 1, cmd
    assert cmd[cmd.index("--model-path") + 1].startswith(str(rdir / "weights" / "pinned")), cmd
    assert [m["step"] for m in read_jsonl(rdir / "metrics.jsonl")] == [0, 1, 2, 3]
    assert "training finished" in out
    assert launch.leftovers() == []


@pytest.mark.timeout(400)
def test_killed_server_without_recovery_stops_the_run_naming_it(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path, tiny_model_dir)  # recover.mode=disabled (the default)
    launch = Launch(LOCAL, cfg, "total_train_steps=50")
    launch.wait_for(lambda: "worker0" in launch.pids, "the rollout worker to start")
    os.kill(launch.pids["server0"], signal.SIGKILL)
    killed = time.monotonic()

    rc = launch.wait(120)
    out = launch.output
    assert rc == 1, out
    assert "error: server0 was killed by signal 9; stopping the run (recover.mode is disabled)" in out
    assert f"Tail of {run_dir(tmp_path) / 'logs' / 'server0.log'}" in out
    # Noticed within a second; stopping the rest takes the SIGTERM grace at most.
    assert time.monotonic() - killed < 30
    assert launch.leftovers() == []


BROKEN_WORKER = '''
import os, sys, time
if os.environ.get("AREAL_LITE_ROLE") == "rollout":
    print("worker: cannot reach the reward service (simulated)", flush=True)
    sys.exit(3)
time.sleep(600)  # a trainer that would wait for data forever
'''


@pytest.mark.timeout(300)
def test_process_failing_at_start_is_named_with_its_log_tail(tmp_path, tiny_model_dir):
    entry = tmp_path / "broken_entry.py"
    entry.write_text(BROKEN_WORKER)
    cfg = write_config(tmp_path, tiny_model_dir)
    launch = Launch(LOCAL, cfg, entry=entry)
    launch.wait_for(lambda: "worker0" in launch.pids, "the rollout worker to start")
    started = time.monotonic()

    rc = launch.wait(120)
    out = launch.output
    assert rc == 1, out
    assert "error: worker0 exited with status 3; stopping the run" in out
    assert "cannot reach the reward service (simulated)" in out  # the tail of its log
    assert time.monotonic() - started < 30  # seconds, not the trainer's timeout
    assert launch.leftovers() == []


USER_ERROR = '''
from areal_lite.run.rundir import RunDir
from areal_lite.utils.distributed import run_and_exit


class EnvironmentMistake(Exception):
    exit_code = 2


def main():
    raise EnvironmentMistake("WANDB_MODE='bogus' is not one of disabled, offline, online")


run_and_exit(main, on_user_error=RunDir.record_fatal)
'''


@pytest.mark.timeout(300)
def test_an_error_no_restart_can_fix_is_not_retried(tmp_path, tiny_model_dir):
    """A configuration or environment error in a child ends the run at once with its one line, even
    with recovery on: restarting into the same error would only repeat it `retries` times."""
    entry = tmp_path / "user_error.py"
    entry.write_text(USER_ERROR)
    cfg = write_config(tmp_path, tiny_model_dir, {"recover": {"mode": "auto", "retries": 3, "freq_steps": 1}})
    launch = Launch(LOCAL, cfg, entry=entry)
    rc = launch.wait(120)
    out = launch.output
    assert rc == 1, out
    assert "WANDB_MODE='bogus' is not one of disabled, offline, online; stopping the run (a restart cannot " \
           "fix this)" in out
    assert "restarting it" not in out
    assert launch.leftovers() == []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_stops_every_child(tmp_path, tiny_model_dir, sig):
    """Ctrl-C, and SIGHUP (the terminal or SSH session closed), stop every process tree."""
    cfg = write_config(tmp_path, tiny_model_dir)
    launch = Launch(LOCAL, cfg, "total_train_steps=50", "allocation.trainer.nproc_per_node=2")
    # Mid-run: torchrun, its two ranks and the worker (all running the entry script) are up.
    launch.wait_for(lambda: sum(str(ENTRY) in " ".join(c) for c in launch.cmdlines.values()) >= 4,
                    "the trainer ranks and the worker")
    launch.proc.send_signal(sig)

    rc = launch.wait(60)
    assert rc == 128 + sig, launch.output
    assert f"received {signal.Signals(sig).name}: stopping every process" in launch.output
    assert launch.leftovers() == []


@pytest.mark.timeout(300)
def test_a_stop_signal_during_model_preparation_stops_it_within_seconds(tmp_path, tiny_model_dir):
    """SIGTERM while the launcher builds and SFT-warm-starts the model (minutes of work) stops the
    preparation's process tree at once; nothing is left running and no model is left half-written."""
    model = tmp_path / "model"
    cfg = write_config(tmp_path, model, {"prepare": {
        "model": "tiny", "tiny": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "num_key_value_heads": 1, "intermediate_size": 128,
                                  "max_position_embeddings": 512},
        "sft": {"enabled": True, "num_examples": 400000, "epochs": 1, "batch_size": 32}}})
    launch = Launch(LOCAL, cfg)
    launch.wait_for(lambda: any("areal_lite.tiny.prepare" in " ".join(c) for c in launch.cmdlines.values()),
                    "the model preparation", timeout=120)
    time.sleep(2)  # inside the preparation, not at its start
    t_signal = time.monotonic()
    launch.proc.send_signal(signal.SIGTERM)

    rc = launch.wait(60)
    assert rc == 128 + signal.SIGTERM, launch.output
    assert time.monotonic() - t_signal < 10, launch.output
    assert "received SIGTERM while preparing the model: stopped" in launch.output
    assert launch.leftovers() == []
    assert not (model / "config.json").exists()



@pytest.mark.timeout(600)
def test_a_server_restarted_behind_the_trainer_is_brought_up_to_date(tmp_path, tiny_model_dir):
    """A server that comes back serving weights older than the trainer's makes only groups too stale to
    train, while the trainer waits for fresh ones: the trainer must push its weights to it while it
    waits. Made certain here: with the broadcast weight sync a restarted server starts from the base
    model (version 0), and the worker is stopped so that the trainer is waiting (η = 0) when it does."""
    cfg = write_config(tmp_path, tiny_model_dir, {"recover": {"mode": "auto", "retries": 2, "freq_steps": 2}})
    # Two trainer ranks: the wait, the check and the push are collectives every rank joins.
    launch = Launch(LOCAL, cfg, "total_train_steps=5", "actor.weight_update_mode=distributed",
                    "rollout.max_head_offpolicyness=0", "allocation.trainer.nproc_per_node=2")
    rdir = run_dir(tmp_path)
    launch.wait_for_step(rdir, 1)
    os.kill(launch.pids["worker0"], signal.SIGSTOP)
    try:
        time.sleep(2.0)  # the trainer trains what is buffered (η = 0: one batch at most) and then waits
        os.kill(launch.pids["server0"], signal.SIGKILL)
        url = re.search(r"server\(s\) healthy: (\S+)", launch.output).group(1)
        launch.wait_for(lambda: launch.output.count("started server0") == 2 and healthy(url), "the restarted server")
    finally:
        os.kill(launch.pids["worker0"], signal.SIGCONT)

    rc = launch.wait(300)
    out = launch.output
    assert rc == 0, out + launch.log_tails()
    cmd = launch.cmdlines[launch.pids["server0"]]
    assert cmd[cmd.index("--weight-version") + 1] == "0", cmd  # it came back at the base weights
    trainer_log = (rdir / "logs" / "trainer.log").read_text()
    assert "serves weights older than the trainer's (v0, not v" in trainer_log, trainer_log[-3000:]
    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(5))
    assert all(m["staleness/max"] == 0 for m in metrics)  # η = 0: nothing stale was trained
    assert launch.leftovers() == []
