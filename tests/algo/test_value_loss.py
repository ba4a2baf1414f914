"""PPO's clipped value loss (`algo.value_loss`): hand-computed values, a naive loop, and verl 0.9.1's
`compute_value_loss` run from its released wheel (tests/parity/peers.py), values and gradients."""

from __future__ import annotations

import types

import pytest
import torch

from areal_lite.algo import reduce_loss, value_loss
from tests.parity.peers import peer_factory  # noqa: F401  (fixture)

F64 = torch.float64
MASK = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)


def test_hand_computed_values():
    v = torch.tensor([[1.0, 0.0]], dtype=F64)
    old = torch.tensor([[0.5, 0.0]], dtype=F64)
    ret = torch.tensor([[2.0, 1.0]], dtype=F64)
    m = torch.tensor([[True, True]])
    # token 0: (1 − 2)² = 1; clipped 0.5 + clip(0.5, ±0.2) = 0.7 → (0.7 − 2)² = 1.69 wins; token 1: 1 both.
    loss, stats = value_loss(v, old, ret, m, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.845, 0.5]], dtype=F64))
    assert stats["clipped_count"] == 1 and stats["n_tokens"] == 2 and stats["sq_error_sum"] == 2.0
    unclipped, _ = value_loss(v, old, ret, m, clip=None)
    torch.testing.assert_close(unclipped, torch.tensor([[0.5, 0.5]], dtype=F64))
    with pytest.raises(ValueError, match="clip"):
        value_loss(v, old, ret, m, clip=0.0)


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(*MASK.shape, generator=g, dtype=F64)
    v = old + 0.4 * torch.randn(*MASK.shape, generator=g, dtype=F64)
    ret = torch.randn(*MASK.shape, generator=g, dtype=F64)
    v[~MASK] = float("nan")  # padding garbage never reaches a value or a gradient
    return v, old, ret


def test_naive_loop_values_and_gradient():
    v, old, ret = _data(0)
    x = v.clone().requires_grad_(True)
    loss, _ = value_loss(x, old, ret, MASK, clip=0.2)
    reduce_loss(loss, MASK, "token_mean").backward()
    n = int(MASK.sum())
    want_grad = torch.zeros_like(v)
    total = 0.0
    for b in range(MASK.shape[0]):
        for t in range(MASK.shape[1]):
            if not MASK[b, t]:
                continue
            a = float(v[b, t] - ret[b, t]) ** 2
            vc = float(old[b, t]) + max(-0.2, min(0.2, float(v[b, t] - old[b, t])))
            c = (vc - float(ret[b, t])) ** 2
            total += 0.5 * max(a, c)
            # d/dv: the unclipped branch has slope (v − R); the clipped one is flat once clipped.
            inside = abs(float(v[b, t] - old[b, t])) < 0.2
            want_grad[b, t] = (float(v[b, t] - ret[b, t]) if a >= c else (vc - float(ret[b, t])) * inside) / n
    assert float(reduce_loss(loss.detach(), MASK, "token_mean")) == pytest.approx(total / n, rel=1e-12)
    torch.testing.assert_close(x.grad, want_grad)


def test_verl_compute_value_loss(peer_factory):  # noqa: F811
    verl = peer_factory("verl")
    verl.load("verl/utils/torch_functional.py", "masked_sum", "masked_mean", "clip_by_value")
    verl.ns["verl_F"] = types.SimpleNamespace(**{k: verl.ns[k] for k in ("masked_sum", "masked_mean", "clip_by_value")})
    verl.ns["AlgoConfig"] = type("AlgoConfig", (), {})
    verl.load("verl/trainer/ppo/core_algos.py", "agg_loss")
    fn = verl.function("verl/trainer/ppo/core_algos.py", "compute_value_loss")
    for seed, clip in ((1, 0.2), (2, 0.5), (3, 0.05)):
        v, old, ret = _data(seed)
        v = torch.where(MASK, v, 0.0)  # verl multiplies by the mask: garbage would leak as NaN
        a, b = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
        loss, stats = value_loss(a, old, ret, MASK, clip=clip)
        ours = reduce_loss(loss, MASK, "token_mean")
        theirs, clipfrac = fn(b, ret, old, MASK.to(F64), clip, "token-mean")
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        assert float(stats["clipped_count"] / stats["n_tokens"]) == pytest.approx(float(clipfrac), rel=1e-6)  # verl: +1e-8 in the denominator
        ours.backward()
        theirs.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)
