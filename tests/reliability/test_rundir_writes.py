"""Writes under the run directory on a full file system (a 2 MiB tmpfs the test mounts; root only):
each failure is one RunDirWriteError line (exit 2) naming what, where and why, and what was written
before is left as it was. The live version (a full disk under a running launcher) is test_disk_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from types import SimpleNamespace

import pytest

from areal_lite.run.rundir import RunDir, RunDirWriteError
from areal_lite.run.stats import StatsLogger


@pytest.fixture
def full_fs(tmp_path):
    """A 2 MiB tmpfs with a 4-byte metrics file, then filled to the last byte."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(root) -> None:
    with open(os.path.join(root, "filler"), "wb", buffering=0) as fh:
        for size in (1 << 16, 1):  # large chunks, then the last bytes
            try:
                while True:
                    fh.write(bytes(size))
            except OSError:
                pass


def test_full_run_directory_fails_in_one_line_and_keeps_what_was_written(full_fs):
    rdir = RunDir(str(full_fs))
    rows = [{"step": s, "loss": 0.5 * s} for s in range(3)]
    with open(rdir.metrics_path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    before = open(rdir.metrics_path).read()
    assert rdir.write_problem() is None
    fill(full_fs)

    problem = rdir.write_problem()
    assert problem is not None and "\n" not in problem
    assert "cannot write the run directory" in problem and "No space left on device" in problem, problem
    assert not [n for n in os.listdir(full_fs) if n.startswith(".write-probe")]

    # Dropping replayed rows rewrites the file through a copy: the copy fails, the file stays whole.
    with pytest.raises(RunDirWriteError) as err:
        rdir.truncate_metrics(before_step=1)
    assert err.value.exit_code == 2 and "cannot write the metrics" in str(err.value)
    assert open(rdir.metrics_path).read() == before
    assert not os.path.exists(rdir.metrics_path + ".tmp")

    logger = StatsLogger(SimpleNamespace(wandb=SimpleNamespace(mode="disabled"), console=False, tensorboard=False),
                         run_dir=str(full_fs), run_name="t", config_dict=None, rank=0, total_steps=10)
    with pytest.raises(RunDirWriteError) as err:
        logger.commit(3, {"loss": 1.0, "note": "x" * 8192})  # more than the page the file ends in
    assert "cannot write the metrics" in str(err.value) and str(full_fs) in str(err.value)
    assert [json.loads(line) for line in open(rdir.metrics_path).read().splitlines()[:3]] == rows
