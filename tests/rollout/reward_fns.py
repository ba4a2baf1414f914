"""Reward functions for the reward-pool tests: top level (picklable), chosen by the record's answer."""

from __future__ import annotations

import os
import time


def by_answer(completion: str, answer: str = "ok"):
    if answer == "ok":
        return 1.0
    if answer == "raise":
        raise ValueError("the reward function failed")
    if answer == "hang":
        time.sleep(120)
        return 1.0
    if answer == "nan":
        return float("nan")
    if answer == "inf":
        return float("-inf")
    if answer == "str":
        return "1.0"
    if answer == "none":
        return None
    if answer == "pid":
        return float(os.getpid())  # which process scored
    if answer == "exit":
        os._exit(3)  # the worker process dies under the pool
    raise AssertionError(f"unknown behaviour {answer!r}")


def by_tokens(completion: str, answer: str = "") -> float:
    """A reward that tells answers apart: the sum of the completion's token ids (decoded as "id id ...") mod 7."""
    return float(sum(int(t) for t in completion.split()) % 7)
