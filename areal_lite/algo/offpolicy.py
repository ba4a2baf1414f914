"""Off-policy corrections beside the decoupled weight of `policy_loss`: sequence-level importance
weights / rejection (sequence TIS and MIS) and AReaL's log-linear proximal log-probs.

All results are constants (no grad). Formulas: docs/algorithms.md, "Off-policy corrections".
"""

from __future__ import annotations

import torch

from areal_lite.algo.options import SEQ_IS_AGGS, SEQ_IS_MODES, parse_option


@torch.no_grad()
def sequence_is_weights(
    old_logp: torch.Tensor,
    behav_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: str = "product",
    mode: str = "truncate",
    cap: float = 2.0,
    lower: float | None = None,
    log_bound: float = 20.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One importance weight per sequence, broadcast to its tokens `[B, T]` (0 where masked).

    log w_i = Σ_t m·(old_logp − behav_logp) (`agg="product"`) or its mean over the n_i valid tokens
    (`"geometric"`), clipped to ±log_bound before exp. `mode="truncate"` (sequence TIS):
    w = min(w, cap). `mode="mask"` (sequence MIS / rejection): w is kept where lower ≤ w ≤ cap
    (lower defaults to 0) and set to 0 otherwise, which drops the whole sequence.
    Multiply the per-token loss by it (after `policy_loss`, before `reduce_loss`).
    """
    agg = parse_option(agg, SEQ_IS_AGGS, "seq_is_agg")
    mode = parse_option(mode, SEQ_IS_MODES, "seq_is_mode")
    if old_logp.dim() != 2 or behav_logp.shape != old_logp.shape or mask.shape != old_logp.shape:
        raise ValueError("old_logp, behav_logp and mask must share one [B, T] shape")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    m = mask.to(torch.bool)
    log_w = torch.where(m, old_logp.double() - behav_logp.double(), 0.0).sum(dim=1)  # [B]
    if agg == "geometric":
        log_w = log_w / m.sum(dim=1).clamp(min=1)
    raw = torch.exp(log_w.clamp(-log_bound, log_bound))  # [B]
    if mode == "truncate":
        w = raw.clamp(max=cap)
        changed = raw > cap
    else:
        lo = 0.0 if lower is None else lower
        changed = (raw < lo) | (raw > cap)
        w = torch.where(changed, 0.0, raw)
    has = m.any(dim=1)
    stats = {
        "n_seqs": has.sum().to(torch.float64),
        "seq_is_weight_sum": raw[has].sum(),
        "seq_is_capped_count": (changed & has).sum().to(torch.float64),
    }
    return torch.where(m, w[:, None], 0.0), stats


@torch.no_grad()
def prox_logp_loglinear(
    behav_logp: torch.Tensor, logp: torch.Tensor, versions: torch.Tensor, current_version: int
) -> torch.Tensor:
    """AReaL's log-linear proximal log-probs, which skip the proximal forward pass.

    The proximal policy is version v_p = current_version − 1, the behaviour token was sampled at
    v_b = `versions`, the current policy is v_θ = current_version:
        α = clip((v_p − v_b)/(v_θ − v_b), 0, 1)   (α = 0 where v_θ ≤ v_b or v_b < 0)
        prox_logp = behav_logp + α·(logp − behav_logp)
    i.e. the geometric interpolation between the behaviour and current token probabilities.
    `logp` is detached: the result is a constant.
    """
    if behav_logp.shape != logp.shape or versions.shape != logp.shape:
        raise ValueError(
            f"behav_logp {tuple(behav_logp.shape)}, logp {tuple(logp.shape)} and versions "
            f"{tuple(versions.shape)} must have one shape"
        )
    v_b = versions.to(torch.float64)
    diff = float(current_version) - v_b
    gap = float(current_version - 1) - v_b
    alpha = torch.where((diff > 0) & (versions >= 0), gap / diff.clamp(min=1e-300), 0.0).clamp(0.0, 1.0)
    out = behav_logp.double() + alpha * (logp.detach().double() - behav_logp.double())
    return out.to(logp.dtype)
