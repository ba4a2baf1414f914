"""Small networking helpers shared by launchers, tests and single-process tools."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on `host` (the OS picks it; the window until it is bound is tiny)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("0.0.0.0", "") else "", 0))
        return s.getsockname()[1]
