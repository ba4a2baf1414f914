"""The advantage builder: `build_advantage_fn(cfg.actor)` reads the `actor` section once and returns
`advantage_fn(batch, rows, kl=None) → Advantages`.

    shaped rewards (bias, scale, clip, truncation, DAPO overlong penalty)
    → group filter (RAGEN's rollout filter, or the top-k-by-std ratio form)
    → the estimator over the kept sequences (`adv_estimator`)
    → the filter's loss scaling → Dr.GRPO+ soft reweighting

Every estimator sees only the kept sequences, so its statistics describe exactly what is trained.
With `kl_in_reward` the KL penalty enters as token rewards: −kl_ctl·KL_t on each token, summed
into returns by the return-based estimators (reinforce_pp, reinforce_pp_baseline, gae) and added
as the reward-to-go (γ = 1) by the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from areal_lite import algo
from areal_lite.trainer.batch import SeqBatch
from areal_lite.trainer.rows import StepRows


@dataclass
class Advantages:
    """Per-token advantages `[B, T]` (0 on dropped sequences and untrained tokens), which sequences
    were kept, their statistics, and the critic's targets (GAE's returns `[B, T]`, else None)."""

    keep: torch.Tensor  # [B] bool
    rows: torch.Tensor  # [B, T] float32
    stats: dict[str, float]
    returns: torch.Tensor | None = None  # [B, T] float32


@dataclass
class EstimatorInputs:
    """An estimator's view of the kept sequences (K of them)."""

    rewards: torch.Tensor  # [K] float64, shaped outcome rewards
    group_ids: torch.Tensor  # [K]
    mask: torch.Tensor  # [K, T] bool
    kl: torch.Tensor | None = None  # [K, T] float64, per-token KL estimate (kl_in_reward)
    entropy: torch.Tensor | None = None  # [K, T] float64, proximal entropies
    values: torch.Tensor | None = None  # [K, T] float64, critic values
    baselines: torch.Tensor | None = None  # [K] float64, ReMax's greedy-answer rewards (bias, scaling, clip applied)


AdvantageFn = Callable[..., Advantages]
# EstimatorInputs → (advantages [K, T], returns [K, T] or None, stats)
Estimator = Callable[[EstimatorInputs], tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]]
# (shaped rewards [B], group ids [B], generated lengths [B]) → (keep [B], advantage scale, stats)
GroupFilter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, float, dict[str, float]]]


def build_advantage_fn(actor: Any, *, max_new_tokens: int) -> AdvantageFn:
    """`advantage_fn(batch, rows, kl=None) → Advantages` for the `actor` section (`kl`: `[B, T]`,
    the KL estimate per token when the KL penalty is in the reward)."""
    group_filter = build_group_filter(actor)
    estimate = build_estimator(actor)

    def advantage_fn(batch: SeqBatch, rows: StepRows, *, kl: torch.Tensor | None = None) -> Advantages:
        shaped = _shaped_rewards(actor, batch, max_new_tokens)
        group_ids = torch.from_numpy(batch.group_ids)
        keep, scale, stats = group_filter(shaped, group_ids, torch.from_numpy(batch.gen_lens()))
        kept = keep.nonzero().squeeze(1)

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[kept].double()

        x = EstimatorInputs(rewards=shaped[kept], group_ids=group_ids[kept], mask=rows.mask[kept], kl=pick(kl),
                            entropy=pick(rows.entropy), values=pick(rows.values),
                            baselines=pick(_shaped_baselines(actor, batch)))
        adv, returns, estats = estimate(x)
        stats.update(estats)
        if scale != 1.0:
            adv = adv * scale
        if actor.group_filter.soft_reweight:
            adv, sstats = algo.soft_reweight(adv, x.rewards, x.group_ids)
            stats.update({f"train/soft_reweight_{k}": v for k, v in sstats.items()})
        if x.kl is not None:
            per_seq = (x.kl * x.mask).sum(1)
            stats["reward/kl_penalty_mean"] = float(per_seq.mean() * actor.kl_ctl) if kept.numel() else 0.0
        out = _batch_rows(adv, kept, rows.mask.shape)
        stats.update(_advantage_stats(out, rows.mask & keep[:, None], shaped, keep))
        return Advantages(keep, out, stats, returns=None if returns is None else _batch_rows(returns, kept,
                                                                                              rows.mask.shape))

    return advantage_fn


