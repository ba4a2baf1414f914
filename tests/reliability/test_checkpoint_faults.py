"""Checkpoint writes under faults: SIGKILL at random points of a save, and a full disk.

Real FSDP engine (gloo, one rank), real torch.distributed.checkpoint files, real signals and
RLIMIT_FSIZE (EFBIG stands in for ENOSPC: both are OSErrors from write(2) mid-file).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from areal_lite.inference.embedded.local_server import free_port
from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
KILLS = 4


class Child:
    def __init__(self, root: Path, model: Path, mode: str):
        env = {**os.environ, "CKPT_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.ckpt_worker", str(root), str(model), mode],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def wait_line(self, pred, timeout=180.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if pred(line):
                    return t, line
            if self.proc.poll() is not None and not any(pred(x) for _, x in self.lines):
                raise AssertionError(f"child exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
            time.sleep(0.005)
        raise TimeoutError([x for _, x in self.lines])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # ~4M parameters: a model + Adam checkpoint of ~50 MB, so a save spans many write calls.
    spec = TinyModelSpec(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)
    return build_tiny_model_dir(tmp_path_factory.mktemp("ckpt_model") / "model", spec)


@pytest.mark.timeout(600)
def test_sigkill_during_checkpoint_write_leaves_previous_loadable(tmp_path, model_dir):
    root = tmp_path / "recover"
    rng = random.Random(10)
    mid_write = 0
    resumed = []
    for round_ in range(KILLS + 1):
        child = Child(root, model_dir, "loop")
        try:
            if round_ > 0:
                _, line = child.wait_line(lambda x: x.startswith("{"))
                state = json.loads(line)
                assert state["ok"], f"round {round_}: checkpoint {state['path']} does not match its checksum"
                resumed.append(state["resumed"])
            if round_ == KILLS:
                break
            # Time one complete save, then kill a later one at a random point inside its duration.
            t0, first = child.wait_line(lambda x: x.startswith("saving"))
            k = int(first.split()[1])
            t1, _ = child.wait_line(lambda x: x == f"saved {k}")
            target = k + rng.randint(1, 2)
            t_start, _ = child.wait_line(lambda x: x == f"saving {target}")
            time.sleep(max(0.0, t_start + rng.uniform(0.0, 1.1) * (t1 - t0) - time.monotonic()))
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait(30)
            if any(n.endswith(".tmp") for n in os.listdir(root)) or (root / "latest").read_text() != f"step-{target:08d}":
                mid_write += 1
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
            child.proc.wait(30)
    assert len(resumed) == KILLS and resumed == sorted(resumed)
    # Most kills must land inside a save, or the test shows nothing about partial writes.
    assert mid_write >= KILLS // 2, mid_write
    print(f"\ncheckpoint SIGKILL: {KILLS} kills ({mid_write} mid-write), {KILLS} resumes, all checksums match")


@pytest.mark.timeout(300)
def test_full_disk_during_checkpoint_is_one_clear_error(tmp_path, model_dir):
    root = tmp_path / "recover"
    child = Child(root, model_dir, "diskfull")
    assert child.proc.wait(240) == 0, child.proc.stderr.read()[-3000:]
    result = json.loads(child.wait_line(lambda x: x.startswith("{"))[1])
    msg = result["error"]
    assert "\n" not in msg and "cannot write recover checkpoint step-00000001" in msg
    # dcp's writer loses the errno of a short write (RuntimeError from the zip writer): the message
    # still names the checkpoint, the free space, the likely causes and what survived.
    assert "MiB free; is the disk full or the directory read-only?" in msg
    assert "previous checkpoint step-00000000 is intact" in msg
    assert result["latest"] == "step-00000000"
    assert not [n for n in result["entries"] if n.endswith(".tmp") or n == "step-00000001"], result["entries"]
    # The surviving checkpoint still loads and matches its checksum.
    again = Child(root, model_dir, "loop")
    state = json.loads(again.wait_line(lambda x: x.startswith("{"))[1])
    again.proc.kill()
    again.proc.wait(30)
    assert state == {"resumed": 0, "ok": True, "path": "step-00000000"}
