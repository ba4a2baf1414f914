"""CISPO, SAPO, GMPO, REINFORCE, Clip-Cov, KL-Cov, entropy bonus, top-entropy mask: hand values and loops."""

from __future__ import annotations

import math

import pytest
import torch

from areal_lite.algo import (
    cispo_loss,
    clip_cov_loss,
    entropy_bonus,
    gmpo_loss,
    kl_cov_loss,
    reduce_loss,
    reinforce_loss,
    sapo_loss,
    top_entropy_mask,
)

F64 = torch.float64
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(4, 4, generator=g, dtype=F64) * 2
    logp = (old + 0.4 * torch.randn(4, 4, generator=g, dtype=F64)).requires_grad_(True)
    adv = torch.randn(4, 4, generator=g, dtype=F64)
    return logp, old, adv


def cells():
    return [(b, t) for b in range(4) for t in range(4) if MASK[b, t]]


def test_cispo_loop_and_gradient():
    logp, old, adv = inputs(0)
    loss, stats = cispo_loss(logp, old, adv, MASK, eps_low=0.2, eps_high=0.28)
    for b, t in cells():
        r = math.exp(logp[b, t].item() - old[b, t].item())
        w = min(max(r, 0.8), 1.28)
        assert loss[b, t].item() == pytest.approx(-w * adv[b, t].item() * logp[b, t].item())
    loss.sum().backward()
    for b, t in cells():  # the weight is a constant: ∂ℓ/∂logp = −w·A
        r = math.exp(logp[b, t].item() - old[b, t].item())
        assert logp.grad[b, t].item() == pytest.approx(-min(max(r, 0.8), 1.28) * adv[b, t].item())
    assert float(stats["n_tokens"]) == 8 and loss[3].abs().sum() == 0


def test_sapo_hand_value_and_unit_slope():
    # r = 1: gate 4/τ·σ(0) = 2/τ; slope of the gate at r = 1 is 1 for any τ
    logp = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    loss, _ = sapo_loss(logp, torch.zeros(1, 2, dtype=F64), torch.tensor([[1.0, -1.0]], dtype=F64),
                        torch.ones(1, 2, dtype=torch.bool), tau_pos=1.0, tau_neg=1.05)
    torch.testing.assert_close(loss, torch.tensor([[-2.0, 2 / 1.05]], dtype=F64))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, 1.0]], dtype=F64))


def test_reinforce_loss_is_minus_a_logp():
    logp, _, adv = inputs(1)
    loss, _ = reinforce_loss(logp, adv, MASK)
    torch.testing.assert_close(loss, torch.where(MASK, -adv * logp, 0.0))


def test_gmpo_loop():
    logp, old, adv = inputs(2)
    loss, _ = gmpo_loss(logp, old, adv, MASK, eps_low=0.3, eps_high=0.2)
    for b in range(3):
        ts = [t for t in range(4) if MASK[b, t]]
        a = sum(adv[b, t].item() for t in ts) / len(ts)
        kept = []
        for t in ts:
            s = (adv[b, t].item() > 0) - (adv[b, t].item() < 0)
            d = logp[b, t].item() - old[b, t].item()
            kept.append(s * min(s * d, s * min(max(d, -0.3), 0.2)))
        want = -a * math.exp(sum(kept) / len(ts))
        assert all(loss[b, t].item() == pytest.approx(want) for t in ts)
    total = reduce_loss(loss, MASK, "seq_mean_token_mean")
    assert total.item() == pytest.approx(sum(loss[b, 0].item() for b in range(3)) / 3)


def test_clip_cov_drops_random_band_tokens_and_keeps_ppo_elsewhere():
    logp, old, adv = inputs(3)
    loss, stats = clip_cov_loss(logp, old, adv, MASK, ratio=0.3, cov_lb=-10.0, cov_ub=10.0,
                                generator=torch.Generator().manual_seed(0))
    r = torch.exp(logp - old)
    ppo = torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.2))
    dropped = MASK & (loss == 0) & (ppo != 0)
    assert int(stats["cov_dropped_count"]) == int(0.3 * 8) == int(dropped.sum())
    clipped = (-adv * r.clamp(0.8, 1.2)) > (-adv * r)
    assert not (dropped & clipped).any()
    torch.testing.assert_close(loss[MASK & ~dropped], ppo[MASK & ~dropped])


def test_kl_cov_penalises_top_covariance_tokens():
    logp, old, adv = inputs(4)
    loss, stats = kl_cov_loss(logp, old, adv, MASK, ratio=0.25, kl_coef=2.0)
    vals = [(b, t) for b, t in cells()]
    a_mean = sum(adv[b, t].item() for b, t in vals) / len(vals)
    l_mean = sum(logp[b, t].item() for b, t in vals) / len(vals)
    cov = {c: (adv[c].item() - a_mean) * (logp[c].item() - l_mean) for c in vals}
    top = sorted(vals, key=lambda c: -cov[c])[:2]
    for c in vals:
        d = logp[c].item() - old[c].item()
        want = -adv[c].item() * math.exp(d) + (2.0 * abs(d) if c in top else 0.0)
        assert loss[c].item() == pytest.approx(want)
    assert int(stats["kl_penalised_count"]) == 2


def test_entropy_bonus_and_top_entropy_mask():
    h = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.2, 0.0, 0.0, 0.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(entropy_bonus(h, m, 0.01), torch.where(m, -0.01 * h, 0.0))
    # valid entropies {.1, .9, .5, .2}: the 0.5-quantile (linear) is .35 → keep .9 and .5
    keep = top_entropy_mask(h, m, 0.5)
    assert keep.tolist() == [[False, True, True, False], [False, False, False, False]]
    assert top_entropy_mask(h, m, 1.0).tolist() == m.tolist()
    with pytest.raises(ValueError, match="top_fraction"):
        top_entropy_mask(h, m, 0.0)
