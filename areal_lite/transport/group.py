"""Trajectory groups as they travel: the samples of one prompt, token arrays concatenated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from areal_lite.transport.protocol import Codec, Message

GROUP = "group"


@dataclass
class TrajectoryGroup:
    """One prompt's samples; token arrays are all samples back to back, split by `seqlens`."""

    prompt_id: str
    worker_id: str
    samples: list[dict[str, Any]]  # per sample: prompt_len, reward, finish_reason, plus timing/info scalars
    input_ids: np.ndarray  # [N] int32
    loss_mask: np.ndarray  # [N] uint8
    behav_logp: np.ndarray  # [N] float32
    versions: np.ndarray  # [N] int32
    seqlens: np.ndarray  # [n] int32
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trajectories(cls, *, prompt_id: str, worker_id: str, trajectories: Sequence[Any],
                          meta: dict[str, Any] | None = None) -> "TrajectoryGroup":
        """From objects with input_ids, loss_mask, behav_logp, versions (arrays), reward, prompt_len,
        finish_reason and an `info` dict of scalars (rollout.workflow.Trajectory)."""
        cat = np.concatenate
        samples = [
            {"prompt_len": int(t.prompt_len), "reward": float(t.reward), "finish_reason": str(t.finish_reason),
             **{k: v for k, v in (t.info or {}).items() if isinstance(v, (int, float, str, bool))}}
            for t in trajectories
        ]
        return cls(
            prompt_id=prompt_id,
            worker_id=worker_id,
            samples=samples,
            input_ids=cat([np.asarray(t.input_ids, np.int32) for t in trajectories]),
            loss_mask=cat([np.asarray(t.loss_mask, np.uint8) for t in trajectories]),
            behav_logp=cat([np.asarray(t.behav_logp, np.float32) for t in trajectories]),
            versions=cat([np.asarray(t.versions, np.int32) for t in trajectories]),
            seqlens=np.asarray([len(t.input_ids) for t in trajectories], np.int32),
            meta=dict(meta or {}),
        )

    def to_message(self) -> tuple[str, dict, dict[str, np.ndarray]]:
        body = {"worker_id": self.worker_id, "prompt_id": self.prompt_id, "samples": self.samples}
        if self.meta:
            body["meta"] = self.meta
        arrays = {
            "input_ids": self.input_ids.astype(np.int32, copy=False),
            "loss_mask": self.loss_mask.astype(np.uint8, copy=False),
            "behav_logp": self.behav_logp.astype(np.float32, copy=False),
            "versions": self.versions.astype(np.int32, copy=False),
            "seqlens": self.seqlens.astype(np.int32, copy=False),
        }
        return GROUP, body, arrays

    @classmethod
    def from_message(cls, msg: Message) -> "TrajectoryGroup":
        if msg.type != GROUP:
            raise ValueError(f"not a group message: {msg.type}")
        a, b = msg.arrays, msg.body
        return cls(
            prompt_id=b["prompt_id"],
            worker_id=b["worker_id"],
            samples=b["samples"],
            input_ids=a["input_ids"],
            loss_mask=a["loss_mask"].view(np.uint8),
            behav_logp=a["behav_logp"],
            versions=a["versions"],
            seqlens=a["seqlens"],
            meta=b.get("meta", {}),
        )

    @property
    def num_samples(self) -> int:
        return int(self.seqlens.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.input_ids, self.loss_mask, self.behav_logp, self.versions, self.seqlens))


def encode_group(codec: Codec, group: TrajectoryGroup) -> list[Any]:
    return codec.encode(*group.to_message())


def decode_group(codec: Codec, frames: Sequence[Any]) -> TrajectoryGroup:
    return TrajectoryGroup.from_message(codec.decode(frames))
