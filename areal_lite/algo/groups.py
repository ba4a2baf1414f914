"""Group bookkeeping shared by normalisation, filtering and shaping.

Group ids are arbitrary integers: members of a group need not be adjacent and groups may differ in
size. Everything here maps them to dense indices `0..G-1` (in sorted id order) and sums per group.
Functions that communicate take the process group explicitly; `group=None` means local only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_index(group_ids: torch.Tensor, group=None) -> tuple[int, torch.Tensor]:
    """Dense group indices: `(G, idx)` with `idx[b]` in `[0, G)`, ordered by group id.

    With a process group, the id set is the union over its ranks (ranks may hold different
    subsets of the ids), so that every rank numbers the groups identically. Collective.
    """
    ids = group_ids.reshape(-1).to(torch.long)
    if group is None:
        uniq, inv = torch.unique(ids, sorted=True, return_inverse=True)
        return int(uniq.numel()), inv
    local = torch.unique(ids, sorted=True)
    world = dist.get_world_size(group)
    size = torch.tensor([local.numel()], dtype=torch.long, device=ids.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s.item()) for s in sizes]
    # NOTE: all_gather needs equal shapes; pad every rank's ids to the longest list (at least 1).
    padded = torch.zeros(max(max(counts), 1), dtype=torch.long, device=ids.device)
    padded[: local.numel()] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    uniq = torch.unique(torch.cat([g[:c] for g, c in zip(gathered, counts)]), sorted=True)
    return int(uniq.numel()), torch.searchsorted(uniq, ids)


def scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int, group=None) -> torch.Tensor:
    """`out[k] = Σ values[index == k]` (float64), all-reduced (sum) over `group` when given."""
    out = torch.zeros(size, dtype=torch.float64, device=values.device)
    out.index_add_(0, index.reshape(-1), values.reshape(-1).to(torch.float64))
    if group is not None:
        dist.all_reduce(out, group=group)
    return out


def group_std(
    values: torch.Tensor, group_ids: torch.Tensor, *, unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group standard deviation of `[B]` values: `(std [G], idx [B])`.

    Groups with fewer than 2 members (or 1 member when biased) have std 0: there is no spread.
    """
    num, idx = group_index(group_ids)
    x = values.to(torch.float64)
    n = scatter_sum(torch.ones_like(x), idx, num)
    mean = scatter_sum(x, idx, num) / n.clamp(min=1)
    ss = scatter_sum((x - mean[idx]) ** 2, idx, num)
    denom = (n - 1) if unbiased else n
    std = torch.where(denom > 0, (ss / denom.clamp(min=1)).sqrt(), torch.zeros_like(ss))
    return std, idx
