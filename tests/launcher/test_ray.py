"""The Ray launcher on a real local Ray cluster (CPU, token auth on, usage stats off): a tiny training
run end to end, a killed server noticed through its actor, and nothing left running afterwards."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytest.importorskip("ray")

from tests.e2e.conftest import read_jsonl, run_dir, write_config  # noqa: E402
from tests.launcher.helpers import Launch  # noqa: E402

RAY = "areal_lite.launcher.ray"


@pytest.mark.timeout(400)
def test_tiny_run_on_a_local_ray_cluster(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path, tiny_model_dir)
    token_file = os.path.expanduser("~/.ray/auth_token")
    had_token_file = os.path.exists(token_file)
    launch = Launch(RAY, cfg, "total_train_steps=2", "launcher.ray.num_cpus=2")
    rc = launch.wait(360)
    out = launch.output
    rdir = run_dir(tmp_path)
    assert rc == 0, out
    assert "Ray cluster: started locally, 2 CPU" in out
    # One placement group per role; the 2 CPUs shared out fractionally among the three processes.
    assert "servers: server0@localhost{CPU: 0.66, GPU: 0}" in out
    assert "rollout workers: worker0@localhost{CPU: 0.66, GPU: 0}" in out
    assert [m["step"] for m in read_jsonl(rdir / "metrics.jsonl")] == [0, 1]
    assert "step 2/2" in out and "training finished" in out  # the progress line, read through the trainer's actor
    for name in ("server0", "trainer", "worker0"):
        assert (rdir / "logs" / f"{name}.log").stat().st_size > 0, name
    assert (rdir / "config.yaml").is_file()
    assert "local Ray cluster stopped" in out
    # The Ray cluster the launcher started (GCS, raylet, workers) and every child are gone.
    assert any("raylet" in " ".join(c) for c in launch.cmdlines.values())
    assert launch.leftovers() == []
    # Token auth was on with a per-run token held in the environment, not written to ~/.ray.
    assert os.path.exists(token_file) == had_token_file


@pytest.mark.timeout(400)
def test_killed_server_on_ray_stops_the_run_naming_it(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path, tiny_model_dir)  # recover.mode=disabled
    launch = Launch(RAY, cfg, "total_train_steps=50", "launcher.ray.num_cpus=2")
    launch.wait_for(lambda: "worker0" in launch.pids, "the rollout worker to start", timeout=300)
    os.kill(launch.pids["server0"], signal.SIGKILL)  # the actor's child, on this machine
    killed = time.monotonic()

    rc = launch.wait(120)
    out = launch.output
    assert rc == 1, out
    assert "error: server0 was killed by signal 9; stopping the run (recover.mode is disabled)" in out
    assert "Tail of" in out and "Uvicorn running" in out  # the server's log tail, fetched by its actor
    assert time.monotonic() - killed < 60
    assert launch.leftovers() == []


@pytest.mark.timeout(400)
def test_sigterm_on_ray_stops_every_actor_and_child(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path, tiny_model_dir)
    launch = Launch(RAY, cfg, "total_train_steps=50", "launcher.ray.num_cpus=2")
    launch.wait_for(lambda: "worker0" in launch.pids, "the rollout worker to start", timeout=300)
    launch.proc.send_signal(signal.SIGTERM)

    rc = launch.wait(120)
    assert rc == 143, launch.output
    assert "received SIGTERM: stopping every process" in launch.output
    assert "local Ray cluster stopped" in launch.output
    assert launch.leftovers() == []
