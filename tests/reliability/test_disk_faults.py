"""The run directory's file system failing under a live run (the real launcher, a tiny model): a full
disk, then a run directory made read-only (a read-only bind mount over it). Each stops the run with one line naming the cause (no
traceback, no restarts into the same error, nothing left running), and loses nothing already written:
after the space is freed (or the file system is writable again) the same command resumes, and the
epoch is trained exactly once with staleness in [0, η].

The run directory is on a small tmpfs the test mounts (root); without that the test is skipped.
Slow (three launches, about two minutes on 2 cores): `python -m pytest -m slow tests/reliability/test_disk_faults.py`.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.conftest import read_jsonl, write_config
from tests.reliability.audit import assert_epoch_trained_once, assert_metrics_sound, epoch_config, launched
from tests.reliability.tmpfs import fill, mounted_tmpfs

LOCAL = "areal_lite.launcher.local"
ETA = 1


@pytest.fixture
def small_fs(tmp_path):
    with mounted_tmpfs(tmp_path, "64m") as mnt:
        yield mnt


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only for every new open, as a file system remounted read-only.

    NOTE: a read-only bind mount over the directory, not a remount of the tmpfs: the kernel refuses to
    remount a file system read-only while files on it are open for writing (the run's logs are).
    Files opened before stay writable through the mount below; every new file (weights, checkpoints,
    the launcher's probe) is refused with EROFS.
    """
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def stopped_cleanly(launch, cause: str) -> str:
    out = launch.output
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1 and cause in errors[0] and "a restart cannot fix this" in errors[0], out
    assert "relaunch the same command" in errors[0]
    assert "restarting it" not in out and "Traceback" not in out, out
    assert launch.leftovers() == []
    return errors[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_then_read_only_run_directory_stops_cleanly_and_resumes(tmp_path, tiny_model_dir, small_fs):
    cfg = write_config(tmp_path, tiny_model_dir, epoch_config({
        "cluster": {"fileroot": str(small_fs / "runs")},
        "rollout": {"max_head_offpolicyness": ETA},
        "recover": {"mode": "auto", "freq_steps": 2, "retries": 2},
    }))
    rdir = small_fs / "runs" / "e2e" / "t0"

    with launched(LOCAL, cfg) as launch:
        launch.wait_for_step(rdir, 2)
        rows = read_jsonl(rdir / "metrics.jsonl")
        filler = fill(small_fs)
        assert launch.wait(180) == 1, launch.output
    print("\nfull disk:", stopped_cleanly(launch, "No space left on device"))
    # What was written before the disk filled is still there.
    assert read_jsonl(rdir / "metrics.jsonl")[: len(rows)] == rows
    assert (rdir / "recover" / "latest").read_text().startswith("step-")

    filler.unlink()
    with launched(LOCAL, cfg) as launch:
        launch.wait_for_step(rdir, 5)
        with read_only(rdir):
            assert launch.wait(180) == 1, launch.output
    print("read-only:", stopped_cleanly(launch, "Read-only file system"))

    with launched(LOCAL, cfg) as launch:
        assert launch.wait(300) == 0, launch.output
        assert launch.leftovers() == []
    assert_epoch_trained_once(rdir)
    assert_metrics_sound(rdir, eta=ETA)
