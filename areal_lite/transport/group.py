"""Trajectory groups as they travel: the samples of one prompt, all their numbers in one buffer.

A group's per-token arrays (every sample's tokens back to back, split by `seqlens`) and per-sample
numbers (`rewards`, `seqlens`, `prompt_lens`) are views of one packed buffer, laid out as the wire's
data frame (`protocol.GROUP_SECTIONS`): a worker sends it without copying, the trainer receives it
as views of the frame. Per-sample strings and extra scalars travel in the msgpack header, as columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from areal_lite.transport.protocol import (
    GROUP_BYTES_PER_SAMPLE,
    GROUP_BYTES_PER_TOKEN,
    GROUP_SECTIONS,
    Codec,
    Message,
    group_sections,
)

GROUP = "group"
_ARRAYS = tuple(name for name, _, _ in GROUP_SECTIONS)  # the packed arrays, in buffer order
assert _ARRAYS == ("rewards", "seqlens", "prompt_lens", "input_ids", "versions", "behav_logp", "loss_mask")
_INFO_TYPES = (bool, int, float, str)


@dataclass(eq=False)
class TrajectoryGroup:
    """One prompt's n samples. Construction packs the arrays (converted to the wire dtypes) into one buffer."""

    prompt_id: str
    worker_id: str
    input_ids: np.ndarray  # [N] int32, all samples back to back
    loss_mask: np.ndarray  # [N] uint8
    behav_logp: np.ndarray  # [N] float32
    versions: np.ndarray  # [N] int32
    seqlens: np.ndarray  # [n] int32
    prompt_lens: np.ndarray  # [n] int32
    rewards: np.ndarray  # [n] float64
    finish_reasons: list[str]  # [n]
    info: dict[str, list[Any]] = field(default_factory=dict)  # per-sample scalars by name; None: absent
    meta: dict[str, Any] = field(default_factory=dict)  # per group (e.g. reward_failures)
    # The packed buffer (uint8) the arrays above are views of; None: pack them (internal: only the
    # constructors below pass it, together with its views).
    data: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.data is None:
            self._pack()
        self._views = tuple(getattr(self, name) for name in _ARRAYS)

    def _pack(self) -> None:
        n, n_tokens = len(self.seqlens), len(self.input_ids)
        if not len(self.prompt_lens) == len(self.rewards) == len(self.finish_reasons) == n:
            raise ValueError(f"per-sample fields must all have {n} entries (one per sequence length)")
        data = np.empty(GROUP_BYTES_PER_SAMPLE * n + GROUP_BYTES_PER_TOKEN * n_tokens, np.uint8)
        views = group_sections(data, n, n_tokens)
        for name in _ARRAYS:
            src = np.asarray(getattr(self, name))
            if src.shape != views[name].shape:
                raise ValueError(f"{name} has shape {src.shape}, expected {views[name].shape}")
            views[name][...] = src  # converts (bool → uint8, big → little endian)
        for name in _ARRAYS:
            setattr(self, name, views[name])
        self.data = data

    @classmethod
    def from_trajectories(cls, *, prompt_id: str, worker_id: str, trajectories: Sequence[Any],
                          meta: dict[str, Any] | None = None) -> "TrajectoryGroup":
        """From objects with input_ids, loss_mask, behav_logp, versions (arrays), reward, prompt_len,
        finish_reason and an `info` dict of scalars (rollout.workflow.Trajectory)."""
        infos = [t.info or {} for t in trajectories]
        keys = sorted({k for i in infos for k, v in i.items() if isinstance(v, _INFO_TYPES)})
        lens = [len(t.input_ids) for t in trajectories]
        n, n_tokens = len(lens), sum(lens)
        # Each trajectory's arrays are copied once, straight into their place in the group's buffer.
        data = np.empty(GROUP_BYTES_PER_SAMPLE * n + GROUP_BYTES_PER_TOKEN * n_tokens, np.uint8)
        views = group_sections(data, n, n_tokens)
        views["seqlens"][:] = lens
        views["prompt_lens"][:] = [int(t.prompt_len) for t in trajectories]
        views["rewards"][:] = [float(t.reward) for t in trajectories]
        start = 0
        for t, length in zip(trajectories, lens):
            for name in ("input_ids", "loss_mask", "behav_logp", "versions"):
                views[name][start:start + length] = getattr(t, name)  # a wrong length raises ValueError
            start += length
        return cls(
            prompt_id=prompt_id,
            worker_id=worker_id,
            **{name: views[name] for name in _ARRAYS},
            finish_reasons=[str(t.finish_reason) for t in trajectories],
            info={k: [i[k] if isinstance(i.get(k), _INFO_TYPES) else None for i in infos] for k in keys},
            meta=dict(meta or {}),
            data=data,
        )

    def to_message(self) -> tuple[str, dict, dict[str, np.ndarray]]:
        body: dict[str, Any] = {"worker_id": self.worker_id, "prompt_id": self.prompt_id,
                                "finish_reason": self.finish_reasons}
        if self.info:
            body["info"] = self.info
        if self.meta:
            body["meta"] = self.meta
        v = self._views  # the arrays as packed; any replaced since is packed again
        if (v[0] is self.rewards and v[1] is self.seqlens and v[2] is self.prompt_lens and v[3] is self.input_ids
                and v[4] is self.versions and v[5] is self.behav_logp and v[6] is self.loss_mask):
            data = self.data
        else:  # an array was replaced after construction: pack a copy (this group is left as it is)
            data = TrajectoryGroup(**{**self._fields(), "data": None}).data
        return GROUP, body, {"data": data}

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_message(cls, msg: Message) -> "TrajectoryGroup":
        """From a decoded group message: the arrays are views of the received data frame (no copy)."""
        if msg.type != GROUP:
            raise ValueError(f"not a group message: {msg.type}")
        a, b = msg.arrays, msg.body
        # NOTE: no __init__ (nothing to pack: the codec validated the message and made the views).
        group = cls.__new__(cls)
        d = group.__dict__
        d.update(a)  # the packed arrays and their buffer, "data"
        d["prompt_id"], d["worker_id"], d["finish_reasons"] = b["prompt_id"], b["worker_id"], b["finish_reason"]
        d["info"], d["meta"] = b.get("info") or {}, b.get("meta") or {}
        d["_views"] = tuple(map(a.__getitem__, _ARRAYS))
        return group

    @property
    def samples(self) -> list[dict[str, Any]]:
        """Per-sample dicts (prompt_len, reward, finish_reason, plus the info scalars present), built on access."""
        out = [{"prompt_len": p, "reward": r, "finish_reason": f}
               for p, r, f in zip(self.prompt_lens.tolist(), self.rewards.tolist(), self.finish_reasons)]
        for key, column in self.info.items():
            for s, v in zip(out, column):
                if v is not None:
                    s[key] = v
        return out

    @property
    def num_samples(self) -> int:
        return int(self.seqlens.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in _ARRAYS)


def encode_group(codec: Codec, group: TrajectoryGroup) -> list[Any]:
    return codec.encode(*group.to_message())


def decode_group(codec: Codec, frames: Sequence[Any]) -> TrajectoryGroup:
    return TrajectoryGroup.from_message(codec.decode(frames))
