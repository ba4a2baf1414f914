"""Advantage estimators beyond group normalisation: returns, REINFORCE++, ReMax, pass@k, GPG, GAE.

Token tensors are padded `[B, T]` with a bool `mask` (True on trained completion tokens); `[B]`
tensors hold one outcome reward per sequence. Every function is a constant computation (no grad)
and returns new tensors, 0 at masked positions. docs/algorithms.md gives each formula and the
peer functions it was checked against (tests/parity).
"""

from __future__ import annotations

import torch

from areal_lite.algo.groups import group_index, scatter_sum
from areal_lite.algo.normalize import normalize


def _check(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if values.dim() != 2 or mask.shape != values.shape:
        raise ValueError(f"expected [B, T] values and mask, got {tuple(values.shape)} and {tuple(mask.shape)}")
    return mask.to(torch.bool)


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B, T]` token rewards holding each sequence's outcome reward on its last valid token."""
    m = mask.to(torch.bool)
    if rewards.shape != m.shape[:1]:
        raise ValueError(f"rewards {tuple(rewards.shape)} does not match mask {tuple(m.shape)}")
    T = m.shape[1]
    last = torch.where(m, torch.arange(T, device=m.device).expand_as(m), -1).amax(dim=1)  # [B], −1: empty
    out = torch.zeros(m.shape, dtype=torch.float64, device=m.device)
    rows = torch.nonzero(last >= 0).squeeze(1)
    out[rows, last[rows]] = rewards.to(torch.float64)[rows]
    return out


@torch.no_grad()
def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = r_t + γ·G_next over the valid tokens of each row; a masked position passes G through.

    (Masked positions inside a row, e.g. tool output, are skipped: the discount counts valid tokens.)
    """
    m = _check(token_rewards, mask)
    r = torch.where(m, token_rewards.to(torch.float64), 0.0)
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=torch.float64, device=r.device)
    for t in reversed(range(r.shape[1])):
        running = torch.where(m[:, t], r[:, t] + gamma * running, running)
        out[:, t] = torch.where(m[:, t], running, 0.0)
    return out


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, unbiased: bool = True, eps: float = 0.0
) -> torch.Tensor:
    """REINFORCE++ (no baseline): discounted returns, then whitened over the batch's tokens.

    A = (G − mean_tok G)/(std_tok G + eps); `unbiased` picks n−1 (verl) or n (OpenRLHF).
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    gids = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    return normalize(returns, gids, mean_level="batch", std_level="batch", mask=mask, unbiased=unbiased, eps=eps)


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    unbiased: bool = True,
    eps: float = 0.0,
) -> torch.Tensor:
    """REINFORCE++-baseline: r − mean_group(r) on every token, then whitened over the batch's tokens.

    A singleton group gets 0 (its own mean is subtracted); verl uses a 0 baseline there and keeps r.
    """
    m = _check(mask.to(torch.float64), mask)
    centred = normalize(rewards, group_ids, mean_level="group", std_level="none")  # [B]
    tokens = torch.where(m, centred.to(torch.float64)[:, None], 0.0)  # [B, T]
    gids = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    return normalize(tokens, gids, mean_level="batch", std_level="batch", mask=m, unbiased=unbiased, eps=eps)


def remax_advantages(token_rewards: torch.Tensor, baseline_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ReMax: A_t = Σ_{t' ≥ t} m·r_t' − b, with b the reward of the greedy (baseline) rollout `[B]`."""
    m = _check(token_rewards, mask)
    r = torch.where(m, token_rewards.to(torch.float64), 0.0)
    to_go = torch.flip(torch.cumsum(torch.flip(r, [1]), dim=1), [1])  # [B, T]
    return torch.where(m, to_go - baseline_rewards.to(torch.float64)[:, None], 0.0)


@torch.no_grad()
def passk_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Pass@k (best-of-group): the group's best sequence gets r_max − r_second, every other 0.

    With `norm_by_std`, divided by (σ_g + eps), σ_g the unbiased group reward std. Ties for the
    best give 0 (r_max = r_second). Groups need at least 2 members (ValueError otherwise).
    """
    num, idx = group_index(group_ids)
    r = rewards.to(torch.float64)
    out = torch.zeros_like(r)
    for g in range(num):
        rows = torch.nonzero(idx == g).squeeze(1)
        if rows.numel() < 2:
            raise ValueError(f"pass@k advantages need >= 2 samples per group; group {int(group_ids[rows[0]])} has 1")
        top = torch.topk(r[rows], 2)
        adv = top.values[0] - top.values[1]
        if norm_by_std:
            adv = adv / (r[rows].std() + eps)
        out[rows[top.indices[0]]] = adv
    return out


@torch.no_grad()
def gpg_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, f_norm: float = 1.0) -> torch.Tensor:
    """GPG (Chu et al. 2504.02546): A = α·(r − mean_g r)/f_norm with α = B / max(B − M, 1).

    M counts the sequences of groups whose rewards are all equal (their advantage is 0), so the
    gradient is rescaled to the valid samples. (verl's `gpg` counts non-zero rewards instead.)
    """
    num, idx = group_index(group_ids)
    r = rewards.to(torch.float64)
    centred = normalize(r, group_ids, mean_level="group", std_level="none")
    n = scatter_sum(torch.ones_like(r), idx, num)
    spread = scatter_sum((centred != 0).to(torch.float64), idx, num)  # members with nonzero advantage
    invalid = float(n[spread == 0].sum())
    alpha = r.numel() / max(r.numel() - invalid, 1.0)
    return alpha * centred / f_norm


@torch.no_grad()
def gae(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation with a critic's per-token values: `(advantages, returns)`.

    δ_t = r_t + γ·V_next − V_t;  Â_t = δ_t + γλ·Â_next;  returns R_t = Â_t + V_t.
    "next" is the next *valid* token of the row (masked positions pass V and Â through); after the
    last valid token V_next = Â_next = 0. Advantages are raw: whiten them with `normalize`
    (batch/batch, token level) as verl and OpenRLHF do.
    """
    m = _check(token_rewards, mask)
    if values.shape != m.shape:
        raise ValueError(f"values {tuple(values.shape)} does not match mask {tuple(m.shape)}")
    r = torch.where(m, token_rewards.to(torch.float64), 0.0)
    v = torch.where(m, values.detach().to(torch.float64), 0.0)
    B, T = r.shape
    adv = torch.zeros_like(r)
    next_v = torch.zeros(B, dtype=torch.float64, device=r.device)
    next_a = torch.zeros_like(next_v)
    for t in reversed(range(T)):
        a_t = r[:, t] + gamma * next_v - v[:, t] + gamma * lam * next_a
        next_v = torch.where(m[:, t], v[:, t], next_v)
        next_a = torch.where(m[:, t], a_t, next_a)
        adv[:, t] = torch.where(m[:, t], a_t, 0.0)
    return adv, torch.where(m, adv + v, 0.0)
