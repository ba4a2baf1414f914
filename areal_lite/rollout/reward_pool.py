"""Reward functions in a process pool, with a timeout, counted failures and no silent zeros.

A reward function is a picklable top-level callable `fn(completion: str, **record_fields) -> float`.
It runs in a separate process so a hang or crash cannot stall the rollout worker. A call that
raises, times out, or returns something that is not a finite number is a failure: `score` returns
None and the workflow applies the configured policy (score 0, or drop the group), counting it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

logger = logging.getLogger("areal_lite.reward")


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def _exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: leave once the parent is gone.

    A rollout worker killed with SIGKILL runs no cleanup, and an idle pool process would otherwise
    live on as an orphan. A thread, not PR_SET_PDEATHSIG: that fires when the creating *thread*
    exits, and Linux only.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def as_reward(value: Any) -> float | None:
    """The value as a finite float, or None when it is not a usable reward (NaN, inf, str, None...)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    try:
        import numpy as np

        if isinstance(value, np.generic) and np.isfinite(value):
            return float(value)
    except ImportError:  # numpy is a dependency; keep the check cheap and local
        pass
    return None


def _processes(pool: ProcessPoolExecutor) -> list:
    """The executor's worker processes (a private table, None once the executor is shut down)."""
    return list((getattr(pool, "_processes", None) or {}).values())


class RewardPool:
    """Runs reward calls in `num_workers` processes; a call past `timeout` seconds is a failure."""

    def __init__(self, num_workers: int = 1, timeout: float = 15.0, *, start_method: str = "spawn"):
        self.num_workers = num_workers
        self.timeout = timeout
        self.start_method = start_method
        self.failures = {"raised": 0, "timeout": 0, "invalid": 0}
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=mp.get_context(self.start_method),
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
        return self._pool

    def _reset_pool(self) -> None:
        """Kill the pool's processes (a hung reward cannot be cancelled otherwise) and start afresh."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in _processes(pool):
            try:
                proc.kill()
            except (OSError, AttributeError):
                pass
        pool.shutdown(wait=False, cancel_futures=True)

    async def score(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float | None:
        """`fn(*args, **kwargs)` in the pool: the reward, or None on failure (counted in `failures`)."""
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            pool = self._get_pool()
            try:
                fut = loop.run_in_executor(pool, _call, fn, args, kwargs)
                value = await asyncio.wait_for(fut, timeout=self.timeout)
            except asyncio.TimeoutError:
                self.failures["timeout"] += 1
                logger.warning("reward function timed out after %.1fs", self.timeout)
                self._reset_pool()
                return None
            except BrokenProcessPool:
                # Another call's timeout killed the pool under this one: run it again once.
                if self._pool is pool:
                    self._reset_pool()
                if attempt == 0:
                    continue
                self.failures["raised"] += 1
                return None
            except Exception as e:  # the user's function raised (or could not be pickled)
                self.failures["raised"] += 1
                logger.warning("reward function raised %s: %s", type(e).__name__, e)
                return None
            reward = as_reward(value)
            if reward is None:
                self.failures["invalid"] += 1
                logger.warning("reward function returned %r, not a finite number", value)
            return reward
        return None

    def close(self) -> None:
        """Stop the pool's processes (idle ones exit at once; a hung call is killed)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = _processes(pool)  # NOTE: before shutdown, which drops the executor's process table
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)  # reap it: nothing of the pool outlives close()
