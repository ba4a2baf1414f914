"""Writes under the run directory on a full file system (a 2 MiB tmpfs the test mounts; root only):
each failure is one RunDirWriteError line (exit 2) naming what, where and why, and what was written
before is left as it was. The live version (a full disk under a running launcher) is test_disk_faults.py.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from areal_lite.run.rundir import RunDir, RunDirWriteError
from areal_lite.run.stats import StatsLogger
from tests.reliability.tmpfs import fill, mounted_tmpfs


@pytest.fixture
def full_fs(tmp_path):
    """A 2 MiB tmpfs (the test writes its metrics file, then fills it to the last byte)."""
    with mounted_tmpfs(tmp_path, "2m") as mnt:
        yield mnt


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
