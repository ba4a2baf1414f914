"""Admission accounting for the staleness bound (AReaL's rule, counted in groups).

    capacity(version) = min(C − running, (η + version + 1)·B − (accepted + running))

C = max concurrent rollouts, B = groups per training step, η = max_head_offpolicyness. A group is
`running` from its grant until it is accepted, rejected, filtered or re-issued; `accepted` counts
groups taken into the training buffer since the start of the run (it is part of the checkpoint, so
after a restart the bound is where it was, not reset to (η + version + 1)·B). η = 0 is synchronous:
exactly one batch is generated per version.

This rule bounds how far generation may run ahead of training. The bound on the staleness of what is
trained is enforced on top of it by the controller (re-issuing running groups that can no longer be
fresh enough, and checking every group when a batch is assembled).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StalenessManager:
    batch_size: int
    max_concurrent: int
    max_head_offpolicyness: int
    running: int = 0
    accepted: int = 0

    def capacity(self, version: int) -> int:
        """Groups that may be granted now, at trainer version `version` (may be ≤ 0)."""
        concurrency = self.max_concurrent - self.running
        staleness = (self.max_head_offpolicyness + version + 1) * self.batch_size - (self.accepted + self.running)
        return min(concurrency, staleness)

    def on_grant(self, n: int = 1) -> None:
        self.running += n

    def on_accept(self) -> None:
        """A running group was taken into the buffer."""
        self._release()
        self.accepted += 1

    def on_release(self) -> None:
        """A running group ended without being accepted (rejected, filtered, failed or re-issued)."""
        self._release()

    def on_unaccept(self) -> None:
        """A buffered group was sent back (too stale to train): its prompt runs again."""
        if self.accepted <= 0:
            raise AssertionError("unaccept with no accepted group")
        self.accepted -= 1

    def _release(self) -> None:
        if self.running <= 0:
            raise AssertionError("release with no running group")
        self.running -= 1

    def state_dict(self) -> dict:
        # Running grants die with the process; on resume their prompts are re-issued, so only
        # `accepted` carries over.
        return {"accepted": self.accepted}

    def load_state_dict(self, state: dict) -> None:
        self.accepted = int(state["accepted"])
        self.running = 0