def _batch_rows(values: torch.Tensor, kept: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float32)
    out[kept] = values.float()
    return out


def _shaped_rewards(actor: Any, batch: SeqBatch, max_new_tokens: int) -> torch.Tensor:
    """Outcome rewards [B] after bias, scaling, clipping, truncation masking and the overlong penalty."""
    shaped = algo.shape_rewards(
        torch.from_numpy(batch.rewards.astype(np.float64)), bias=actor.reward_bias, scaling=actor.reward_scaling,
        clip=actor.reward_clip, truncated=torch.from_numpy(batch.truncated) if actor.mask_truncated_reward else None,
    )
    o = actor.overlong_penalty
    if o.enabled:
        shaped = shaped + algo.overlong_penalty(torch.from_numpy(batch.gen_lens()), max_len=max_new_tokens,
                                                buffer_len=o.buffer_len, factor=o.penalty_factor)
    return shaped


def _shaped_baselines(actor: Any, batch: SeqBatch) -> torch.Tensor | None:
    """ReMax's baselines [B] (the greedy answer's reward) under the outcome's bias, scaling and clip;
    the truncation mask and the overlong penalty are the sampled answer's, so they are not applied."""
    if actor.adv_estimator != "remax":
        return None
    b = batch.baseline_rewards
    if b is None or np.isnan(b).any():
        missing = sorted({batch.prompt_ids[i] for i in np.flatnonzero(np.isnan(b))}) if b is not None else ["all"]
        raise ValueError(f"actor.adv_estimator=remax: no baseline_reward for prompt(s) {missing[:3]}: the workflow "
                         f"must send its greedy answer's reward (RLVRWorkflow(greedy_baseline=True))")
    return algo.shape_rewards(torch.from_numpy(b), bias=actor.reward_bias, scaling=actor.reward_scaling,
                              clip=actor.reward_clip)


# ------------------------------------------------------------------------------------ group filters


def build_group_filter(actor: Any) -> GroupFilter:
    """RAGEN's rollout filter (`actor.rollout_filter`), or its ratio form (`group_filter.top_k_ratio`
    < 1: the k = max(1, ⌊ratio·G⌋) groups of largest reward std), or keep everything."""
    rf, ratio = actor.rollout_filter, actor.group_filter.top_k_ratio
    if rf.enabled:
        def ragen(shaped, group_ids, lengths):
            keep, fstats = algo.rollout_filter(
                shaped, group_ids, metric=rf.metric, lengths=lengths, strategy=rf.strategy, value=rf.value,
                filter_type=rf.filter_type, include_zero=rf.include_zero, top_p_mode=rf.top_p_mode,
                selection_eps=rf.selection_eps,
            )
            scale = algo.filter_loss_scale(fstats["kept_ratio"], rf.loss_scaling)
            return keep, scale, {**{f"filter/{k}": float(v) for k, v in fstats.items()}, "filter/loss_scale": scale}

        return ragen
    if ratio < 1.0:
        def top_k(shaped, group_ids, lengths):
            keep, fstats = algo.top_k_groups_by_std(shaped, group_ids, ratio=ratio)
            return keep, 1.0, {f"filter/{k}": float(v) for k, v in fstats.items()}

        return top_k
    return lambda shaped, group_ids, lengths: (torch.ones(shaped.shape[0], dtype=torch.bool), 1.0, {})


# ------------------------------------------------------------------------------------ estimators


