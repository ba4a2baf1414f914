"""CPU trainer threads that follow the rollouts (`launcher.elastic_threads`).

On a CPU node the trainer shares the cores with the inference servers. When generation is hidden
behind training the servers are idle for much of each step, so a trainer with a fixed share of the
cores leaves cores idle; a trainer with all of them competes with the servers whenever they generate,
and torch's threads then wait on each other (slower than its share alone). So the trainer takes every
core of the node while no rollout is in flight and its share while one is, decided again before every
micro-batch. The signal is the controller's count of running grants (in the trainer's own process:
reading it costs nothing). The launcher turns this on (`AREAL_LITE_MAX_THREADS`) for a single CPU
trainer rank when `launcher.torch_threads` is 0.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from areal_lite.utils.runenv import ENV_MAX_THREADS


class ElasticThreads:
    """Call before each micro-batch: `full` threads while `busy()` is false, `share` while it is true."""

    def __init__(self, busy: Callable[[], bool], *, share: int, full: int):
        self.busy = busy
        self.share = share
        self.full = full
        self.current = torch.get_num_threads()
        self._calls = 0
        self._threads = 0

    def __call__(self) -> None:
        n = self.share if self.busy() else self.full
        if n != self.current:
            torch.set_num_threads(n)
            self.current = n
        self._calls += 1
        self._threads += n

    def stats(self) -> dict[str, float]:
        """`perf/trainer_threads`: the mean torch threads over the micro-batches since the last call."""
        out = {"perf/trainer_threads": self._threads / self._calls} if self._calls else {}
        self._calls = self._threads = 0
        return out


def elastic_threads(busy: Callable[[], bool]) -> ElasticThreads | None:
    """The policy the launcher asked for in this process's environment, or None (fixed threads)."""
    full = int(os.environ.get(ENV_MAX_THREADS, "0") or 0)
    share = torch.get_num_threads()
    return ElasticThreads(busy, share=share, full=full) if full > share else None
