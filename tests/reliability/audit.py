"""What a finished run must prove, read from its files: the ledger (exactly-once prompts), the metrics
(staleness in [0, η], one row per step), and the process table (nothing left running).

Shared by the recovery tests (tests/e2e/test_recovery_*.py) and the fault suites of this folder.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from tests.e2e.conftest import ENTRY, deep_merge
from tests.launcher.helpers import Launch

TERMINAL = {"trained", "filtered", "rejected", "failed", "reward_failed"}

# One epoch of a small run: every prompt kept (max_prompt_len leaves room for the answer in the
# server's context), so the epoch is `num_records` prompts, `num_records / batch_size` steps.
EPOCH_RUN = {
    "train_dataset": {"max_prompt_len": 240, "synthetic": {"num_records": 32}},
    "total_train_epochs": 1,
}
EPOCH_PROMPTS = 32
BATCH = 4


def epoch_config(extra: dict | None = None) -> dict:
    return deep_merge(EPOCH_RUN, extra or {})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_epoch_trained_once(rdir: Path, *, prompts: int = EPOCH_PROMPTS, batch: int = BATCH) -> dict[int, set]:
    """From the ledger: every prompt of epoch 0 trained exactly once, no prompt with two outcomes,
    each step trained `batch` distinct prompts, steps 0..prompts/batch−1 each once."""
    events = read_jsonl(rdir / "ledger.jsonl")
    terminal = Counter(e["prompt_id"] for e in events if e["event"] in TERMINAL)
    twice = {p: n for p, n in terminal.items() if n > 1}
    assert not twice, f"prompts with more than one terminal outcome: {twice}"
    trained = Counter(e["prompt_id"] for e in events if e["event"] == "trained")
    expected = {f"0:{i}" for i in range(prompts)}
    missing, extra = expected - set(trained), set(trained) - expected
    assert not missing and not extra, f"epoch prompts never trained: {sorted(missing)}; unexpected: {sorted(extra)}"
    by_step: dict[int, set] = {}
    for e in events:
        if e["event"] == "trained":
            assert e["prompt_id"] not in by_step.get(e["step"], set()), e
            by_step.setdefault(e["step"], set()).add(e["prompt_id"])
    assert sorted(by_step) == list(range(prompts // batch)), sorted(by_step)
    assert all(len(ids) == batch for ids in by_step.values()), {s: len(v) for s, v in by_step.items()}
    return by_step


def assert_metrics_sound(rdir: Path, *, eta: int, steps: int = EPOCH_PROMPTS // BATCH) -> list[dict]:
    """One metrics row per step, in order; staleness in [0, η] at every step and no trained token
    from weights newer than the trainer's (`staleness/newest_token_version` ≤ step)."""
    rows = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in rows] == list(range(steps)), [m["step"] for m in rows]
    assert [m["version"] for m in rows] == list(range(1, steps + 1))
    stale = [m["staleness/max"] for m in rows]
    assert all(0 <= s <= eta for s in stale), f"staleness/max per step {stale} outside [0, {eta}]"
    newest = [m["staleness/newest_token_version"] for m in rows]
    assert all(v <= m["step"] for v, m in zip(newest, rows)), f"tokens newer than the trainer: {newest}"
    return rows


def trainer_processes(torchrun_pid: int) -> list[psutil.Process]:
    """torchrun and its ranks (the processes running the entry script below it)."""
    torchrun = psutil.Process(torchrun_pid)
    return [torchrun, *(p for p in torchrun.children(recursive=True) if _runs_entry(p))]


def _runs_entry(p: psutil.Process) -> bool:
    try:
        return str(ENTRY) in " ".join(p.cmdline())
    except psutil.Error:  # a short-lived child that exited (or is a zombie) since children() listed it
        return False


def wait_for_ranks(torchrun_pid: int, n: int, timeout: float = 120) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = trainer_processes(torchrun_pid)
        if len(procs) >= n + 1:
            return procs
        time.sleep(0.1)
    raise AssertionError(f"torchrun {torchrun_pid} has not started {n} rank(s)")


def alive(p: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's zombie waits for its new parent to reap it)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_log(path: Path, text: str, launch, timeout: float = 240) -> None:
    launch.wait_for(lambda: path.exists() and text in path.read_text(errors="replace"), f"{text!r} in {path.name}",
                    timeout)


@contextmanager
def launched(module: str, config: Path, *overrides: str, **kw) -> Iterator[Launch]:
    """A background launcher that is stopped (SIGTERM: it stops its children) if the test fails early."""
    launch = Launch(module, config, *overrides, **kw)
    try:
        yield launch
    finally:
        if launch.proc.poll() is None:
            launch.proc.terminate()
            try:
                launch.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launch.proc.kill()


class ListenWatch:
    """Every listening TCP socket of the launcher's descendants, as (address, command) pairs."""

    def __init__(self, root_pid: int):
        self.root = psutil.Process(root_pid)
        self.seen: dict[tuple[int, str, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for p in self.root.children(recursive=True):
                    try:
                        for c in p.net_connections("inet"):
                            if c.status == psutil.CONN_LISTEN:
                                self.seen.setdefault((p.pid, c.laddr.ip, c.laddr.port), " ".join(p.cmdline()[:3]))
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            time.sleep(0.2)  # listeners open at start-up and stay

    def stop(self) -> dict[str, set[str]]:
        self._stop.set()
        self._thread.join(timeout=5)
        out: dict[str, set[str]] = {}
        for (_, ip, _), cmd in self.seen.items():
            out.setdefault(ip, set()).add(cmd)
        return out
