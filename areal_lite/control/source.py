"""The rollout stream as every trainer rank sees it: one `BatchSource` per rank.

Rank 0 owns the `RolloutController` (admission, cursor, buffer, ledger); every rank calls the same
methods in the same order, and the source moves each step's groups from rank 0 to the others on the
trainer's gloo group. The training loop therefore never asks which rank it is:

    source = build_batch_source(cfg, env, dist_ctx)     # rank 0 loads the prompts, binds the sockets
    source.start(version)
    while (batch := source.next_batch(while_waiting)) is not None:   # collective
        ...train...
        source.set_version(step + 1)
        source.record_trained(step, batch)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.distributed as dist

from areal_lite.config.schema import ExperimentConfig, resolved_max_concurrent_rollouts
from areal_lite.control.broadcast import broadcast_groups
from areal_lite.control.controller import BufferedGroup, RolloutController
from areal_lite.transport import Codec, TrajectoryGroup
from areal_lite.utils.distributed import TrainerDist, broadcast_int
from areal_lite.utils.runenv import RunEnv


# How often a trainer waiting for its batch runs `while_waiting` (a few HTTP calls when it finds nothing).
WAIT_CHECK_S = 5.0
_READY, _END, _WAITING = 0, 1, 2


@dataclass
class StepBatch:
    """One step's trajectory groups (every rank) and their buffer records (rank 0 only)."""

    groups: list[TrajectoryGroup]
    buffered: list[BufferedGroup] = field(default_factory=list)

    @property
    def head_versions(self) -> list[int]:
        """The oldest policy version among each group's generated tokens (its staleness reference)."""
        out = []
        for g in self.groups:
            v = g.versions[g.loss_mask.astype(bool)]
            out.append(int(v.min()) if v.size else 0)
        return out


class BatchSource:
    def __init__(self, controller: RolloutController | None, group: dist.ProcessGroup, *, batch_size: int,
                 num_records: int):
        self.controller = controller  # rank 0 only
        self.group = group
        self.batch_size = batch_size
        self.num_records = num_records

    def start(self, version: int) -> None:
        if self.controller is not None:
            self.controller.set_version(version)
            self.controller.start()

    def next_batch(self, while_waiting: Callable[[], None] | None = None) -> StepBatch | None:
        """The next `batch_size` groups on every rank, or None at the end of the data (collective).

        `while_waiting` (collective too) runs on every rank after each `WAIT_CHECK_S` seconds that
        the batch is still incomplete: the trainer brings a server that restarted behind it up to
        date there, since the groups that server makes are too stale to ever complete the batch."""
        while True:
            state, buffered = _WAITING, None
            if self.controller is not None:
                try:
                    buffered = self.controller.wait_batch(
                        self.batch_size, timeout=None if while_waiting is None else WAIT_CHECK_S)
                    state = _END if buffered is None else _READY
                except TimeoutError:
                    pass
            state = broadcast_int(state, self.group)
            if state != _WAITING:
                break
            assert while_waiting is not None
            while_waiting()
        groups = broadcast_groups([b.group for b in buffered] if buffered else None, self.group)
        if groups is None:
            return None
        return StepBatch(groups, list(buffered or []))

    def set_version(self, version: int) -> None:
        """The servers now serve `version`: admission and the staleness bound follow it."""
        if self.controller is not None:
            self.controller.set_version(version)

    def record_trained(self, step: int, batch: StepBatch) -> None:
        if self.controller is not None:
            self.controller.record_trained(step, batch.buffered)

    def rollouts_in_flight(self) -> bool:
        """Whether any granted prompt is still being generated (rank 0 knows; other ranks say yes)."""
        return self.controller is None or self.controller.staleness.running > 0

    def stats(self) -> dict[str, float]:
        return self.controller.stats() if self.controller is not None else {}

    def state_dict(self) -> dict | None:
        return self.controller.state_dict() if self.controller is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        """Resume from a checkpoint's controller state, or (None) start afresh: the ledger of an
        earlier attempt that left no checkpoint is emptied, since its steps run again."""
        if self.controller is None:
            return
        if state is not None:
            self.controller.load_state_dict(state)
        else:
            self.controller.ledger.truncate(0)

    def close(self) -> None:
        if self.controller is not None:
            self.controller.shutdown()


def build_batch_source(cfg: ExperimentConfig, env: RunEnv, d: TrainerDist, records: list[dict] | None,
                       ledger_path: str) -> BatchSource:
    """The run's source: rank 0 builds the controller over `records` (other ranks pass None)."""
    controller = None
    if d.rank == 0:
        assert records is not None
        ro, ds = cfg.rollout, cfg.train_dataset
        controller = RolloutController(
            records=records, batch_size=ds.batch_size, max_concurrent=resolved_max_concurrent_rollouts(cfg),
            max_head_offpolicyness=ro.max_head_offpolicyness, codec=Codec(env.run_id, env.secret),
            bind_host=cfg.cluster.bind_host, ports=(env.trajectory_port, env.control_port, env.broadcast_port),
            seed=cfg.seed, shuffle=ds.shuffle, num_epochs=cfg.total_train_epochs, dynamic_filter=ro.dynamic_filter,
            heartbeat_s=ro.heartbeat_s, worker_timeout_s=ro.worker_timeout_s, ledger_path=ledger_path,
        )
    num_records = broadcast_int(len(records) if records is not None else 0, d.cpu_group)
    return BatchSource(controller, d.cpu_group, batch_size=cfg.train_dataset.batch_size, num_records=num_records)


def steps_per_epoch(source: BatchSource) -> int:
    return max(1, source.num_records // source.batch_size)
