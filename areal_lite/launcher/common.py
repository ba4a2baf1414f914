"""What every launcher does before starting anything: parse, validate, preflight, prepare.

User mistakes found here (unknown keys, a missing model or dataset, an allocation that does not fit
the machine) exit with status 2 and one line, before any process starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import psutil

from areal_lite.config import ConfigError, ExperimentConfig, load_config, preflight, save_config
from areal_lite.config.schema import run_dir


@dataclass
class LaunchArgs:
    entry: str
    cfg: ExperimentConfig
    dry_run: bool
    argv: list[str]


def parse_launch_args(argv: list[str], prog: str) -> LaunchArgs:
    """`ENTRY.py --config X.yaml key=value ... [--dry-run]` → validated LaunchArgs (ConfigError on misuse)."""
    if not argv or argv[0] in ("-h", "--help"):
        from areal_lite.config import help_text

        group = argv[1] if len(argv) > 1 and argv[0] in ("-h", "--help") else None
        print(f"usage: python -m {prog} ENTRY.py --config CFG.yaml [key=value ...] [--dry-run]\n")
        print(help_text(group=group))
        raise SystemExit(0)
    entry, rest = argv[0], argv[1:]
    if not entry.endswith(".py"):
        raise ConfigError(f"the first argument must be the entry script (ENTRY.py), got {entry!r}")
    if not os.path.isfile(entry):
        raise ConfigError(f"entry script not found: {entry}")
    cfg = load_config(rest, allow_flags=("--dry-run",))
    return LaunchArgs(os.path.abspath(entry), cfg, "--dry-run" in rest, rest)


def write_run_config(cfg: ExperimentConfig) -> str:
    """Create the run directory and write the resolved config; returns its path."""
    rdir = os.path.abspath(run_dir(cfg))
    try:
        os.makedirs(os.path.join(rdir, "logs"), exist_ok=True)
        os.makedirs(os.path.join(rdir, "weights"), exist_ok=True)
        path = os.path.join(rdir, "config.yaml")
        save_config(cfg, path)
    except OSError as e:
        raise ConfigError(f"cluster.fileroot: cannot write the run directory {rdir}: {e.strerror}") from None
    return path


class Stopped(Exception):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) arrived."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def kill_process_tree(pid: int, sig: int) -> None:
    """Signal `pid` and every descendant, wherever their sessions are (torchrun puts each rank in a
    session of its own, so a process-group kill misses them)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    try:  # its process group too: a child may have outlived its parent and left the tree
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the batch shell) is gone too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def run_prepare(cfg: ExperimentConfig, config_path: str, log_path: str, *, env: dict[str, str] | None = None,
                stop: Callable[[], int | None] = lambda: None) -> None:
    """Build the tiny model (and its SFT warm start) at actor.path when the config asks and it is missing.

    `stop()` returning a signal number (one arrived) stops the preparation within a fraction of a
    second: its process tree is killed and Stopped is raised.
    """
    if cfg.prepare.model == "none" or os.path.isfile(os.path.join(cfg.actor.path, "config.json")):
        return
    t0 = time.time()
    print(f"[launcher] preparing the model at {cfg.actor.path} (log: {log_path})", flush=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "areal_lite.tiny.prepare", "--config", config_path],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True,
        )
        while (rc := proc.poll()) is None:
            if (signum := stop()) is not None:
                kill_process_tree(proc.pid, signal.SIGKILL)
                proc.wait()
                raise Stopped(signum)
            time.sleep(0.2)
    if rc != 0:
        raise RuntimeError(f"model preparation failed (exit {rc}); see {log_path}:\n{tail(log_path)}")
    print(f"[launcher] model ready in {time.time() - t0:.0f}s", flush=True)


def read_from(path: str, pos: int) -> str:
    """The text of `path` from byte offset `pos` ('' while the file does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(pos)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def tail(path: str, n: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines[-n:])


def load_for_launcher(argv: list[str], prog: str) -> LaunchArgs:
    args = parse_launch_args(argv, prog)
    preflight(args.cfg, check_devices=not args.dry_run, local=True)  # areal_lite/config/preflight.py
    return args
