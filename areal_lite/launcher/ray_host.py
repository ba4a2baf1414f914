"""The Ray actor that runs one process of a plan (used by `areal_lite.launcher.ray`).

It lives in a module of its own so that Ray pickles it by reference, whether the launcher runs as
`python -m areal_lite.launcher.ray` or is imported.
"""

from __future__ import annotations

import os
import signal
import subprocess

from areal_lite.launcher.common import kill_process_tree, read_from, tail
from areal_lite.utils.net import free_ports, port_free



def _child_setup() -> None:
    """In the child before exec: undo Ray's blocked SIGINT; stop with the actor if it dies (Linux).

    SIGTERM rather than SIGKILL so that torchrun still stops its ranks.
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ProcessHost:
    """Runs one process of the plan inside a Ray actor: its own session, its output in a log file."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path = ""

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def free_ports(self, count: int) -> list[int]:
        return free_ports(count)

    def ports_free(self, ports: list[int]) -> list[bool]:
        return [port_free(p) for p in ports]

    def start(self, cmd: list[str], env: dict[str, str], log_path: str, files: dict[str, str],
              dirs: list[str], gpu: bool) -> int:
        for d in dirs:
            os.makedirs(d, exist_ok=True)
        for path, text in files.items():  # the resolved config, unless this node shares the launcher's disk
            if not os.path.isfile(path) or open(path).read() != text:
                with open(path, "w") as fh:
                    fh.write(text)
        child_env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        child_env.update(env)
        if gpu:  # Ray chose this bundle's devices
            child_env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.log_path = log_path
        with open(log_path, "ab", buffering=0) as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=child_env, start_new_session=True, preexec_fn=_child_setup)
        return self.proc.pid

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill_tree(self, sig: int) -> None:
        """Signal the process and every descendant (torchrun's ranks live in sessions of their own)."""
        if self.proc is not None:
            kill_process_tree(self.proc.pid, sig)
            self.proc.poll()  # reap

    def tail(self) -> str:
        return tail(self.log_path)

    def read_from(self, path: str, pos: int) -> str:
        return read_from(path, pos)
