"""Start an embedded inference server as a subprocess and wait until it is healthy.

    with start_local_server(model_dir, extra_args=["--skip-tokenizer-init"]) as server:
        requests.post(f"{server.url}/generate", json={...})

Used by tests, benchmarks and the CPU quickstart; the launchers start servers through their own
process supervision with the same command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Mapping, Sequence

from areal_lite.utils.net import free_port, http_ok


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message holds its log tail."""


class LocalServer:
    """A running `launch_server` subprocess: `.url`, `.port`, `.proc`, `.stop()`; a context manager."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, log_path: str | None, log_file: IO | None):
        self.proc = proc
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.log_path = log_path
        self._log_file = log_file

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def healthy(self, timeout: float = 2.0) -> bool:
        return http_ok(f"{self.url}/health", timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])


def start_local_server(
    model_path: str | os.PathLike,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike | None = None,
    startup_timeout: float = 60.0,
) -> LocalServer:
    """Start `python -m areal_lite.inference.embedded.launch_server` and wait for `/health`.

    Without `log_path` the server's output goes to a temporary file (shown if startup fails).
    """
    import tempfile

    port = port or free_port(host)
    cmd = [
        sys.executable, "-m", "areal_lite.inference.embedded.launch_server",
        "--model-path", str(model_path), "--host", host, "--port", str(port), *extra_args,
    ]
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix=f"areal_server_{port}_", suffix=".log")
        os.close(fd)
    log_path = str(log_path)
    log_file = open(log_path, "ab")
    child_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    server = LocalServer(proc, host, port, log_path, log_file)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise ServerStartError(f"server exited with {proc.returncode} during startup:\n{server.log_tail()}")
        if server.healthy(timeout=1.0):
            return server
        time.sleep(0.1)
    server.stop()
    raise ServerStartError(f"server not healthy after {startup_timeout}s:\n{server.log_tail()}")