def build_estimator(actor: Any) -> Estimator:
    """The `adv_estimator` of the `actor` section (docs/algorithms.md, "Advantage estimators")."""
    builders = {
        "normalize": _normalize, "reinforce_pp": _reinforce_pp, "reinforce_pp_baseline": _reinforce_pp_baseline,
        "passk": _passk, "gpg": _gpg, "gae": _gae, "remax": _remax,
    }
    if actor.adv_estimator not in builders:
        raise ValueError(f"actor.adv_estimator={actor.adv_estimator} is not available in the trainer")
    return builders[actor.adv_estimator](actor)


def _token_rewards(actor: Any, x: EstimatorInputs, outcome: torch.Tensor) -> torch.Tensor:
    """`[K, T]` token rewards: the outcome on each sequence's last trained token, −kl_ctl·KL_t on every
    trained token when the KL is in the reward."""
    r = algo.outcome_token_rewards(outcome, x.mask)
    if x.kl is not None:
        r = r - actor.kl_ctl * torch.where(x.mask, x.kl, 0.0)
    return r


def _with_kl_to_go(actor: Any, x: EstimatorInputs, seq_adv: torch.Tensor) -> torch.Tensor:
    """Sequence advantages `[K]` on their tokens, minus kl_ctl·(KL reward-to-go) when the KL is in the reward."""
    adv = torch.where(x.mask, seq_adv[:, None], 0.0)
    return adv if x.kl is None else adv + algo.kl_reward_to_go(x.kl, x.mask, actor.kl_ctl)


def _whiten(actor: Any, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x − mean)/(std + eps) over the batch's trained tokens (`adv_norm.unbiased`, `adv_norm.eps`)."""
    n = actor.adv_norm
    zeros = torch.zeros(mask.shape[0], dtype=torch.long)
    return algo.normalize(values, zeros, mean_level="batch", std_level="batch", mask=mask, unbiased=n.unbiased,
                          eps=n.eps)


def _whitened_returns(actor: Any, x: EstimatorInputs, outcome: torch.Tensor) -> torch.Tensor:
    """Discounted returns (γ) of the token rewards, whitened over the batch's trained tokens."""
    n = actor.adv_norm
    return algo.reinforce_pp_advantages(_token_rewards(actor, x, outcome), x.mask, gamma=actor.gamma,
                                        unbiased=n.unbiased, eps=n.eps)


def _normalize(actor: Any) -> Estimator:
    """`adv_norm` on sequence rewards broadcast to their tokens, or on per-token values (outcome
    minus the KL reward-to-go) with `weighting=token` or the KL in the reward; GTPO/GRPO-S
    entropy shaping instead when `entropy_shaping.mode` is set."""
    n = actor.adv_norm
    kw = dict(mean_level=n.mean_level, std_level=n.std_level, leave_one_out=n.leave_one_out, unbiased=n.unbiased,
              eps=n.eps)

    def estimate(x: EstimatorInputs):
        if actor.entropy_shaping.mode != "none":
            return _entropy_shaped(actor, x)
        if x.kl is None and n.weighting == "sequence":
            return torch.where(x.mask, algo.normalize(x.rewards, x.group_ids, **kw)[:, None], 0.0), None, {}
        values = _with_kl_to_go(actor, x, x.rewards)
        return algo.normalize(values, x.group_ids, mask=x.mask, **kw), None, {}

    return estimate


def _reinforce_pp(actor: Any) -> Estimator:
    """REINFORCE++: discounted token returns (γ), whitened over the batch's tokens."""
    def estimate(x: EstimatorInputs):
        return _whitened_returns(actor, x, x.rewards), None, {}

    return estimate


def _reinforce_pp_baseline(actor: Any) -> Estimator:
    """REINFORCE++-baseline: the group mean subtracted from the outcome, then as REINFORCE++ (at γ = 1
    without KL this is `algo.reinforce_pp_baseline_advantages`)."""
    def estimate(x: EstimatorInputs):
        centred = algo.normalize(x.rewards, x.group_ids, mean_level="group", std_level="none")
        return _whitened_returns(actor, x, centred), None, {}

    return estimate


