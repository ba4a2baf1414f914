"""Recover checkpoints: sharded model/optimizer state plus the trainer's and controller's state.

Layout under `{run}/recover/`:
    step-00000012/          one complete checkpoint (torch.distributed.checkpoint shards + trainer_state.msgpack)
    latest                  the name of the newest complete checkpoint (replaced atomically)
A checkpoint is written to `step-N.tmp/`, fsynced, renamed, and only then named in `latest`; a
crash at any point leaves the previous checkpoint usable. The trainer state is msgpack (no pickle).
"""

from __future__ import annotations

import logging
import os
import shutil

import msgpack
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

logger = logging.getLogger("areal_lite.checkpoint")

STATE_FILE = "trainer_state.msgpack"
LATEST = "latest"


class RecoverCheckpointer:
    def __init__(self, root: str, *, keep: int = 2):
        self.root = root
        self.keep = keep

    def latest(self) -> str | None:
        """Path of the newest complete checkpoint, or None."""
        try:
            with open(os.path.join(self.root, LATEST)) as fh:
                name = fh.read().strip()
        except FileNotFoundError:
            return None
        path = os.path.join(self.root, name)
        return path if os.path.isfile(os.path.join(path, STATE_FILE)) else None

    def save(self, engine, trainer_state: dict, step: int) -> str:
        """Collective over trainer ranks. `trainer_state` is used from rank 0 (msgpack-able)."""
        rank = dist.get_rank()
        name = f"step-{step:08d}"
        final = os.path.join(self.root, name)
        tmp = final + ".tmp"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        dist.barrier()
        dcp.save(engine.sharded_state(), checkpoint_id=tmp)
        dist.barrier()
        if rank == 0:
            _write_atomic(os.path.join(tmp, STATE_FILE), msgpack.packb(trainer_state, use_bin_type=True))
            _fsync_dir(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_atomic(os.path.join(self.root, LATEST), name.encode())
            _fsync_dir(self.root)
            self._prune(name)
        dist.barrier()
        return final

    def load(self, engine, path: str) -> dict:
        """Collective: restore the engine's shards; returns the trainer state (on every rank)."""
        state = engine.sharded_state()
        dcp.load(state, checkpoint_id=path)
        engine.load_sharded_state(state)
        with open(os.path.join(path, STATE_FILE), "rb") as fh:
            return msgpack.unpackb(fh.read(), raw=False, strict_map_key=False)

    def _prune(self, newest: str) -> None:
        names = sorted(n for n in os.listdir(self.root) if n.startswith("step-") and not n.endswith(".tmp"))
        for name in names[: max(0, len(names) - self.keep)]:
            if name != newest:
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
