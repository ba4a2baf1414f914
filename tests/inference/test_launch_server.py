"""The server's command line and process behaviour: flags, API key, clean shutdown."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from areal_lite.inference.embedded.local_server import start_local_server

KEY = "s3cr3t-key-for-test"


def _launch(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "areal_lite.inference.embedded.launch_server", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model-path", "x", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        ([], "--model-path"),
        (["--model-path", "x", "--tp-size", "2"], "--tp-size"),
        (["--model-path", "x", "--dtype", "int8"], "--dtype"),
        (["--model-path", "/nonexistent/model"], "no config.json"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, needle):
    r = _launch(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.timeout(120)
def test_api_key_guards_every_endpoint_but_health_and_sigterm_exits_0(tiny_model_dir, tmp_path):
    log = tmp_path / "server.log"
    args = ["--api-key", KEY, "--skip-tokenizer-init", "--context-length", "64"]
    server = start_local_server(tiny_model_dir, extra_args=args, log_path=log, startup_timeout=120)
    try:
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        body = {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2}}
        for headers in ({}, {"Authorization": f"Bearer {KEY}x"}, {"Authorization": KEY}):
            r = httpx.post(server.url + "/generate", json=body, headers=headers, timeout=10)
            assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
        for path in ("/get_server_info", "/model_info"):
            assert httpx.get(server.url + path, timeout=5).status_code == 401
        assert httpx.post(server.url + "/pause_generation", json={}, timeout=5).status_code == 401
        good = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(server.url + "/generate", json=body, headers=good, timeout=30).status_code == 200
        info = httpx.get(server.url + "/get_server_info", headers=good, timeout=5).json()
        assert info["unauthorized_requests"] == 6 and "api_key" not in info
    finally:
        rc = server.stop()
    assert rc == 0
    text = log.read_text()
    assert "401" in text and KEY not in text
