"""The dataset cursor: which prompt goes out next, exactly once per epoch.

Prompt ids are `"{epoch}:{index}"`, index being the record's position in the dataset. Each epoch
visits a seeded permutation of the records. Prompts that come back without a terminal outcome (a
dead worker's, a cancelled stale one's, a restart's in-flight ones) are re-queued at the front, in
their original order, so they go out again before anything new. The state (epoch, position,
re-queued ids) is small and part of the trainer checkpoint.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

import numpy as np


def make_prompt_id(epoch: int, index: int) -> str:
    return f"{epoch}:{index}"


def parse_prompt_id(prompt_id: str) -> tuple[int, int]:
    epoch, index = prompt_id.split(":")
    return int(epoch), int(index)


class PromptSource:
    def __init__(self, num_records: int, *, seed: int, shuffle: bool, num_epochs: int):
        if num_records <= 0:
            raise ValueError("the dataset has no records")
        self.num_records = num_records
        self.seed = seed
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.epoch = 0
        self.position = 0
        self._requeued: deque[str] = deque()
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_records)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_records)

    @property
    def exhausted(self) -> bool:
        return not self._requeued and self.epoch >= self.num_epochs

    def next_id(self) -> str | None:
        """The next prompt id to hand out (re-queued first), or None when every epoch is handed out."""
        if self._requeued:
            return self._requeued.popleft()
        if self.epoch >= self.num_epochs:
            return None
        pid = make_prompt_id(self.epoch, int(self._order[self.position]))
        self.position += 1
        if self.position >= self.num_records:
            self.epoch += 1
            self.position = 0
            if self.epoch < self.num_epochs:
                self._order = self._permutation(self.epoch)
        return pid

    def requeue(self, prompt_ids: Iterable[str]) -> None:
        """Put prompts back at the front, keeping the given order."""
        self._requeued.extendleft(reversed(list(prompt_ids)))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "requeued": list(self._requeued)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._requeued = deque(state["requeued"])
        if self.epoch < self.num_epochs:
            self._order = self._permutation(self.epoch)
