"""Loading new weights into a served model: from an HF directory or from named tensors.

Both paths validate every name and shape before copying anything, so a bad update leaves the
served weights untouched. Only safetensors are read (never pickle-based `.bin` files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch


class WeightLoadError(ValueError):
    """An update that cannot be applied (bad path, unknown name, wrong shape); nothing was changed."""


def safetensors_files(model_dir: str | os.PathLike) -> list[Path]:
    """The safetensors files of an HF model directory (sharded via its index, or single)."""
    root = Path(model_dir)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [root / s for s in shards]
    files = sorted(root.glob("*.safetensors"))
    return files


def read_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of the directory's safetensors files, on CPU."""
    from safetensors.torch import load_file

    files = safetensors_files(model_dir)
    if not files:
        raise WeightLoadError(f"no safetensors weights in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise WeightLoadError(f"missing weight shard {f}")
        state.update(load_file(str(f)))
    return state


def apply_named_tensors(
    model: torch.nn.Module, named: Iterable[tuple[str, torch.Tensor]], *, require_all: bool = False
) -> int:
    """Copy tensors into the model's parameters/buffers by state-dict name; returns how many.

    Casts to each parameter's dtype and device. With `require_all`, every parameter must be
    covered (tied parameters count once), as a full checkpoint must. Tensors with NaN or inf are
    refused before anything is copied.
    """
    targets = model.state_dict(keep_vars=True)
    pairs = []
    for name, tensor in named:
        target = targets.get(name)
        if target is None:
            raise WeightLoadError(f"unknown weight name {name!r}")
        if tuple(target.shape) != tuple(tensor.shape):
            raise WeightLoadError(f"shape mismatch for {name!r}: got {tuple(tensor.shape)}, model has {tuple(target.shape)}")
        pairs.append((name, target, tensor))
    # NaN or inf weights would make every logit NaN: refuse the update, keep serving the current ones.
    floats = [(name, tensor) for name, _, tensor in pairs if tensor.is_floating_point()]
    if floats:
        finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist()  # one sync
        bad = [name for (name, _), ok in zip(floats, finite) if not ok]
        if bad:
            raise WeightLoadError(f"non-finite values (nan or inf) in {len(bad)} tensor(s), e.g. {bad[:3]}; "
                                  "the served weights are unchanged")
    if require_all:
        covered = {id(t) for _, t, _ in pairs}
        missing = [n for n, p in model.named_parameters() if id(p) not in covered]
        if missing:
            raise WeightLoadError(f"checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    with torch.no_grad():
        for _, target, tensor in pairs:
            target.data.copy_(tensor.to(device=target.device, dtype=target.dtype))
    return len(pairs)


def receive_named_tensors(
    names: list[str],
    dtypes: list[str],
    shapes: list[list[int]],
    group,
    *,
    device: torch.device,
    flattened: bool = False,
) -> list[tuple[str, torch.Tensor]]:
    """Receive one bucket broadcast from group rank 0, the way SGLang's servers do.

    Default format: one `broadcast(src=0)` per tensor, in `names` order, each allocated as
    `torch.empty(shape, dtype=getattr(torch, dtype))`. `flattened=True` ("flattened_bucket"):
    one uint8 broadcast holding every tensor's bytes back to back, in order.
    """
    import torch.distributed as dist

    specs = [(n, getattr(torch, d), torch.Size(s)) for n, d, s in zip(names, dtypes, shapes, strict=True)]
    if not flattened:
        out = [(n, torch.empty(s, dtype=d, device=device)) for n, d, s in specs]
        handles = [dist.broadcast(t, src=0, group=group, async_op=True) for _, t in out]
        for h in handles:
            h.wait()
        return out
    sizes = [s.numel() * d.itemsize for _, d, s in specs]
    flat = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
    dist.broadcast(flat, src=0, group=group)
    out, offset = [], 0
    for (n, d, s), size in zip(specs, sizes):
        out.append((n, flat[offset : offset + size].view(d).view(s)))
        offset += size
    return out
