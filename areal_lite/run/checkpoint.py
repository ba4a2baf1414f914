"""Recover checkpoints: sharded model/optimizer state plus the trainer's and controller's state.

Layout under `{run}/recover/`:
    step-00000012/          one complete checkpoint (torch.distributed.checkpoint shards + trainer_state.msgpack)
    latest                  the name of the newest complete checkpoint (replaced atomically)
A checkpoint is written to `step-N.tmp/`, fsynced, renamed, and only then named in `latest`; a
crash at any point leaves the previous checkpoint usable. The trainer state is msgpack (no pickle).
A write that fails (disk full, directory unwritable) removes the partial `.tmp` and raises
CheckpointWriteError, one line naming the cause; `latest` still names the previous checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import msgpack
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

logger = logging.getLogger("areal_lite.checkpoint")

STATE_FILE = "trainer_state.msgpack"
LATEST = "latest"


class CheckpointWriteError(OSError):
    """The checkpoint could not be written; the previous one is untouched. Reported on one line (exit 2)."""

    exit_code = 2


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

    def start_step(self) -> int:
        """The step a trainer resuming now starts at: one past the newest complete checkpoint's, or 0."""
        latest = self.latest()
        return int(os.path.basename(latest).removeprefix("step-")) + 1 if latest is not None else 0

    def save(self, engine, trainer_state: dict, step: int) -> str:
        """Collective over trainer ranks. `trainer_state` is used from rank 0 (msgpack-able)."""
        rank, group = engine.rank, engine.dist.cpu_group
        name = f"step-{step:08d}"
        final = os.path.join(self.root, name)
        tmp = final + ".tmp"
        try:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp, exist_ok=True)
            dist.barrier(group=group)
            # dcp.save gathers every rank's write error into a CheckpointException, raised on all ranks.
            dcp.save(engine.sharded_state(), checkpoint_id=tmp, process_group=group)
            dist.barrier(group=group)
            if rank == 0:
                _write_atomic(os.path.join(tmp, STATE_FILE), msgpack.packb(trainer_state, use_bin_type=True))
                _fsync_dir(tmp)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
                _write_atomic(os.path.join(self.root, LATEST), name.encode())
                _fsync_dir(self.root)
                self._prune(name)
        except (OSError, dcp.CheckpointException) as e:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = self.latest()
            kept = f"the previous checkpoint {os.path.basename(previous)} is intact" if previous else "no earlier checkpoint"
            free = shutil.disk_usage(self.root).free >> 20 if os.path.isdir(self.root) else 0
            raise CheckpointWriteError(f"cannot write recover checkpoint {name} under {self.root} ({free} MiB free; "
                                       f"is the disk full or the directory read-only?): {_cause(e)}; {kept}") from None
        dist.barrier(group=group)
        return final

    def load(self, engine, path: str) -> dict:
        """Collective: restore the engine's shards; returns the trainer state (on every rank)."""
        state = engine.sharded_state()
        dcp.load(state, checkpoint_id=path, process_group=engine.dist.cpu_group)
        engine.load_sharded_state(state)
        with open(os.path.join(path, STATE_FILE), "rb") as fh:
            return msgpack.unpackb(fh.read(), raw=False, strict_map_key=False)

    def _prune(self, newest: str) -> None:
        names = sorted(n for n in os.listdir(self.root) if n.startswith("step-") and not n.endswith(".tmp"))
        for name in names[: max(0, len(names) - self.keep)]:
            if name != newest:
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)


def _cause(e: BaseException) -> str:
    """The first OSError behind `e` (dcp wraps per-rank failures), as '[Errno N] message'."""
    seen = [e]
    failures = getattr(e, "failures", None)  # CheckpointException: {rank: exception or traceback}
    if isinstance(failures, dict):
        seen += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    for err in seen:
        while isinstance(err, BaseException):
            if isinstance(err, OSError) and err.errno:
                return f"[Errno {err.errno}] {err.strerror}"
            err = err.__cause__ or err.__context__
    # torch's file writer reports a short write as a RuntimeError without the errno.
    inner = seen[-1] if isinstance(seen[-1], BaseException) else e
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0] if text else ''}"


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


def resume(mode: str, checkpointer: RecoverCheckpointer, engine, source, run_dir) -> int:
    """The step this trainer starts at, with the run's state made to agree with it (collective).

    From a recover checkpoint (`recover.mode` not disabled, one exists): model, optimizer, scheduler
    and controller state come back; the metrics of later steps are dropped (those steps run again)
    and the controller truncates the ledger to the checkpoint's offset. Without one (the first start,
    or a trainer that died before its first checkpoint) the run starts over at step 0, and what an
    earlier attempt left is discarded the same way: its metrics and ledger lines. Either way, weights
    newer than the start are removed, so a server restarted later never serves weights newer than
    the trainer's own (the trainer pushes its weights before the first grant).
    """
    latest = checkpointer.latest() if mode != "disabled" else None
    state = checkpointer.load(engine, latest) if latest is not None else None
    start = int(state["step"]) + 1 if state is not None else 0
    source.load_state_dict(state["controller"] if state is not None else None)
    if engine.rank == 0:
        dropped = run_dir.truncate_metrics(start)
        stale = run_dir.drop_weights_after(start)
        if latest is not None or dropped or stale:
            logger.info("starting at step %d (%s); dropped %d metrics lines and weights %s of later steps",
                        start, os.path.basename(latest) if latest else "no checkpoint", dropped, stale)
    return start


def save_recover(mode: str, checkpointer: RecoverCheckpointer, every, engine, source,
                 step: int) -> dict[str, float]:
    """After step `step`'s metrics row is written: the recover checkpoint when `recover.mode` is not
    disabled and `every` is due (collective), with the controller's state. Returns `time/recover_checkpoint` (its seconds, 0 when
    none was due) for the next step's row.

    Last in the step on purpose: `resume` starts one past the newest checkpoint and drops later rows,
    so a checkpoint written before its step's row would lose that row to a kill in between.
    """
    t0 = time.monotonic()
    if mode != "disabled" and every.due(step):
        checkpointer.save(engine, {"step": step, "controller": source.state_dict()}, step)
    return {"time/recover_checkpoint": time.monotonic() - t0}