def _remax(actor: Any) -> Estimator:
    """ReMax: the token rewards' reward-to-go minus the prompt's greedy-answer reward (no whitening)."""
    def estimate(x: EstimatorInputs):
        adv = algo.remax_advantages(_token_rewards(actor, x, x.rewards), x.baselines, x.mask)
        return adv, None, {"reward/baseline_mean": float(x.baselines.mean()) if x.baselines.numel() else 0.0}

    return estimate


def _passk(actor: Any) -> Estimator:
    """Pass@k: the group's best answer gets its margin over the second best (÷ σ_g with `passk_norm_by_std`)."""
    def estimate(x: EstimatorInputs):
        seq = algo.passk_advantages(x.rewards, x.group_ids, norm_by_std=actor.passk_norm_by_std, eps=actor.adv_norm.eps)
        return _with_kl_to_go(actor, x, seq), None, {}

    return estimate


def _gpg(actor: Any) -> Estimator:
    """GPG: group-centred rewards rescaled by B / (B − members of all-equal groups), ÷ `gpg_f_norm`."""
    def estimate(x: EstimatorInputs):
        return _with_kl_to_go(actor, x, algo.gpg_advantages(x.rewards, x.group_ids, f_norm=actor.gpg_f_norm)), None, {}

    return estimate


def _gae(actor: Any) -> Estimator:
    """GAE(γ, λ) over the critic's values; the advantages whitened over the batch's tokens, the raw
    returns Â + V the critic's targets."""
    def estimate(x: EstimatorInputs):
        if x.values is None:
            raise ValueError("actor.adv_estimator=gae: the step rows need the critic's values")
        adv, returns = algo.gae(_token_rewards(actor, x, x.rewards), x.values, x.mask, gamma=actor.gamma,
                                lam=actor.gae_lambda)
        m = x.mask.double()
        stats = {"critic/returns_mean": float((returns * m).sum() / m.sum().clamp(min=1)),
                 "critic/values_mean": float((x.values * m).sum() / m.sum().clamp(min=1))}
        return _whiten(actor, adv, x.mask), returns, stats

    return estimate


def _entropy_shaped(actor: Any, x: EstimatorInputs):
    """GTPO (token) or GRPO-S (sequence) advantages of the kept sequences, `[K, T]`."""
    if x.entropy is None:
        raise ValueError("actor.entropy_shaping is on: the advantages need the proximal entropies")
    n, beta, r, g, mask = actor.adv_norm, actor.entropy_shaping.beta, x.rewards, x.group_ids, x.mask
    if actor.entropy_shaping.mode == "token":
        shaped, positive = algo.gtpo_token_rewards(r, x.entropy, mask, g, beta=beta)
        adv = algo.entropy_shaped_advantages(shaped, positive, g, mask=mask, unbiased=n.unbiased, eps=n.eps)
    else:
        shaped, positive = algo.grpo_s_rewards(r, x.entropy, mask, g, beta=beta)
        adv = algo.entropy_shaped_advantages(shaped, positive, g, unbiased=n.unbiased, eps=n.eps)[:, None]
    m = mask.double()
    return torch.where(mask, adv, 0.0), None, {
        "entropy_shaping/success_frac": float(positive.double().mean()) if r.numel() else 0.0,
        "entropy_shaping/entropy_mean": float((x.entropy * m).sum() / m.sum().clamp(min=1)),
    }


def _advantage_stats(adv: torch.Tensor, trained: torch.Tensor, shaped: torch.Tensor, keep) -> dict[str, float]:
    vals = adv[trained]
    some = vals.numel() > 0
    return {
        "reward/shaped_mean": float(shaped.mean()),
        "adv/mean": float(vals.mean()) if some else 0.0,
        "adv/std": float(vals.std(unbiased=False)) if some else 0.0,
        "adv/max": float(vals.max()) if some else 0.0,
        "adv/min": float(vals.min()) if some else 0.0,
        "filter/kept_seqs": float(keep.sum()),
    }
