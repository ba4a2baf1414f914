"""RAGEN's rollout filtering: score each group, keep the groups a strategy selects, scale the loss.

Order (docs/algorithms.md, "Order of operations"): filter → normalise the kept sequences. Groups are
given by id (members need not be adjacent); scores and selections are in sorted-id order.
"""

from __future__ import annotations

import math

import torch

from areal_lite.algo.groups import group_index, scatter_sum
from areal_lite.algo.options import (
    FILTER_LOSS_SCALINGS,
    FILTER_METRICS,
    FILTER_STRATEGIES,
    FILTER_TOP_P_MODES,
    FILTER_TYPES,
    parse_option,
)


def group_scores(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, metric: str = "reward_std", lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(scores [G], idx [B])`: per group, the unbiased reward std (`reward_std`; NaN for a singleton,
    as torch's std), the mean reward (`reward_mean`), the reward sum (`reward_sum`) or the mean
    `lengths` (`length`)."""
    metric = parse_option(metric, FILTER_METRICS, "filter metric")
    num, idx = group_index(group_ids)
    if metric == "length":
        if lengths is None:
            raise ValueError("metric=length needs the sequence lengths")
        x = lengths.to(torch.float64)
    else:
        x = rewards.to(torch.float64)
    n = scatter_sum(torch.ones_like(x), idx, num)
    s = scatter_sum(x, idx, num)
    if metric == "reward_sum":
        return s, idx
    mean = s / n
    if metric in ("reward_mean", "length"):
        return mean, idx
    ss = scatter_sum((x - mean[idx]) ** 2, idx, num)
    return torch.where(n > 1, ss / (n - 1).clamp(min=1), math.nan).sqrt(), idx


def select_groups(
    scores: torch.Tensor,
    *,
    strategy: str = "top_p",
    value: float = 1.0,
    filter_type: str = "largest",
    include_zero: bool = True,
    top_p_mode: str = "linear",
    selection_eps: float = 0.01,
) -> torch.Tensor:
    """Bool mask `[G]` of the kept groups (RAGEN `_select_top_groups`; docs give each rule).

    Candidates are all groups, or with `include_zero=False` those with |score| > 1e-10. Then
    `top_p` (value ≥ 1 keeps every candidate): `linear` walks the candidates in score order
    (descending for `largest`, ascending for `smallest`) adding scores until the sum reaches
    value·Σscores − selection_eps, stopping at a score ≤ 0; if the sum never reaches it, none is
    kept. `softmax` takes p = softmax(±scores) and keeps the k most probable with k = 1 + #{cumsum < value}.
    `top_k`: k = clamp(int(value·G), 1, #candidates) best; `top_k_abs`: k = clamp(int(value), 1, #candidates).
    `min_p`: `largest` keeps score ≥ value·max − 1e-10, `smallest` keeps score ≤ min/(value + 1e-10) + 1e-10.
    Ties in the sorts keep the smaller group index first.
    """
    strategy = parse_option(strategy, FILTER_STRATEGIES, "filter strategy")
    filter_type = parse_option(filter_type, FILTER_TYPES, "filter_type")
    top_p_mode = parse_option(top_p_mode, FILTER_TOP_P_MODES, "top_p_mode")
    G = scores.numel()
    s_all = scores.to(torch.float64)
    cand = torch.arange(G) if include_zero else torch.nonzero(s_all.abs() > 1e-10).squeeze(1)
    keep = torch.zeros(G, dtype=torch.bool)
    if cand.numel() == 0:
        return keep
    s = s_all[cand]
    sign = 1.0 if filter_type == "largest" else -1.0
    order = torch.sort(-sign * s, stable=True).indices  # best first
    if strategy == "top_p":
        if value >= 1.0:
            keep[cand] = True
        elif top_p_mode == "softmax":
            probs = torch.softmax(sign * s, dim=0)
            p_order = torch.sort(-probs, stable=True).indices
            k = min(int((torch.cumsum(probs[p_order], 0) < value).sum()) + 1, cand.numel())
            keep[cand[p_order[:k]]] = True
        else:
            threshold, total, count = value * float(s.sum()) - selection_eps, 0.0, 0
            for v in s[order].tolist():
                if total >= threshold or v <= 0:
                    break
                total, count = total + v, count + 1
            if total >= threshold:
                keep[cand[order[:count]]] = True
    elif strategy in ("top_k", "top_k_abs"):
        k = int(value * G) if strategy == "top_k" else int(value)
        keep[cand[order[: max(min(k, cand.numel()), 1)]]] = True
    elif filter_type == "largest":
        keep[cand[s >= s.max() * value - 1e-10]] = True
    else:
        keep[cand[s <= s.min() / (value + 1e-10) + 1e-10]] = True
    return keep


def rollout_filter(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    metric: str = "reward_std",
    lengths: torch.Tensor | None = None,
    **selection,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Keep mask `[B]` of the sequences of the groups `select_groups` keeps, and statistics
    (`kept_ratio` = kept groups / groups, the input of `filter_loss_scale`)."""
    scores, idx = group_scores(rewards, group_ids, metric=metric, lengths=lengths)
    keep_group = select_groups(scores, **selection)
    num = scores.numel()
    return keep_group[idx], {
        "num_groups": float(num),
        "kept_groups": float(keep_group.sum()),
        "kept_ratio": float(keep_group.sum()) / num if num else 0.0,
        "zero_score_groups": float((scores.abs() <= 1e-10).sum()),
    }


def filter_loss_scale(kept_ratio: float, mode: str = "none") -> float:
    """RAGEN's loss scaling after filtering, a factor on the advantages: 1 (`none`), kept_ratio
    (`linear`) or √kept_ratio (`sqrt`)."""
    mode = parse_option(mode, FILTER_LOSS_SCALINGS, "filter_loss_scaling")
    if mode == "none":
        return 1.0
    return float(kept_ratio) if mode == "linear" else math.sqrt(kept_ratio)
