"""Outcome-reward shaping, group filtering and group reweighting on `[B]` per-sequence rewards.

Order used by the trainer (docs/algorithms.md, "Order of operations"): shape → filter → normalise
the kept sequences → reweight. Filters return a keep mask; select the kept rows *before*
normalising, so that statistics and loss denominators describe exactly what is trained.
"""

from __future__ import annotations

import math

import torch

from areal_lite.algo.groups import group_index, group_std


def shape_rewards(
    rewards: torch.Tensor,
    *,
    bias: float = 0.0,
    scaling: float = 1.0,
    clip: float | None = None,
    truncated: torch.Tensor | None = None,
) -> torch.Tensor:
    """r' = clip((r + bias)·scaling, −clip, clip); then r' = 0 where `truncated` (optional).

    Zeroing happens before normalisation, so a truncated answer is scored 0 relative to its group
    (AReaL's `mask_no_eos_with_zero` zeroes after normalisation instead; see docs).
    """
    out = (rewards.to(torch.float64) + bias) * scaling
    if clip is not None:
        out = out.clamp(-clip, clip)
    if truncated is not None:
        out = torch.where(truncated.to(torch.bool), 0.0, out)
    return out


def overlong_penalty(gen_lens: torch.Tensor, *, max_len: int, buffer_len: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong penalty, to be added to the reward: min(−(len − (L_max − buffer))/buffer·factor, 0).

    0 up to L_max − buffer tokens, then linear down to −factor at L_max (the generation budget).
    """
    if buffer_len <= 0:
        raise ValueError(f"buffer_len must be > 0, got {buffer_len}")
    excess = gen_lens.to(torch.float64) - (max_len - buffer_len)
    return torch.clamp(-excess / buffer_len * factor, max=0.0)


def drop_all_equal_groups(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, atol: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """DAPO dynamic sampling: keep mask `[B]` that drops groups whose rewards are all equal.

    "Equal" means max − min ≤ atol. A singleton group is all-equal and is dropped (it has no
    within-group contrast; DAPO keeps 0 < #correct < G).
    """
    num, idx = group_index(group_ids)
    r = rewards.to(torch.float64)
    hi = torch.full((num,), -math.inf, dtype=torch.float64, device=r.device).scatter_reduce(0, idx, r, "amax")
    lo = torch.full((num,), math.inf, dtype=torch.float64, device=r.device).scatter_reduce(0, idx, r, "amin")
    keep_group = (hi - lo) > atol
    keep = keep_group[idx]
    return keep, {"num_groups": float(num), "kept_groups": float(keep_group.sum()), "kept_seqs": float(keep.sum())}


def top_k_groups_by_std(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    ratio: float | None = None,
    k: int | None = None,
    unbiased: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """RAGEN filter: keep mask `[B]` of the k groups with the largest reward std.

    k = `k`, or max(1, floor(ratio·G)) for G groups. Ties keep the smaller group id. The std is the
    group's (unbiased by default) reward std; a singleton group has std 0.
    """
    if (ratio is None) == (k is None):
        raise ValueError("give exactly one of ratio and k")
    std, idx = group_std(rewards, group_ids, unbiased=unbiased)
    num = std.numel()
    if k is None:
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        # NOTE: the tiny epsilon keeps floor(0.3·10) at 3 despite 0.3·10 = 2.9999999999999996.
        k = max(1, math.floor(ratio * num + 1e-9)) if num else 0
    k = min(int(k), num)
    # Stable sort on −std: equal stds keep ascending group-id order.
    order = torch.sort(-std, stable=True).indices
    keep_group = torch.zeros(num, dtype=torch.bool, device=std.device)
    keep_group[order[:k]] = True
    keep = keep_group[idx]
    return keep, {
        "num_groups": float(num),
        "kept_groups": float(k),
        "kept_seqs": float(keep.sum()),
        "kept_std_min": float(std[keep_group].min()) if k else 0.0,
    }


def soft_reweight_weights(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr.GRPO+ soft weights per group, w_g = σ_g / (max_g σ_g + eps) with σ the unbiased reward std.

    Returns `(w [G] in group-id order, idx [B])`.
    """
    std, idx = group_std(rewards, group_ids, unbiased=True)
    top = std.max() if std.numel() else torch.zeros((), dtype=torch.float64)
    return std / (top + eps), idx


def soft_reweight(
    advantages: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, float]]:
    """A' = A·σ_g/(max_g σ_g + eps) (Dr.GRPO+ soft reweighting) for `[B]` or `[B, T]` advantages.

    Stats `min`, `max`, `mean` are over the batch's groups (log them as `train/soft_reweight_*`).
    """
    w, idx = soft_reweight_weights(rewards, group_ids, eps=eps)
    w_b = w[idx].to(advantages.dtype)
    out = advantages * (w_b if advantages.dim() == 1 else w_b[:, None])
    stats = {
        "min": float(w.min()) if w.numel() else 0.0,
        "max": float(w.max()) if w.numel() else 0.0,
        "mean": float(w.mean()) if w.numel() else 0.0,
    }
    return out, stats

