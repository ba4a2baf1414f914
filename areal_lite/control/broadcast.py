"""Moving a step's batch from rank 0 (which owns the controller) to every trainer rank.

Bytes travel as a uint8 tensor broadcast (no `broadcast_object_list`, which pickles); the groups are
encoded with the transport codec, the same msgpack + raw-array format they arrived in. Every
collective here moves CPU tensors and so takes the trainer's gloo group (`TrainerDist.cpu_group`).
"""

from __future__ import annotations

from typing import Sequence

import msgpack
import torch
import torch.distributed as dist

from areal_lite.transport import Codec, TrajectoryGroup, decode_group, encode_group

_CODEC = Codec("trainer-internal")


def broadcast_bytes(payload: bytes | None, group: dist.ProcessGroup, *, src: int = 0) -> bytes:
    """`payload` from rank `src` on every rank of `group` (collective; other ranks pass None)."""
    if dist.get_world_size(group) == 1:
        assert payload is not None
        return payload
    size = torch.tensor([len(payload) if payload is not None else 0], dtype=torch.int64)
    dist.broadcast(size, src=src, group=group)
    buf = torch.empty(int(size.item()), dtype=torch.uint8)
    if dist.get_rank(group) == src:
        assert payload is not None
        buf.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buf, src=src, group=group)
    return buf.numpy().tobytes()


def encode_groups(groups: Sequence[TrajectoryGroup] | None) -> bytes:
    """None (end of data) or a list of groups, as bytes."""
    if groups is None:
        return msgpack.packb(None)
    return msgpack.packb([[_as_bytes(f) for f in encode_group(_CODEC, g)] for g in groups], use_bin_type=True)


def decode_groups(data: bytes) -> list[TrajectoryGroup] | None:
    items = msgpack.unpackb(data, raw=False)
    if items is None:
        return None
    return [decode_group(_CODEC, frames) for frames in items]


def _as_bytes(frame) -> bytes:
    return frame.tobytes() if hasattr(frame, "tobytes") else bytes(frame)


def broadcast_groups(groups: Sequence[TrajectoryGroup] | None, group: dist.ProcessGroup, *,
                     src: int = 0) -> list[TrajectoryGroup] | None:
    payload = encode_groups(groups) if dist.get_rank(group) == src else None
    return decode_groups(broadcast_bytes(payload, group, src=src))
