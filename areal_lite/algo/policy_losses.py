"""Policy losses beside PPO's clip (loss.policy_loss): CISPO, SAPO, GMPO, REINFORCE/GPG, Clip-Cov, KL-Cov,
plus the entropy bonus and the top-entropy-token mask.

Same contract as `policy_loss`: padded `[B, T]` inputs with a bool `mask`, `old_logp` the proximal
log-probs (a constant), advantages `[B, T]` or `[B]`; each returns the per-token loss `[B, T]` (0 where
masked) and a stats dict of 0-d float64 tensors (`*_count` / `*_sum` add up over micro-batches, see
`aggregate_stats`). Reduce with `reduce_loss`. Formulas: docs/algorithms.md, "More policy losses".
"""

from __future__ import annotations

import torch


def _prepare(logp, old_logp, advantages, mask):
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("mask", mask)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(logp.shape)}")
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand(logp.shape)
    if advantages.shape != logp.shape:
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected {tuple(logp.shape)}")
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    adv = torch.where(m, advantages.detach().to(logp.dtype), zero)
    log_ratio = None
    if old_logp is not None:
        # NOTE: masked before exp, so that padding garbage never reaches a value or a gradient.
        log_ratio = torch.where(m, logp - old_logp.detach().to(logp.dtype), zero)
    return m, adv, log_ratio, zero


def _count(x: torch.Tensor) -> torch.Tensor:
    return x.sum().to(torch.float64)


def cispo_loss(logp, old_logp, advantages, mask, *, eps_low: float | None = None, eps_high: float = 0.28):
    """CISPO (MiniMax-M1): ℓ = −sg(clip(r, 1 − eps_low, 1 + eps_high))·A·logp, r = exp(logp − old_logp).

    The clipped ratio is a constant weight, so every token keeps a gradient −w·A·∇logp.
    `eps_low=None` leaves the ratio unbounded below (the paper's setting).
    """
    m, adv, log_ratio, zero = _prepare(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio).detach()
    lo = 0.0 if eps_low is None else 1.0 - eps_low
    w = torch.clamp(ratio, min=lo, max=1.0 + eps_high)
    loss = torch.where(m, -w * adv * logp, zero)
    return loss, {"n_tokens": _count(m), "clipped_count": _count((w != ratio) & m)}


