"""Faults through the real local launcher: a killed trainer resumes exactly; a killed worker loses nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.e2e.conftest import ENTRY, read_jsonl, write_config

TERMINAL = {"trained", "filtered", "rejected", "failed", "reward_failed"}


class Launch:
    """The local launcher in the background, with its output parsed for child pids."""

    def __init__(self, config: Path, *overrides: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "areal_lite.launcher.local", str(ENTRY), "--config", str(config), *overrides],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.pids: dict[str, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"started (\S+) \(pid (\d+)", line)
            if m:
                self.pids[m.group(1)] = int(m.group(2))

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def wait_for_step(rdir: Path, step: int, launch: Launch, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    path = rdir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and any(m["step"] >= step for m in read_jsonl(path)):
            return
        assert launch.proc.poll() is None, launch.output
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached:\n{launch.output}")


def trained_by_step(rdir: Path) -> dict[int, set[str]]:
    out: dict[int, set[str]] = defaultdict(set)
    for e in read_jsonl(rdir / "ledger.jsonl"):
        if e["event"] == "trained":
            out[e["step"]].add(e["prompt_id"])
    return dict(out)


def assert_exactly_once(rdir: Path) -> Counter:
    events = read_jsonl(rdir / "ledger.jsonl")
    terminal = Counter(e["prompt_id"] for e in events if e["event"] in TERMINAL)
    dup = {p: n for p, n in terminal.items() if n > 1}
    assert not dup, f"prompts with more than one outcome: {dup}"
    return terminal


@pytest.mark.timeout(900)
def test_killed_trainer_resumes_with_the_same_batches(tmp_path, tiny_model_dir):
    steps = 6
    # η = 0: each step trains exactly the next batch of prompts, so runs are comparable step by step.
    extra = {"rollout": {"max_head_offpolicyness": 0},
             "recover": {"mode": "auto", "freq_steps": 1, "retries": 2}}
    ref_cfg = write_config(tmp_path / "ref", tiny_model_dir, {**extra, "trial_name": "ref"})
    ref = Launch(ref_cfg, f"total_train_steps={steps}")
    assert ref.wait(600) == 0, ref.output

    cfg = write_config(tmp_path / "kill", tiny_model_dir, {**extra, "trial_name": "kill"})
    run = Launch(cfg, f"total_train_steps={steps}")
    rdir = tmp_path / "kill" / "runs" / "e2e" / "kill"
    wait_for_step(rdir, 2, run)
    os.killpg(run.pids["trainer"], signal.SIGKILL)  # the whole torchrun job, as a lost node would
    assert run.wait(600) == 0, run.output
    assert "restarting it (1/2)" in run.output

    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert metrics[-1]["step"] == steps - 1 and metrics[-1]["version"] == steps
    expected = trained_by_step(tmp_path / "ref" / "runs" / "e2e" / "ref")
    got = trained_by_step(rdir)
    assert sorted(got) == list(range(steps))
    for step in range(steps):
        assert got[step] == expected[step], f"step {step}: {sorted(got[step])} != {sorted(expected[step])}"
    assert_exactly_once(rdir)


@pytest.mark.timeout(900)
def test_killed_worker_loses_no_prompt(tmp_path, tiny_model_dir):
    # Generation is the bottleneck (a slow server), so both workers always hold prompts: with fast
    # generation the buffer fills to the staleness bound and a killed worker may hold none.
    extra = {"allocation": {"rollout": {"num_workers": 2}},
             "rollout": {"max_head_offpolicyness": 2},
             "server": {"debug_step_delay_s": 0.1},
             "recover": {"mode": "auto", "retries": 2, "freq_steps": 3}}
    cfg = write_config(tmp_path, tiny_model_dir, extra)
    run = Launch(cfg, "total_train_steps=6")
    rdir = tmp_path / "runs" / "e2e" / "t0"
    wait_for_step(rdir, 1, run)
    os.kill(run.pids["worker0"], signal.SIGKILL)
    assert run.wait(600) == 0, run.output
    assert "worker0 was killed by signal 9; restarting it" in run.output
    terminal = assert_exactly_once(rdir)
    trained = trained_by_step(rdir)
    assert sorted(trained) == list(range(6)) and all(len(v) == 4 for v in trained.values())
    # Prompts the dead worker held went out again and were trained, not lost.
    events = read_jsonl(rdir / "ledger.jsonl")
    requeued = {e["prompt_id"] for e in events if e["event"] == "requeued"}
    assert requeued, "the killed worker held prompts: they must have been re-issued"
    for pid in requeued:
        assert pid in terminal or pid in _still_pending(events), pid


def _still_pending(events: list[dict]) -> set[str]:
    """Prompts re-issued after the last step's batch was taken (the run ended before they came back)."""
    outcome = {e["prompt_id"] for e in events if e["event"] in TERMINAL}
    return {e["prompt_id"] for e in events if e["event"] == "requeued"} - outcome
