"""Policy loss (PPO, dual clip, decoupled PPO, GSPO), loss reductions and KL estimators.

Every function takes padded `[B, T]` tensors with a bool `mask` (True on trained completion tokens)
and returns new tensors. Per-token losses are reduced separately by `reduce_loss`, so that one
reduction formula serves the policy term and any KL term alike.
"""

from __future__ import annotations

import math

import torch

from areal_lite.algo.options import (
    BEHAV_WEIGHT_MODES,
    KL_ESTIMATORS,
    RATIO_LEVELS,
    parse_loss_reduction,
    parse_option,
)


def _check_2d(name: str, t: torch.Tensor, shape: torch.Size) -> None:
    if t.shape != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def reduce_loss(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    norm_constant: float | None = None,
    total_tokens: float | None = None,
    total_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce a `[B, T]` per-token loss to a scalar (m = mask, ℓ = token_loss, n_i = Σ_t m_it).

    - `token_mean`:              Σ m·ℓ / N
    - `seq_mean_token_mean`:     (1/S) Σ_i (Σ_t m·ℓ) / n_i      (alias `sequence_mean`)
    - `seq_mean_token_sum`:      Σ m·ℓ / S
    - `seq_mean_token_sum_norm`: Σ m·ℓ / (S·C), C = `norm_constant` (Dr.GRPO: the generation budget)
    - `token_sum`:               Σ m·ℓ

    N defaults to Σ m and S to the number of rows with at least one valid token. Pass
    `total_tokens` / `total_seqs` (the counts of the whole optimizer minibatch, over all
    micro-batches and ranks) and the micro-batch losses sum exactly to the full-minibatch loss,
    provided no sequence is split across micro-batches. `norm_constant` is ignored by the other
    modes. Rows without valid tokens contribute 0; masked positions never contribute (even NaN).
    """
    mode = parse_loss_reduction(mode)
    _check_2d("mask", mask, token_loss.shape)
    if token_loss.dim() != 2:
        raise ValueError(f"token_loss must be [B, T], got shape {tuple(token_loss.shape)}")
    m = mask.to(torch.bool)
    masked = torch.where(m, token_loss, torch.zeros((), dtype=token_loss.dtype, device=token_loss.device))
    total = masked.sum()
    if mode == "token_sum":
        return total
    if mode == "token_mean":
        return total / _denominator(total_tokens, m.sum(), "total_tokens")
    n_i = m.sum(dim=1)
    seqs = _denominator(total_seqs, (n_i > 0).sum(), "total_seqs")
    if mode == "seq_mean_token_mean":
        return (masked.sum(dim=1) / n_i.clamp(min=1)).sum() / seqs
    if mode == "seq_mean_token_sum":
        return total / seqs
    if norm_constant is None or not norm_constant > 0:
        raise ValueError(
            f"seq_mean_token_sum_norm needs norm_constant > 0 (the generation budget), got {norm_constant!r}"
        )
    return total / (seqs * float(norm_constant))


def _denominator(given: float | None, local: torch.Tensor, name: str) -> float | torch.Tensor:
    """A count used as a divisor; an empty count divides an all-zero sum, so 1 is as good as 0."""
    if given is None:
        return local.clamp(min=1)
    if given < 0:
        raise ValueError(f"{name} must be >= 0, got {given}")
    return max(float(given), 1.0)


def loss_counts(mask: torch.Tensor) -> tuple[int, int]:
    """(tokens, sequences with at least one token) of a `[B, T]` mask: the `reduce_loss` counts."""
    m = mask.to(torch.bool)
    return int(m.sum()), int((m.sum(dim=1) > 0).sum())


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_clip: float = 0.2,
    eps_clip_higher: float | None = None,
    c_clip: float | None = None,
    behav_logp: torch.Tensor | None = None,
    behav_weight_cap: float | None = None,
    behav_weight_mode: str = "mask",
    ratio_level: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped policy-gradient loss `[B, T]` (0 where masked) and statistics.

    r = exp(logp − old_logp), old_logp being the proximal policy (a constant).
    ℓ = max(−A·r, −A·clip(r, 1 − eps_clip, 1 + eps_clip_higher)); eps_clip_higher defaults to eps_clip.
    Dual clip (`c_clip` > 1): ℓ = min(ℓ, −A·c_clip) where A < 0.
    Decoupled PPO (`behav_logp` given): ℓ ← w·ℓ with w = exp(old_logp − behav_logp), a constant;
    above `behav_weight_cap`, mode "mask" sets w = 0 and mode "clamp" uses w = cap. Tokens zeroed by
    the cap still count in the `reduce_loss` denominators (AReaL's convention).
    GSPO (`ratio_level="sequence"`): r is the sequence's geometric-mean ratio
    exp(mean_t∈valid (logp − old_logp)), broadcast to its tokens.
    `advantages` may be `[B, T]` or `[B]` (broadcast over tokens).

    Statistics are 0-d detached tensors meant to be aggregated over micro-batches and ranks by
    key suffix: `*_count` and `*_sum` add up, `*_max` take the maximum (see `aggregate_stats`).
    """
    ratio_level = parse_option(ratio_level, RATIO_LEVELS, "ratio_level")
    shape = logp.shape
    advantages = _checked_inputs(logp, old_logp, advantages, mask)
    if not eps_clip >= 0:
        raise ValueError(f"eps_clip must be >= 0, got {eps_clip}")
    hi = eps_clip if eps_clip_higher is None else eps_clip_higher
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    adv = torch.where(m, advantages.detach().to(logp.dtype), zero)
    # NOTE: mask before exp, so that garbage at padded positions can never reach a gradient.
    log_ratio = torch.where(m, logp - old_logp.detach().to(logp.dtype), zero)  # [B, T]
    if ratio_level == "sequence":
        n_i = m.sum(dim=1, keepdim=True).clamp(min=1)
        log_ratio = (log_ratio.sum(dim=1, keepdim=True) / n_i).expand(shape)  # [B, 1] → [B, T]
    ratio = torch.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - eps_clip, 1.0 + hi)
    loss = torch.maximum(pg_unclipped, pg_clipped)
    stats = {
        "n_tokens": m.sum().to(torch.float64),
        "clipped_count": ((pg_clipped > pg_unclipped) & m).sum().to(torch.float64),
    }
    if c_clip is not None:
        if not c_clip > 1:
            raise ValueError(f"c_clip must be > 1, got {c_clip}")
        pg_dual = -adv * c_clip
        dual = (adv < 0) & (loss > pg_dual)
        loss = torch.where(dual, pg_dual, loss)
        stats["dual_clipped_count"] = (dual & m).sum().to(torch.float64)
    if behav_logp is not None:
        _check_2d("behav_logp", behav_logp, shape)
        weight, wstats = behav_weight(old_logp, behav_logp, m, cap=behav_weight_cap, mode=behav_weight_mode)
        loss = loss * weight.to(loss.dtype)
        stats.update(wstats)
    loss = torch.where(m, loss, zero)
    with torch.no_grad():
        r = ratio.detach()
        stats["ratio_sum"] = torch.where(m, r, 0.0).sum().to(torch.float64)
        empty = torch.zeros((), dtype=torch.float64, device=r.device)
        stats["ratio_max"] = torch.where(m, r, 0.0).max().to(torch.float64) if r.numel() else empty
        # k1 estimate of KL(π_old ‖ π_θ) per token, summed: the usual "approx_kl" diagnostic.
        stats["approx_kl_sum"] = (-torch.where(m, log_ratio.detach(), 0.0)).sum().to(torch.float64)
    return loss, stats


