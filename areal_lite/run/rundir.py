"""The run directory, `{cluster.fileroot}/{experiment_name}/{trial_name}/`, and the one class that owns it.

    config.yaml        the resolved config (written by the launcher; secrets never)
    metrics.jsonl      one line per step (trainer rank 0)
    ledger.jsonl       every prompt's outcomes (the controller)
    logs/<name>.log    each process's output
    weights/v{N}/      HF weights of version N for `/update_weights_from_disk` (disk weight sync)
    weights/pinned/    hard links a restarting server loads from (never pruned under it)
    checkpoints/<tag>/ HF checkpoints for users (saver)
    recover/           sharded recover checkpoints and the `latest` pointer
    fatal              a process's error that no restart can fix (read by the launcher's supervisor)

Versions: a weights folder counts only once complete (`config.json` in place; writers use a
`.tmp` name and rename). A trainer that (re)starts at version v drops folders newer than v first,
so a server restarted later can never serve weights newer than the trainer's own.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from typing import Iterator

from areal_lite.utils.runenv import ENV_RUN_DIR

LOG_DIR, WEIGHTS, CHECKPOINTS, RECOVER, PINNED = "logs", "weights", "checkpoints", "recover", "pinned"
# Write failures of the file system, not of the program: a restart into the same directory fails alike.
FS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
PROBE_BYTES = 1 << 20


class RunDirWriteError(OSError):
    """A write under the run directory failed because of its file system (full, read-only, not
    permitted). One line (exit 2), not retried; what was written before is left as it was."""

    exit_code = 2


def write_failure(what: str, path: str, e: OSError) -> str:
    """One line for a failed write: what, where, why, the free space, and what to do."""
    try:
        free = f"{shutil.disk_usage(os.path.dirname(path) or '.').free >> 20} MiB free"
    except OSError:
        free = "free space unknown"
    return (f"cannot write {what} ({path}): [Errno {e.errno}] {e.strerror} ({free}); free space or make it "
            "writable, then relaunch the same command (with recover.mode=auto it resumes from the last "
            "recover checkpoint); what was written before is intact")


@contextmanager
def writing(what: str, path: str) -> Iterator[None]:
    """Turn a file-system failure of the writes inside into a RunDirWriteError naming `what`."""
    try:
        yield
    except RunDirWriteError:
        raise
    except OSError as e:
        if e.errno not in FS_ERRNOS:
            raise
        raise RunDirWriteError(write_failure(what, path, e)) from None


class RunDir:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.root, "metrics.jsonl")

    @property
    def ledger_path(self) -> str:
        return os.path.join(self.root, "ledger.jsonl")

    @property
    def weights_dir(self) -> str:
        return os.path.join(self.root, WEIGHTS)

    @property
    def recover_dir(self) -> str:
        return os.path.join(self.root, RECOVER)

    @property
    def fatal_path(self) -> str:
        return os.path.join(self.root, "fatal")

    def log_path(self, name: str) -> str:
        return os.path.join(self.root, LOG_DIR, f"{name}.log")

    def weights_path(self, version: int) -> str:
        return os.path.join(self.weights_dir, f"v{version}")

    def checkpoint_path(self, tag: str) -> str:
        return os.path.join(self.root, CHECKPOINTS, tag)

    def make(self) -> "RunDir":
        for sub in (LOG_DIR, WEIGHTS):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        return self

    # ------------------------------------------------------------------ weight versions

    def weight_versions(self) -> list[int]:
        """Versions with a complete weights folder, oldest first."""
        try:
            names = os.listdir(self.weights_dir)
        except FileNotFoundError:
            return []
        versions = [int(n[1:]) for n in names if n[:1] == "v" and n[1:].isdigit()]
        return sorted(v for v in versions if os.path.isfile(os.path.join(self.weights_path(v), "config.json")))

    def newest_weights(self) -> tuple[str, int] | None:
        versions = self.weight_versions()
        return (self.weights_path(versions[-1]), versions[-1]) if versions else None

    def prune_weights(self, version: int, keep: int) -> None:
        """Remove weights folders of versions ≤ version − keep (the servers have moved on)."""
        for v in self.weight_versions():
            if v <= version - keep:
                shutil.rmtree(self.weights_path(v), ignore_errors=True)

    def drop_weights_after(self, version: int) -> list[int]:
        """Remove weights newer than `version` (written by a run whose later steps are being replayed)."""
        dropped = [v for v in self.weight_versions() if v > version]
        for v in dropped:
            shutil.rmtree(self.weights_path(v), ignore_errors=True)
        return dropped

    def pin_newest_weights(self, name: str) -> tuple[str, int]:
        """Hard-link the newest complete `weights/v{N}` into `weights/pinned/{name}`; returns (path, N).

        Links cost no space, and the trainer's pruning (which removes only `v{N}` names) cannot pull
        the files from under a server that is loading them. A folder pruned while it is being linked
        is skipped for the next newest.
        """
        dest = os.path.join(self.weights_dir, PINNED, name)
        for _ in range(20):
            for version in reversed(self.weight_versions()):
                src = self.weights_path(version)
                shutil.rmtree(dest, ignore_errors=True)
                try:
                    os.makedirs(dest)
                    for f in os.listdir(src):
                        os.link(os.path.join(src, f), os.path.join(dest, f))
                except FileNotFoundError:
                    continue
                if os.path.isfile(os.path.join(dest, "config.json")):
                    return dest, version
        raise FileNotFoundError(f"no complete weights under {self.weights_dir}")

    # ------------------------------------------------------------------ resume and failure

    def truncate_metrics(self, before_step: int) -> int:
        """Keep only the metrics of steps < `before_step` (a resumed run logs the replayed steps
        again); returns how many lines were dropped."""
        try:
            with open(self.metrics_path) as fh:
                lines = fh.readlines()
        except FileNotFoundError:
            return 0
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) < before_step]
        if len(kept) != len(lines):
            tmp = f"{self.metrics_path}.tmp"
            with writing("the metrics", self.metrics_path):
                try:
                    with open(tmp, "w") as fh:
                        fh.writelines(kept)
                    os.replace(tmp, self.metrics_path)
                finally:  # a failed write leaves the file as it was, and no partial copy beside it
                    if os.path.exists(tmp):
                        os.remove(tmp)
        return len(lines) - len(kept)

    def write_problem(self) -> str | None:
        """Why files cannot be written here now (a full or read-only file system), or None.

        Writes, syncs and removes a 1 MiB probe: a run that failed on a full disk fails the same way
        after any restart, which is then pointless.
        """
        probe = os.path.join(self.root, f".write-probe-{os.getpid()}")
        try:
            with writing("the run directory", self.root):
                try:
                    with open(probe, "wb") as fh:
                        fh.write(bytes(PROBE_BYTES))
                        fh.flush()
                        os.fsync(fh.fileno())
                finally:
                    if os.path.exists(probe):
                        os.remove(probe)
        except RunDirWriteError as e:
            return str(e)
        except OSError:
            return None
        return None

    @classmethod
    def record_fatal(cls, message: str) -> None:
        """`write_fatal` in the run directory the launcher named (AREAL_LITE_RUN_DIR); a no-op without one."""
        root = os.environ.get(ENV_RUN_DIR)
        if root:
            cls(root).write_fatal(message)

    def write_fatal(self, message: str) -> None:
        """Record an error that no restart can fix (a configuration or environment mistake)."""
        try:
            with open(self.fatal_path, "w") as fh:
                fh.write(message.strip().splitlines()[0] + "\n")
        except OSError:
            pass

    def clear_fatal(self) -> None:
        """A new launch starts without the last one's fatal error (the user fixed it, or will see it again)."""
        try:
            os.remove(self.fatal_path)
        except FileNotFoundError:
            pass

    def read_fatal(self) -> str | None:
        try:
            with open(self.fatal_path) as fh:
                return fh.read().strip() or None
        except FileNotFoundError:
            return None


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