def sapo_loss(logp, old_logp, advantages, mask, *, tau_pos: float = 1.0, tau_neg: float = 1.05):
    """SAPO (Qwen, 2511.20347): ℓ = −(4/τ)·sigmoid(τ·(r − 1))·A, τ = tau_pos where A > 0 else tau_neg.

    A smooth gate replacing the hard clip: at r = 1 its slope is 1 (the unclipped gradient).
    """
    m, adv, log_ratio, zero = _prepare(logp, old_logp, advantages, mask)
    if not (tau_pos > 0 and tau_neg > 0):
        raise ValueError(f"tau_pos and tau_neg must be > 0, got {tau_pos}, {tau_neg}")
    ratio = torch.exp(log_ratio)
    tau = torch.where(adv > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return torch.where(m, -gate * adv, zero), {"n_tokens": _count(m)}


def reinforce_loss(logp, advantages, mask):
    """Plain REINFORCE (and GPG's loss): ℓ = −A·logp. On-policy: no ratio, no clip."""
    m, adv, _, zero = _prepare(logp, None, advantages, mask)
    return torch.where(m, -adv * logp, zero), {"n_tokens": _count(m)}


def gmpo_loss(logp, old_logp, advantages, mask, *, eps_low: float = 0.4, eps_high: float = 0.4):
    """GMPO (geometric-mean policy optimisation, 2507.20673), one loss per sequence on all its tokens.

    Δ_t = logp − old_logp; with s_t = sign(A_t): Δ'_t = s_t·min(s_t·Δ_t, s_t·clip(Δ_t, −eps_low, eps_high));
    ρ_i = exp(mean_t Δ'_t); ℓ_i = −Ā_i·ρ_i with Ā_i the sequence's mean token advantage. ℓ_i is
    written on every token of the sequence, so `seq_mean_token_mean` gives mean_i ℓ_i. (The sign is
    per token, as verl's `geo_mean`; with one advantage per sequence it is the paper's sign(A_i).)
    """
    m, adv, log_ratio, zero = _prepare(logp, old_logp, advantages, mask)
    n_i = m.sum(dim=1).clamp(min=1)
    seq_adv = adv.sum(dim=1) / n_i  # [B]
    sign = torch.sign(adv)
    clipped = torch.clamp(log_ratio, -eps_low, eps_high)
    kept = sign * torch.minimum(sign * log_ratio, sign * clipped)
    rho = torch.exp(torch.where(m, kept, zero).sum(dim=1) / n_i)  # [B]
    loss = torch.where(m, (-seq_adv * rho)[:, None].expand_as(logp), zero)
    return loss, {"n_tokens": _count(m), "clipped_count": _count((clipped != log_ratio) & m)}


def _cov(adv: torch.Tensor, logp: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-token centred product (A − mean A)(logp − mean logp) over the valid tokens given."""
    n = m.sum().clamp(min=1)
    a_mean = torch.where(m, adv, 0.0).sum() / n
    l_mean = torch.where(m, logp.detach(), 0.0).sum() / n
    return (adv - a_mean) * (logp.detach() - l_mean)


def clip_cov_loss(
    logp, old_logp, advantages, mask, *, eps_clip: float = 0.2, eps_clip_higher: float | None = None,
    ratio: float = 2e-4, cov_lb: float = 1.0, cov_ub: float = 5.0, generator: torch.Generator | None = None,
):
    """Clip-Cov (2505.22617): PPO's clipped loss, with max(1, ⌊ratio·N⌋) tokens drawn at random among
    those PPO did not clip and whose covariance cov_lb < (A − Ā)(logp − l̄) < cov_ub lies in the band;
    the drawn tokens get loss 0 (no gradient). Ā, l̄ are means over the valid tokens passed in
    (one micro-batch). The draw is `torch.randperm(#candidates)` on `generator` (global by default).
    """
    m, adv, log_ratio, zero = _prepare(logp, old_logp, advantages, mask)
    hi = eps_clip if eps_clip_higher is None else eps_clip_higher
    r = torch.exp(log_ratio)
    pg1, pg2 = -adv * r, -adv * torch.clamp(r, 1.0 - eps_clip, 1.0 + hi)
    cov = _cov(adv, logp, m)
    band = (cov > cov_lb) & (cov < cov_ub) & m & ~(pg2 > pg1)
    cand = torch.nonzero(band)  # [K, 2], row-major order
    num = max(int(ratio * int(m.sum())), 1)
    keep = torch.ones_like(m)
    if len(cand):
        pick = cand[torch.randperm(len(cand), generator=generator)[: min(num, len(cand))]]
        keep[pick[:, 0], pick[:, 1]] = False
    loss = torch.where(m & keep, torch.maximum(pg1, pg2), zero)
    return loss, {"n_tokens": _count(m), "cov_dropped_count": _count(~keep & m)}


def kl_cov_loss(logp, old_logp, advantages, mask, *, ratio: float = 2e-4, kl_coef: float = 1.0):
    """KL-Cov (2505.22617): unclipped ℓ = −A·r, plus kl_coef·|logp − old_logp| on the max(1, ⌊ratio·N⌋)
    valid tokens with the largest covariance (A − Ā)(logp − l̄) (means over the tokens passed in)."""
    m, adv, log_ratio, zero = _prepare(logp, old_logp, advantages, mask)
    loss = -adv * torch.exp(log_ratio)
    flat = torch.nonzero(m.reshape(-1)).squeeze(1)
    penalised = torch.zeros_like(m)
    if flat.numel():
        cov = _cov(adv, logp, m).reshape(-1)[flat]
        k = max(1, int(flat.numel() * ratio))
        penalised.view(-1)[flat[torch.topk(cov, k).indices]] = True
        loss = torch.where(penalised, loss + kl_coef * log_ratio.abs(), loss)
    return torch.where(m, loss, zero), {"n_tokens": _count(m), "kl_penalised_count": _count(penalised)}


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """Per-token entropy term −coef·H `[B, T]` (0 where masked), to add to the policy loss before
    `reduce_loss`, so that it is aggregated like the policy term (verl); gradients flow through H."""
    m = mask.to(torch.bool)
    return torch.where(m, -coef * entropy, torch.zeros((), dtype=entropy.dtype, device=entropy.device))


def top_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """The "80/20" high-entropy minority (2506.01939): valid tokens with H ≥ q, q the (1 − top_fraction)
    quantile (linear interpolation, `torch.quantile`) of the valid tokens' entropies passed in.
    `top_fraction` = 1 keeps every valid token."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    m = mask.to(torch.bool)
    h = entropy.detach()
    if top_fraction == 1 or not m.any():
        return m.clone()
    # NOTE: in the entropies' own dtype, so that float32 entropies get TRL's float32 threshold.
    q = torch.quantile(h[m], 1.0 - top_fraction)
    return (h >= q) & m
