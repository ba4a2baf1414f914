"""Small networking helpers shared by the launchers, servers, tests and tools: ports and health probes."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on `host` (the OS picks it; the window until it is bound is tiny)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("0.0.0.0", "") else "", 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "", exclude: set[int] | None = None) -> list[int]:
    """`n` distinct free ports of this machine (none of `exclude`)."""
    taken = set(exclude or ())
    out: list[int] = []
    while len(out) < n:
        port = free_port(host)
        if port not in taken:
            taken.add(port)
            out.append(port)
    return out


def port_free(port: int) -> bool:
    """Whether `port` can be bound on every interface of this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
            return True
        except OSError:
            return False


def http_ok(url: str | None, timeout: float = 2.0) -> bool:
    """GET `url` answers 200 (a server's /health); None counts as healthy (nothing to probe)."""
    if url is None:
        return True
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
