"""A launcher running in the background, watched from outside: its output, the pids it reports, and
every process that descends from it (to prove that nothing is left behind when it exits)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from tests.e2e.conftest import ENTRY, log_tails, read_jsonl

QUIET_ENV = {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled"}


class Launch:
    def __init__(self, module: str, config: Path, *overrides: str, entry: Path = ENTRY, env: dict | None = None):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(entry), "--config", str(config), *overrides],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **QUIET_ENV, **(env or {})},
        )
        self.lines: list[str] = []
        self.pids: dict[str, int] = {}  # process name → pid, as the launcher reports them
        self.seen: dict[int, float] = {}  # every descendant seen: pid → create time
        self.pgids: set[int] = set()
        self.cmdlines: dict[int, list[str]] = {}
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"started (\S+) \(pid (\d+)", line)
            if m:
                self.pids[m.group(1)] = int(m.group(2))

    def _watch(self) -> None:
        try:
            me = psutil.Process(self.proc.pid)
        except psutil.NoSuchProcess:
            return
        while self.proc.poll() is None:
            try:
                for p in me.children(recursive=True):
                    try:
                        if p.pid not in self.seen:
                            self.seen[p.pid] = p.create_time()
                            self.cmdlines[p.pid] = p.cmdline()
                        pgid = os.getpgid(p.pid)
                        if pgid not in (os.getpgrp(), os.getpgid(self.proc.pid)):  # not the test's own group
                            self.pgids.add(pgid)
                    except (psutil.NoSuchProcess, ProcessLookupError):
                        pass
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # let it stop its children before failing the test
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            raise AssertionError(f"launcher still running after {timeout:.0f}s:\n{self.output}{self.log_tails()}") from None

    def log_tails(self, lines: int = 25) -> str:
        """The tail of every process log in the run directory the launcher printed (for a hung run)."""
        m = re.search(r"run dir\s+(\S+)", self.output)
        return log_tails(Path(m.group(1)), lines) if m else ""

    def wait_for(self, predicate, what: str, timeout: float = 240, poll: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.proc.poll() is None, f"launcher exited ({self.proc.returncode}) before {what}:\n{self.output}"
            time.sleep(poll)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output}")

    def wait_for_step(self, rdir: Path, step: int, timeout: float = 240) -> None:
        path = rdir / "metrics.jsonl"
        self.wait_for(lambda: path.exists() and any(m["step"] >= step for m in read_jsonl(path)),
                      f"step {step}", timeout)

    def leftovers(self, grace: float = 10.0) -> list[str]:
        """Processes that descended from the launcher, or share a child's process group, still alive."""
        deadline = time.monotonic() + grace
        while True:
            alive = []
            for pid, created in self.seen.items():
                try:
                    p = psutil.Process(pid)
                    if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
                except psutil.NoSuchProcess:
                    pass
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if os.getpgid(p.pid) in self.pgids and p.pid not in self.seen and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{p.pid} (group) {' '.join(p.info['cmdline'] or [])[:120]}")
                except (psutil.NoSuchProcess, ProcessLookupError):
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)