def _checked_inputs(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """Shape checks of `policy_loss`'s inputs; returns the advantages as `[B, T]`."""
    shape = logp.shape
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(shape)}")
    for name, t in (("old_logp", old_logp), ("mask", mask)):
        _check_2d(name, t, shape)
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand(shape)
    _check_2d("advantages", advantages, shape)
    return advantages


def behav_weight(
    old_logp: torch.Tensor, behav_logp: torch.Tensor, mask: torch.Tensor, *, cap: float | None = None,
    mode: str = "mask",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decoupled-PPO behaviour weight w = exp(old_logp − behav_logp) `[B, T]` (float64, a constant;
    0 where masked); above `cap`, mode "mask" sets w = 0 and "clamp" uses w = cap. Statistics as
    `policy_loss`'s (`behav_weight_sum`, `behav_weight_max`, `behav_capped_count`)."""
    mode = parse_option(mode, BEHAV_WEIGHT_MODES, "behav_weight_mode")
    m = mask.to(torch.bool)
    with torch.no_grad():
        w_raw = torch.where(m, torch.exp(old_logp.detach().double() - behav_logp.detach().double()), 0.0)
        stats = {
            "behav_weight_sum": w_raw.sum(),
            "behav_weight_max": w_raw.max() if w_raw.numel() else torch.zeros_like(w_raw.sum()),
        }
        w = w_raw
        if cap is not None:
            over = (w_raw > cap) & m
            stats["behav_capped_count"] = over.sum().to(torch.float64)
            w = torch.where(over, 0.0, w_raw) if mode == "mask" else torch.clamp(w_raw, max=cap)
    return w, stats


def aggregate_stats(stats_list: list[dict[str, torch.Tensor | float]], group=None) -> dict[str, float]:
    """Combine per-micro-batch statistics: `*_max` by maximum, everything else by sum.

    With a process group the result is also reduced over its ranks (collective; every rank must
    hold the same keys).
    """
    import torch.distributed as dist

    sums: dict[str, float] = {}
    maxima: dict[str, float] = {}
    for stats in stats_list:
        for k, v in stats.items():
            v = float(v)
            if k.endswith("_max"):
                maxima[k] = max(maxima.get(k, -math.inf), v)
            else:
                sums[k] = sums.get(k, 0.0) + v
    if group is not None:
        for table, op in ((sums, dist.ReduceOp.SUM), (maxima, dist.ReduceOp.MAX)):
            keys = sorted(table)
            if keys:
                t = torch.tensor([table[k] for k in keys], dtype=torch.float64)
                dist.all_reduce(t, op=op, group=group)
                table.update(zip(keys, t.tolist()))
    return {**sums, **maxima}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str, clamp: float | None = None) -> torch.Tensor:
    """Per-token KL estimate with Δ = logp − ref_logp: k1 = Δ, k2 = Δ²/2, k3 = exp(−Δ) − 1 + Δ.

    `clamp` clips the estimate to [−clamp, clamp] (AReaL clamps every estimator at 10; verl and
    SkyRL only k3). Gradients flow through `logp` and `ref_logp` as given (detach `ref_logp`).
    """
    kind = parse_option(kind, KL_ESTIMATORS, "kl_estimator")
    delta = logp - ref_logp
    if clamp is not None:
        if not clamp > 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        # |k| ≥ clamp for every estimator once |Δ| ≥ clamp + 1, so pre-clipping Δ there leaves
        # the clamped values unchanged and keeps exp(−Δ) finite (no inf·0 = NaN in backward).
        delta = delta.clamp(-(clamp + 1.0), clamp + 1.0)
    if kind == "k1":
        kl = delta
    elif kind == "k2":
        kl = 0.5 * delta * delta
    else:
        kl = torch.expm1(-delta) + delta  # expm1: exact near Δ = 0, where k3 ≈ Δ²/2
    return kl if clamp is None else kl.clamp(-clamp, clamp)


