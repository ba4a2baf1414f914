"""The ledger: every prompt's outcomes, one JSON line each (`{run}/ledger.jsonl`).

Events: granted, requeued (with the reason), accepted (buffered), filtered, a terminal rejection
reason, trained (with the step and the version). Tests read it to prove exactly-once training;
a resumed run truncates it to the offset its checkpoint recorded, so the events of replayed steps
are written once.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any


class Ledger:
    """Append-only JSON lines of prompt outcomes (`{run_dir}/ledger.jsonl`), for exactly-once audits."""

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a", buffering=1) if path else None

    def write(self, **event: Any) -> None:
        if self._fh is None:
            return
        event.setdefault("t", round(time.time(), 3))
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")

    def offset(self) -> int:
        if self._fh is None:
            return 0
        with self._lock:
            self._fh.flush()
            return self._fh.tell()

    def truncate(self, offset: int) -> None:
        """Drop events after `offset` (those of steps a restarted run repeats)."""
        if self._fh is None:
            return
        with self._lock:
            self._fh.flush()
            self._fh.truncate(offset)
            self._fh.seek(offset)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
