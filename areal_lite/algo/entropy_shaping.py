"""Entropy-weighted reward shaping: GTPO (token level) and GRPO-S (sequence level).

From "GTPO and GRPO-S: Token and Sequence-Level Reward Shaping with Policy Entropy" (Tan et al.,
arXiv 2508.04349). Within each group, sequences split into successes O⁺ (reward > threshold) and
failures O⁻. With α = `alpha`, β = `beta`, H the (detached) policy entropy:

GTPO, token t = the t-th valid token of its sequence, d_t / h_t = number of O⁺ / O⁻ sequences of the
group that have a t-th token:
    O⁺:  r̃_i,t = α·r_i + β·d_t · H_i,t / Σ_{k∈O⁺, t} H_k,t
    O⁻:  r̃_j,t = −α   − β·h_t · (1/H_j,t) / Σ_{k∈O⁻, t} (1/H_k,t)
GRPO-S, with Ĥ_i the mean entropy of sequence i's valid tokens, |O^±| counted in the group:
    O⁺:  r̂_i = α·r_i + β·|O⁺| · Ĥ_i / Σ_{k∈O⁺} Ĥ_k
    O⁻:  r̂_j = −α   − β·|O⁻| · (1/Ĥ_j) / Σ_{k∈O⁻} (1/Ĥ_k)

Failures get the paper's fixed base reward −α (its binary setting: success r = 1, failure −1),
whatever their raw reward. 1/H is computed as 1/(H + eps); when every O⁺ entropy at a position is 0
the O⁺ share is split evenly (1/d_t). `entropy_shaped_advantages` then normalises the two sets
separately (each set's values, with 0 for the other set's members, over the group's elements), which
reduces to token-weighted GRPO when β = 0.
"""

from __future__ import annotations

import torch

from areal_lite.algo.groups import group_index, scatter_sum
from areal_lite.algo.normalize import normalize


def _prepare(rewards, entropy, mask, group_ids, threshold):
    if entropy.dim() != 2 or mask.shape != entropy.shape or rewards.shape != entropy.shape[:1]:
        raise ValueError(
            f"expected rewards [B], entropy [B, T], mask [B, T]; got {tuple(rewards.shape)}, "
            f"{tuple(entropy.shape)}, {tuple(mask.shape)}"
        )
    m = mask.to(torch.bool)
    h = torch.where(m, entropy.detach().to(torch.float64), 0.0)
    positive = rewards > threshold  # [B]
    num, gidx = group_index(group_ids.to(rewards.device))
    subset = gidx * 2 + positive.to(torch.long)  # [B]: (group, O⁺/O⁻) → one index
    return m, h, rewards.to(torch.float64), positive, 2 * num, subset


def gtpo_token_rewards(
    rewards: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    threshold: float = 0.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GTPO shaped token rewards `[B, T]` (0 where masked) and the success mask `[B]` (module doc)."""
    m, h, r, positive, num_subsets, subset = _prepare(rewards, entropy, mask, group_ids, threshold)
    T = h.shape[1]
    pos_t = (torch.cumsum(m.to(torch.long), dim=1) - 1).clamp(min=0)  # [B, T] index among valid tokens
    key = torch.where(m, subset[:, None] * T + pos_t, 0)  # [B, T] → (group, sign, position)
    size = num_subsets * T
    mf = m.to(torch.float64)
    count = scatter_sum(mf, key, size)[key]  # d_t or h_t
    inv = torch.where(m, 1.0 / (h + eps), 0.0)
    sum_h = scatter_sum(h, key, size)[key]
    sum_inv = scatter_sum(inv, key, size)[key]
    share_pos = torch.where(sum_h > 0, h / sum_h.clamp(min=1e-300), 1.0 / count.clamp(min=1))
    share_neg = inv / sum_inv.clamp(min=1e-300)
    shaped_pos = alpha * r[:, None] + beta * count * share_pos
    shaped_neg = -alpha - beta * count * share_neg
    shaped = torch.where(positive[:, None], shaped_pos, shaped_neg)
    return torch.where(m, shaped, 0.0), positive


def grpo_s_rewards(
    rewards: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    threshold: float = 0.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO-S shaped sequence rewards `[B]` and the success mask `[B]` (module doc)."""
    m, h, r, positive, num_subsets, subset = _prepare(rewards, entropy, mask, group_ids, threshold)
    h_mean = h.sum(dim=1) / m.sum(dim=1).clamp(min=1)  # [B]
    count = scatter_sum(torch.ones_like(h_mean), subset, num_subsets)[subset]
    sum_h = scatter_sum(h_mean, subset, num_subsets)[subset]
    inv = 1.0 / (h_mean + eps)
    sum_inv = scatter_sum(inv, subset, num_subsets)[subset]
    share_pos = torch.where(sum_h > 0, h_mean / sum_h.clamp(min=1e-300), 1.0 / count)
    shaped_pos = alpha * r + beta * count * share_pos
    shaped_neg = -alpha - beta * count * inv / sum_inv
    return torch.where(positive, shaped_pos, shaped_neg), positive


def entropy_shaped_advantages(
    shaped: torch.Tensor,
    positive: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    unbiased: bool = True,
    eps: float = 1e-6,
    group=None,
) -> torch.Tensor:
    """Advantages from GTPO `[B, T]` or GRPO-S `[B]` shaped rewards: O⁺ and O⁻ normalised apart.

    Ã = (x^± − mean_g(x^±)) / (std_g(x^±) + eps), where x⁺ is the shaped reward on successes and 0
    on failures (x⁻ the reverse) and the group statistics run over all the group's elements
    (tokens for `[B, T]`). Each element takes the set of its own sign.
    """
    pos = positive.to(torch.bool)
    pos_b = pos if shaped.dim() == 1 else pos[:, None].expand_as(shaped)
    kwargs = dict(mean_level="group", std_level="group", mask=mask, unbiased=unbiased, eps=eps, group=group)
    adv_pos = normalize(torch.where(pos_b, shaped, 0.0), group_ids, **kwargs)
    adv_neg = normalize(torch.where(pos_b, 0.0, shaped), group_ids, **kwargs)
    return torch.where(pos_b, adv_pos, adv_neg)
