"""`reduce_loss`, `policy_loss`, `kl_estimate`: PEER_SEMANTICS TC12-TC18 and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from areal_lite.algo import (
    LOSS_REDUCTIONS,
    aggregate_stats,
    kl_estimate,
    kl_reward_to_go,
    loss_counts,
    parse_loss_reduction,
    policy_loss,
    reduce_loss,
)

F64 = torch.float64

# TC12: loss [[1,2,3,4,9],[5,6,7,8,9]], mask [[1,1,1,0,0],[1,0,0,0,0]] → n = (3, 1), Σ m·ℓ = 6 + 5 = 11
LOSS = torch.tensor([[1.0, 2, 3, 4, 9], [5, 6, 7, 8, 9]], dtype=F64)
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token_mean", 2.75),  # 11 / 4
        ("seq_mean_token_mean", 3.5),  # (6/3 + 5/1) / 2
        ("sequence_mean", 3.5),
        ("seq_mean_token_sum", 5.5),  # 11 / 2
        ("token_sum", 11.0),
        ("token-mean", 2.75),
        ("seq-mean-token-mean", 3.5),
        ("seq-mean-token-sum", 5.5),
        ("token-sum", 11.0),
    ],
)
def test_tc12_reductions(mode, expected):
    assert float(reduce_loss(LOSS, MASK, mode)) == pytest.approx(expected, abs=1e-15)


def test_tc12_sum_norm_constant():
    # 11 / (2 · 8): what SkyRL, TRL and oat give with budget 8 (verl-new with loss_scale_factor=8)
    assert float(reduce_loss(LOSS, MASK, "seq_mean_token_sum_norm", norm_constant=8)) == 0.6875
    assert float(reduce_loss(LOSS, MASK, "seq-mean-token-sum-norm", norm_constant=5)) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="norm_constant"):
        reduce_loss(LOSS, MASK, "seq_mean_token_sum_norm")


def test_tc13_micro_batches_with_global_counts():
    n_tok, n_seq = loss_counts(MASK)
    assert (n_tok, n_seq) == (4, 2)
    parts = [reduce_loss(LOSS[i : i + 1], MASK[i : i + 1], "token_mean", total_tokens=n_tok) for i in range(2)]
    assert float(sum(parts)) == 2.75  # 6/4 + 5/4
    legacy = sum(float(reduce_loss(LOSS[i : i + 1], MASK[i : i + 1], "token_mean")) for i in range(2)) / 2
    assert legacy == 3.5  # per-micro-batch token mean, averaged: what areal_lite never does


def test_empty_rows_and_nan_at_masked_positions():
    loss = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0], [7.0, 7.0]], dtype=F64)
    mask = torch.tensor([[True, False], [False, True], [False, False]])
    # row 3 has no valid token: it is not a sequence for S and contributes 0
    assert float(reduce_loss(loss, mask, "seq_mean_token_mean")) == 1.5
    assert float(reduce_loss(loss, mask, "seq_mean_token_sum")) == 1.5
    assert float(reduce_loss(loss, mask, "token_mean")) == 1.5
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for mode in LOSS_REDUCTIONS:
        assert float(reduce_loss(loss[:2, :1].expand(2, 3), empty, mode, norm_constant=4)) == 0.0


def test_bad_reduction_name_lists_choices():
    with pytest.raises(ValueError, match="seq_mean_token_summ.*token_mean, seq_mean_token_mean"):
        parse_loss_reduction("seq_mean_token_summ")
    assert parse_loss_reduction("SEQUENCE-MEAN") == "seq_mean_token_mean"


# ---------------------------------------------------------------- TC14: PPO per-token loss


def ppo(ratios, adv, **kw):
    r = torch.tensor([ratios], dtype=F64)
    a = torch.full_like(r, adv)
    loss, stats = policy_loss(torch.log(r), torch.zeros_like(r), a, torch.ones_like(r, dtype=torch.bool), **kw)
    return loss[0].tolist(), stats


def test_tc14_symmetric_clip_higher_and_dual_clip():
    pos = [0.5, 1.0, 1.25, 1.5]
    neg = [0.5, 1.0, 1.5, 4.0]
    assert ppo(pos, 1.0)[0] == pytest.approx([-0.5, -1.0, -1.2, -1.2])
    assert ppo(pos, 1.0, eps_clip_higher=0.28)[0] == pytest.approx([-0.5, -1.0, -1.25, -1.28])
    assert ppo(neg, -1.0)[0] == pytest.approx([0.8, 1.0, 1.5, 4.0])
    assert ppo(neg, -1.0, eps_clip_higher=0.28)[0] == pytest.approx([0.8, 1.0, 1.5, 4.0])
    loss, stats = ppo(neg, -1.0, c_clip=3.0)
    assert loss == pytest.approx([0.8, 1.0, 1.5, 3.0])
    assert float(stats["dual_clipped_count"]) == 1
    # clipping binds where the clipped term is the larger loss: r=1.5, A=+1 (→ −1.2) and r=0.5, A=−1 (→ 0.8)
    assert float(ppo(pos, 1.0)[1]["clipped_count"]) == 2
    assert float(ppo(neg, -1.0)[1]["clipped_count"]) == 1
    with pytest.raises(ValueError, match="c_clip"):
        ppo(neg, -1.0, c_clip=1.0)


def test_clip_gradients_vanish_only_where_clipped():
    r = torch.tensor([[0.5, 1.0, 1.5]], dtype=F64)
    logp = torch.log(r).requires_grad_()
    loss, _ = policy_loss(logp, torch.zeros_like(r), torch.ones_like(r), torch.ones_like(r, dtype=torch.bool))
    (g,) = torch.autograd.grad(loss.sum(), logp)
    # ∂(−A·r)/∂logp = −A·r where unclipped; 0 where the clipped branch is taken (r = 1.5 > 1.2)
    torch.testing.assert_close(g, torch.tensor([[-0.5, -1.0, 0.0]], dtype=F64))


# ---------------------------------------------------------------- TC15: decoupled PPO

LOGP = torch.tensor([[-1.0, -0.5, -2.0]], dtype=F64)
PROX = torch.tensor([[-1.1, -0.5, -2.0]], dtype=F64)
BEHAV = torch.tensor([[-1.3, -2.5, -1.9]], dtype=F64)
ADV = torch.tensor([[1.0, 1.0, -1.0]], dtype=F64)
ONES = torch.ones(1, 3, dtype=torch.bool)


def decoupled(**kw):
    loss, stats = policy_loss(LOGP, PROX, ADV, ONES, eps_clip=0.2, **kw)
    return float(reduce_loss(loss, ONES, "token_mean")), stats


def test_tc15_decoupled_ppo():
    # token losses before weighting: −e^{0.1}, −1, +1; weights e^{0.2}, e^{2}, e^{−0.1}
    base = [-math.exp(0.1), -1.0, 1.0]
    w = [math.exp(0.2), math.exp(2.0), math.exp(-0.1)]
    masked, stats = decoupled(behav_logp=BEHAV, behav_weight_cap=5.0, behav_weight_mode="mask")
    assert masked == pytest.approx((base[0] * w[0] + base[2] * w[2]) / 3, abs=1e-12)
    assert masked == pytest.approx(-0.148340, abs=1e-6)
    assert float(stats["behav_capped_count"]) == 1
    assert float(stats["behav_weight_max"]) == pytest.approx(7.389056, abs=1e-6)
    assert float(stats["behav_weight_sum"]) == pytest.approx(sum(w))
    clamped, _ = decoupled(behav_logp=BEHAV, behav_weight_cap=5.0, behav_weight_mode="clamp")
    assert clamped == pytest.approx(-1.815007, abs=1e-6)
    uncapped, _ = decoupled(behav_logp=BEHAV)
    assert uncapped == pytest.approx(sum(b * x for b, x in zip(base, w)) / 3)
    plain, _ = decoupled()
    assert plain == pytest.approx(-0.368390, abs=1e-6)
    with pytest.raises(ValueError, match="behav_weight_mode='cut'"):
        decoupled(behav_logp=BEHAV, behav_weight_cap=5.0, behav_weight_mode="cut")


def test_behaviour_weight_is_constant_and_masked_garbage_is_harmless():
    logp = LOGP.clone().requires_grad_()
    prox = PROX.clone().requires_grad_()
    mask = torch.tensor([[True, True, False]])
    behav = BEHAV.clone()
    behav[0, 2] = -1e6  # exp(prox − behav) = inf at a padded position
    loss, _ = policy_loss(logp, prox, ADV, mask, behav_logp=behav)
    loss.sum().backward()
    assert prox.grad is None  # the proximal log-probs are constants
    assert torch.isfinite(logp.grad).all() and float(logp.grad[0, 2]) == 0.0
    # ∂/∂logp of −A·r·w at token 0: −e^{0.1}·e^{0.2}
    assert float(logp.grad[0, 0]) == pytest.approx(-math.exp(0.1) * math.exp(0.2))


# ---------------------------------------------------------------- TC16: GSPO sequence ratio


def test_tc16_gspo_geometric_mean_ratio():
    logp = torch.tensor([[-1.0, -0.5, -2.0, 0.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-1.2, -1.6, -1.9, 5.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = policy_loss(logp, old, torch.ones(1), mask, ratio_level="sequence", eps_clip=10.0)
    r = math.exp((0.2 + 1.1 - 0.1) / 3)  # geometric mean of the token ratios
    assert r == pytest.approx(1.491825, abs=1e-6)
    torch.testing.assert_close(loss, torch.tensor([[-r, -r, -r, 0.0]], dtype=F64))
    assert float(stats["ratio_max"]) == pytest.approx(r)
    (g,) = torch.autograd.grad(loss.sum(), logp)
    # d(−3r)/d logp_t = −3 · r / 3 for every valid token
    torch.testing.assert_close(g, torch.tensor([[-r, -r, -r, 0.0]], dtype=F64))


def test_policy_loss_stats_aggregate_by_suffix():
    a = {"n_tokens": 3.0, "clipped_count": 1.0, "ratio_max": 1.5}
    b = {"n_tokens": torch.tensor(2.0), "clipped_count": 0.0, "ratio_max": torch.tensor(2.5)}
    assert aggregate_stats([a, b]) == {"n_tokens": 5.0, "clipped_count": 1.0, "ratio_max": 2.5}


# ---------------------------------------------------------------- TC18: KL estimators


def test_tc18_kl_estimators():
    lp, ref = torch.tensor([-1.0], dtype=F64), torch.tensor([-1.5], dtype=F64)
    assert [float(kl_estimate(lp, ref, k)) for k in ("k1", "k2", "k3")] == pytest.approx(
        [0.5, 0.125, math.exp(-0.5) - 1 + 0.5]
    )
    assert float(kl_estimate(lp, ref, "k3")) == pytest.approx(0.106531, abs=1e-6)
    reverse = [float(kl_estimate(ref, lp, k)) for k in ("k1", "k2", "k3")]
    assert reverse == pytest.approx([-0.5, 0.125, 0.148721], abs=1e-6)
    far = torch.tensor([-13.0], dtype=F64)
    assert float(kl_estimate(lp, far, "k1")) == 12.0
    assert float(kl_estimate(lp, far, "k1", clamp=10.0)) == 10.0
    assert float(kl_estimate(lp, far, "k3")) == pytest.approx(11.000006, abs=1e-6)
    assert float(kl_estimate(lp, far, "k3", clamp=10.0)) == 10.0
    with pytest.raises(ValueError, match="kl_estimator='k4'"):
        kl_estimate(lp, ref, "k4")


def test_clamped_k3_has_finite_gradient_far_out():
    lp = torch.tensor([-200.0, -1.0], dtype=torch.float32, requires_grad=True)
    ref = torch.tensor([-1.0, -1.5], dtype=torch.float32)
    kl = kl_estimate(lp, ref, "k3", clamp=10.0)
    kl.sum().backward()
    assert float(kl.detach()[0]) == 10.0 and torch.isfinite(lp.grad).all()
    # d k3 / dΔ = 1 − e^{−Δ} at Δ = 0.5
    assert float(lp.grad[1]) == pytest.approx(1 - math.exp(-0.5), rel=1e-6)
    assert float(lp.grad[0]) == 0.0


def test_kl_reward_to_go():
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [1.0, 9.0, 2.0, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False], [True, False, True, False]])
    out = kl_reward_to_go(kl, mask, kl_ctl=0.5)
    torch.testing.assert_close(out, torch.tensor([[-0.3, -0.25, -0.15, 0.0], [-1.5, 0.0, -1.0, 0.0]], dtype=F64))
