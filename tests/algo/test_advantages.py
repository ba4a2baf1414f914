"""Advantage estimators: hand-computed values and naive per-element loops."""

from __future__ import annotations

import math

import pytest
import torch

from areal_lite.algo import (
    discounted_returns,
    gae,
    gpg_advantages,
    outcome_token_rewards,
    passk_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
)

F64 = torch.float64
# Ragged rows, a hole inside row 0 (a tool span), an empty row.
MASK = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)


def rand(seed, shape=MASK.shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_outcome_token_rewards_on_last_valid_token():
    out = outcome_token_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), MASK)
    expected = torch.zeros(4, 5, dtype=F64)
    expected[0, 3], expected[1, 4], expected[2, 0] = 1.0, 2.0, 3.0
    torch.testing.assert_close(out, expected)


def _returns_loop(r, m, gamma):
    out = [[0.0] * len(row) for row in r]
    for b in range(len(r)):
        g = 0.0
        for t in reversed(range(len(r[b]))):
            if m[b][t]:
                g = r[b][t] + gamma * g
                out[b][t] = g
    return out


def test_discounted_returns_hand_and_loop():
    r = torch.tensor([[1.0, 0.0, 9.0, 2.0, 9.0]] + [[0.0] * 5] * 3, dtype=F64)
    out = discounted_returns(r, MASK, gamma=0.5)
    # row 0 valid tokens 0, 1, 3: G3 = 2, G1 = 0 + .5·2 = 1, G0 = 1 + .5·1 = 1.5 (the 9s are masked)
    torch.testing.assert_close(out[0], torch.tensor([1.5, 1.0, 0.0, 2.0, 0.0], dtype=F64))
    x = rand(1)
    torch.testing.assert_close(discounted_returns(x, MASK, gamma=0.9), torch.tensor(_returns_loop(x.tolist(), MASK.tolist(), 0.9), dtype=F64))


def _whiten_loop(vals, m, unbiased):
    flat = [vals[b][t] for b in range(len(vals)) for t in range(len(vals[b])) if m[b][t]]
    mu = sum(flat) / len(flat)
    var = sum((v - mu) ** 2 for v in flat) / (len(flat) - (1 if unbiased else 0))
    return [[(vals[b][t] - mu) / math.sqrt(var) if m[b][t] else 0.0 for t in range(len(vals[b]))] for b in range(len(vals))]


@pytest.mark.parametrize("unbiased", [True, False])
def test_reinforce_pp_is_whitened_returns(unbiased):
    x = rand(2)
    ref = _whiten_loop(_returns_loop(x.tolist(), MASK.tolist(), 0.95), MASK.tolist(), unbiased)
    torch.testing.assert_close(reinforce_pp_advantages(x, MASK, gamma=0.95, unbiased=unbiased), torch.tensor(ref, dtype=F64))


def test_reinforce_pp_baseline_hand():
    # rewards [1, 0 | 2, 2]: centred [.5, −.5 | 0, 0]; tokens lengths 1 and 3 (+ 2 zero rows)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = reinforce_pp_baseline_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]), mask)
    toks = [0.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0]
    mu = sum(toks) / 7
    sd = math.sqrt(sum((v - mu) ** 2 for v in toks) / 6)
    assert float(out[0, 0]) == pytest.approx((0.5 - mu) / sd) and float(out[2, 1]) == pytest.approx(-mu / sd)
    assert float(out[0, 1]) == 0.0


def test_remax_hand():
    r = torch.tensor([[0.0, 1.0, 0.0, 2.0, 5.0]] + [[0.0] * 5] * 3, dtype=F64)
    out = remax_advantages(r, torch.tensor([0.5, 1.0, 0.0, 0.0], dtype=F64), MASK)
    torch.testing.assert_close(out[0], torch.tensor([2.5, 2.5, 0.0, 1.5, 0.0], dtype=F64))
    torch.testing.assert_close(out[1], torch.full((5,), -1.0, dtype=F64))


def test_passk_hand_and_errors():
    r = torch.tensor([0.0, 1.0, 0.3, 1.0, 1.0, 0.0])
    g = torch.tensor([4, 4, 4, 7, 7, 7])
    out = passk_advantages(r, g, norm_by_std=False)
    assert out.tolist() == pytest.approx([0.0, 0.7, 0.0, 0.0, 0.0, 0.0])  # group 7 ties → 0
    sd = torch.tensor([0.0, 1.0, 0.3], dtype=F64).std().item()
    assert float(passk_advantages(r, g)[1]) == pytest.approx(0.7 / (sd + 1e-6))
    with pytest.raises(ValueError, match="group 9 has 1"):
        passk_advantages(torch.tensor([1.0]), torch.tensor([9]))


def test_gpg_alpha_counts_valid_samples():
    # group 0 mixed (valid), group 1 all-equal (M = 2 invalid): α = 4 / 2
    out = gpg_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert out.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])


def _gae_loop(r, v, m, gamma, lam):
    adv = [[0.0] * len(row) for row in r]
    for b in range(len(r)):
        valid = [t for t in range(len(r[b])) if m[b][t]]
        a_next = v_next = 0.0
        for t in reversed(valid):
            delta = r[b][t] + gamma * v_next - v[b][t]
            a_next = delta + gamma * lam * a_next
            v_next = v[b][t]
            adv[b][t] = a_next
    return adv


def test_gae_hand_and_loop():
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]] + [[0.0] * 5] * 3, dtype=F64)
    v = torch.tensor([[0.5, 0.25, 9.0, 0.5, 9.0]] + [[0.0] * 5] * 3, dtype=F64)
    adv, ret = gae(r, v, MASK, gamma=1.0, lam=1.0)
    # γ = λ = 1: Â_t = (return-to-go) − V_t = 1 − V_t on the valid tokens
    torch.testing.assert_close(adv[0], torch.tensor([0.5, 0.75, 0.0, 0.5, 0.0], dtype=F64))
    torch.testing.assert_close(ret[0], torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0], dtype=F64))
    x, y = rand(3), rand(4)
    adv, ret = gae(x, y, MASK, gamma=0.9, lam=0.8)
    ref = torch.tensor(_gae_loop(x.tolist(), y.tolist(), MASK.tolist(), 0.9, 0.8), dtype=F64)
    torch.testing.assert_close(adv, ref)
    torch.testing.assert_close(ret, torch.where(MASK, ref + y, 0.0))
