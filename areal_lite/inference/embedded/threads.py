"""CPU server threads that take the cores the rest of the node leaves idle (`launcher.elastic_threads`).

The mirror of the trainer's policy (run/threads.py). When generation is the bottleneck the trainer
waits for data and its cores idle while the server decodes on its share. The server cannot see the
trainer's state, so it measures it: before an engine step, at most every `window_s`, it reads the busy
time of the CPUs it may run on (`/proc/stat` through psutil) minus its own CPU time. That is what the
other processes used over the window, in cores. The server then runs
`floor(full - others + slack)` threads, never fewer than its share and never more than `full`.
While the trainer computes (one core used), the server keeps its share; while it waits, the server
takes the idle cores, and gives them back within one window after the trainer starts again.
The launcher turns this on (`AREAL_LITE_MAX_THREADS`) for the one embedded server of a CPU node.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import psutil
import torch

SLACK = 0.3  # others below 0.3 core count as idle (the rollout worker, the reward process)


def busy_seconds(cpus: list[int] | None) -> float:
    """Busy CPU seconds since boot of `cpus` (all when None): user, nice, system, irq, softirq, steal."""
    times = psutil.cpu_times(percpu=True)
    rows = times if cpus is None else [times[i] for i in cpus if i < len(times)]
    return sum(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
               + getattr(t, "steal", 0.0) for t in rows)


def allowed_cpus() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None


class IdleCoreThreads:
    """Call before each engine step: `share` threads, more while the node's other processes leave cores idle."""

    def __init__(self, *, share: int, full: int, window_s: float = 0.1,
                 busy: Callable[[], float] | None = None, own: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic):
        cpus = allowed_cpus()
        self.share, self.full, self.window_s = share, full, window_s
        self.busy = busy or (lambda: busy_seconds(cpus))
        self.own, self.clock = own, clock
        self.current = share
        self._mark = (clock(), self.busy(), own())

    def __call__(self) -> int:
        """Threads for the next step (set in the calling thread, the engine's)."""
        now = self.clock()
        t0, busy0, own0 = self._mark
        if now - t0 >= self.window_s:
            busy, own = self.busy(), self.own()
            others = max(0.0, (busy - busy0) - (own - own0)) / (now - t0)
            self._mark = (now, busy, own)
            n = max(self.share, min(self.full, int(self.full - others + SLACK)))
            if n != self.current:
                torch.set_num_threads(n)
                self.current = n
        return self.current


def idle_core_threads(full: int) -> IdleCoreThreads | None:
    """The policy for `full` cores (0: off), starting from the threads the process was given."""
    share = torch.get_num_threads()
    return IdleCoreThreads(share=share, full=full) if full > share else None
