"""A real run in multi-host mode (cluster.bind_host=0.0.0.0): HMAC-signed ZeroMQ and an API-keyed HTTP
API end to end, and neither secret in the run directory, the logs or the launcher's output."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from areal_lite.utils.runenv import ENV_API_KEY, ENV_SECRET
from tests.e2e.conftest import read_jsonl, write_config
from tests.e2e.test_recovery import Launch


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


@pytest.mark.timeout(600)
def test_multi_host_mode_run_authenticates_and_leaks_no_secret(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path, tiny_model_dir, {"cluster": {"bind_host": "0.0.0.0"}})
    run = Launch(cfg, "total_train_steps=2")
    rdir = tmp_path / "runs" / "e2e" / "t0"
    deadline = time.monotonic() + 300
    while not {"server0", "trainer", "worker0"} <= set(run.pids):
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output
        time.sleep(0.1)
    server_env, trainer_env = _environ(run.pids["server0"]), _environ(run.pids["trainer"])
    key, secret = server_env[ENV_API_KEY], trainer_env[ENV_SECRET]
    assert len(key) >= 32 and len(secret) == 64 and trainer_env[ENV_API_KEY] == key
    for name, pid in run.pids.items():
        assert not any(key in a or secret in a for a in _cmdline(pid)), name
    argv = _cmdline(run.pids["server0"])
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    r = httpx.post(url + "/generate", json={"input_ids": [1, 2]}, timeout=30)  # no key: refused
    assert r.status_code == 401
    assert run.wait(480) == 0, run.output
    assert read_jsonl(rdir / "metrics.jsonl")[-1]["step"] == 1

    leaks = []
    needles = [key.encode(), secret.encode(), bytes.fromhex(secret)]
    for path in rdir.rglob("*"):
        if path.is_file() and any(n in path.read_bytes() for n in needles):
            leaks.append(str(path.relative_to(rdir)))
    assert not leaks, leaks
    assert key not in run.output and secret not in run.output
    # Our one unauthenticated request is the only refusal: every process of the run sent the key.
    server_log = (rdir / "logs" / "server0.log").read_text()
    assert len(re.findall(r"\b401\b.*missing or wrong API key", server_log)) == 1, server_log[-2000:]