def kl_reward_to_go(kl: torch.Tensor, mask: torch.Tensor, kl_ctl: float) -> torch.Tensor:
    """`kl_in_reward` term of the advantage with γ = λ = 1 and no critic: −kl_ctl·Σ_{t' ≥ t} m·kl_t'.

    `kl` is `[B, T]` (computed with the proximal or behaviour log-probs, so a constant); the
    result is 0 at masked positions.
    """
    _check_2d("mask", mask, kl.shape)
    m = mask.to(torch.bool)
    k = torch.where(m, kl.detach(), 0.0)
    future = torch.flip(torch.cumsum(torch.flip(k, [1]), dim=1), [1])  # [B, T]
    return torch.where(m, -kl_ctl * future, 0.0)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
    clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss per token `[B, T]` (0 where masked) and statistics.

    ℓ = ½·max((V − R)², (V_clip − R)²) with V_clip = V_old + clip(V − V_old, −clip, clip) (V_old
    and R constants); `clip=None`: ℓ = ½·(V − R)². Reduce with `reduce_loss`. Statistics:
    `n_tokens`, `clipped_count` (the clipped branch is larger), `value_sum`, `sq_error_sum` (Σ (V − R)²).
    """
    _check_2d("old_values", old_values, values.shape)
    _check_2d("returns", returns, values.shape)
    _check_2d("mask", mask, values.shape)
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    ret = torch.where(m, returns.detach().to(values.dtype), zero)
    old = torch.where(m, old_values.detach().to(values.dtype), zero)
    v = torch.where(m, values, zero)  # NOTE: masked first, so that padding never reaches a gradient
    unclipped = (v - ret) ** 2
    loss = unclipped
    clipped_count = torch.zeros((), dtype=torch.float64, device=values.device)
    if clip is not None:
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        clipped = (old + torch.clamp(v - old, -clip, clip) - ret) ** 2
        loss = torch.maximum(unclipped, clipped)
        clipped_count = ((clipped > unclipped) & m).sum().to(torch.float64)
    with torch.no_grad():
        stats = {"n_tokens": m.sum().to(torch.float64), "clipped_count": clipped_count,
                 "value_sum": v.detach().sum().to(torch.float64), "sq_error_sum": unclipped.detach().sum().to(torch.float64)}
    return torch.where(m, 0.5 * loss, zero), stats
