"""A server restarted from the trainer's newest weights must not lose them to the trainer's pruning
(found by test_random_kills: the launcher chose weights/v3, the trainer pruned it before the new server
read it, and the restart failed)."""

from __future__ import annotations

import os
import shutil
import threading

from areal_lite.run.rundir import RunDir


def test_pinned_weights_survive_concurrent_write_and_prune(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    stop = threading.Event()
    written = [0]

    def trainer():  # write v{N} (tmp + rename, as weight_sync does), prune all but the newest two
        n = 1
        while not stop.is_set():
            tmp = weights / f"v{n}.tmp"
            tmp.mkdir()
            for f in ("model.safetensors", "config.json"):
                (tmp / f).write_text(f"{n}")
            os.replace(tmp, weights / f"v{n}")
            shutil.rmtree(weights / f"v{n - 2}", ignore_errors=True)
            n += 1
            written[0] = n

    (weights / "v0").mkdir()
    (weights / "v0" / "config.json").write_text("0")
    t = threading.Thread(target=trainer)
    t.start()
    try:
        for i in range(300):
            path, version = RunDir(str(tmp_path)).pin_newest_weights("server-1")
            assert sorted(os.listdir(path)) in (["config.json"], ["config.json", "model.safetensors"])
            assert (weights / "pinned" / "server-1" / "config.json").read_text() == str(version)
    finally:
        stop.set()
        t.join()
    assert written[0] > 100, "the writer thread stalled: nothing was pruned under the pins"
    assert not (weights / "pinned" / "server-1").is_symlink()
