"""Advantage normalisation with one written formula (docs/algorithms.md, "Advantage normalisation").

    out = (x − mean) / (std + eps)      std_level ≠ "none"
    out =  x − mean                      std_level = "none"   (no eps)
    mean = 0                             mean_level = "none"

`mean` is the mean of the element's `mean_level` set (its group or the whole batch); with
`leave_one_out`, the mean of the *other* members of that set. `std` is taken around the mean
actually subtracted, over the element's `std_level` set S (AReaL's `Normalization`):

    std = sqrt( Σ_{j∈S} (x_j − mean_j)² / (n_S − 1) )     (unbiased; n_S for biased)

so every level combination is well defined: an all-equal group under batch/group or none/group is
scaled by its own spread around the subtracted mean, never divided by eps alone. A set with fewer
than 2 members has leave-one-out mean 0; a std whose divisor (n_S − 1, or n_S) is 0 is 1. For
`[B, T]` input every statistic counts masked tokens (token-weighted); for `[B]` input it counts
sequences.
"""

from __future__ import annotations

import torch

from areal_lite.algo.groups import group_index, scatter_sum
from areal_lite.algo.options import NORM_LEVELS, parse_option


def _check_shapes(values: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor | None) -> None:
    if values.dim() not in (1, 2):
        raise ValueError(f"values must be [B] or [B, T], got shape {tuple(values.shape)}")
    if group_ids.shape != values.shape[:1]:
        raise ValueError(f"group_ids shape {tuple(group_ids.shape)} does not match B={values.shape[0]}")
    if mask is not None and mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from values shape {tuple(values.shape)}")


def normalize(
    values: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mean_level: str | None,
    std_level: str | None,
    mask: torch.Tensor | None = None,
    leave_one_out: bool = False,
    unbiased: bool = True,
    eps: float = 1e-6,
    group=None,
) -> torch.Tensor:
    """Centre and scale `values` by group or batch statistics; masked-out positions are 0.

    Args:
        values: `[B]` per-sequence scalars or `[B, T]` per-token values.
        group_ids: `[B]` integer group of each row; members need not be adjacent.
        mean_level, std_level: "group" | "batch" | "none" (None means "none").
        mask: bool, same shape as `values`; False entries are ignored and returned as 0.
        leave_one_out: use the mean of the other members of the set (RLOO).
        unbiased: divide the sum of squares by n−1 (True) or n (False).
        eps: added to the std before dividing (not used when std_level is "none").
        group: torch.distributed process group. When given, every statistic (batch and group) is
            summed over its ranks, so a batch split across ranks (even one group split across
            ranks) gives exactly the whole-batch result. Collective: every rank must call it.
            Pass it only when each rank holds a disjoint part of the batch.

    Returns:
        Tensor shaped like `values` (its float dtype; float32 for integer input).
    """
    mean_level = parse_option(mean_level, NORM_LEVELS, "mean_level")
    std_level = parse_option(std_level, NORM_LEVELS, "std_level")
    _check_shapes(values, group_ids, mask)
    out_dtype = values.dtype if values.is_floating_point() else torch.float32
    m = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    # float64 statistics: exact sums so that split and whole batches agree to rounding.
    x = torch.where(m, values.to(torch.float64), 0.0)
    mf = m.to(torch.float64)
    group_ids = group_ids.to(values.device)

    cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}

    def level_stats(level: str):
        """(element → set index, set sizes n, set sums s, number of sets), computed once per level."""
        if level not in cache:
            if level == "batch":
                num, idx = 1, torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
            else:
                num, idx = group_index(group_ids, group)
            elem = idx if x.dim() == 1 else idx[:, None].expand_as(x)
            cache[level] = (elem, scatter_sum(mf, elem, num, group), scatter_sum(x, elem, num, group), num)
        return cache[level]

    if mean_level == "none":
        mean = torch.zeros_like(x)
    else:
        elem, n, s, _ = level_stats(mean_level)
        if leave_one_out:
            n_e = n[elem]
            mean = torch.where(n_e >= 2, (s[elem] - x) / (n_e - 1).clamp(min=1), 0.0)
        else:
            mean = (s / n.clamp(min=1))[elem]

    if std_level == "none":
        out = x - mean
    else:
        elem, n, _, num = level_stats(std_level)
        centred = x - mean
        # NOTE: around the subtracted mean, not the std set's own mean (module docstring).
        ss = scatter_sum((centred * mf) ** 2, elem, num, group)
        denom = (n - 1) if unbiased else n
        std = torch.where(denom >= 1, (ss / denom.clamp(min=1)).sqrt(), 1.0)
        out = centred / (std[elem] + eps)
    return torch.where(m, out, 0.0).to(out_dtype)
