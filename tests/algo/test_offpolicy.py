"""Sequence-level IS weights / rejection and the log-linear proximal log-probs: hand values and loops."""

from __future__ import annotations

import math

import pytest
import torch

from areal_lite.algo import prox_logp_loglinear, sequence_is_weights

F64 = torch.float64


def test_tc16_sequence_weights():
    old = torch.tensor([[-1.0, -0.5, -2.0]], dtype=F64)
    behav = torch.tensor([[-1.2, -1.6, -1.9]], dtype=F64)
    m = torch.ones(1, 3, dtype=torch.bool)
    w, _ = sequence_is_weights(old, behav, m, agg="product", mode="truncate", cap=5.0)
    assert w[0, 0].item() == pytest.approx(3.320117, abs=1e-6)  # PEER_SEMANTICS TC16
    w, _ = sequence_is_weights(old, behav, m, agg="geometric", cap=5.0)
    assert w[0, 0].item() == pytest.approx(1.491825, abs=1e-6)
    w, stats = sequence_is_weights(old, behav, m, agg="product", mode="mask", cap=3.0)
    assert w.abs().sum() == 0 and float(stats["seq_is_capped_count"]) == 1  # TRL seq_mask ≤ 3 → 0


def test_sequence_weights_loop_ragged():
    g = torch.Generator().manual_seed(0)
    old, behav = -torch.rand(4, 5, generator=g, dtype=F64), -torch.rand(4, 5, generator=g, dtype=F64)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    for agg in ("product", "geometric"):
        for mode, lower in (("truncate", None), ("mask", 0.9)):
            w, _ = sequence_is_weights(old, behav, m, agg=agg, mode=mode, cap=1.1, lower=lower)
            for b in range(4):
                ts = [t for t in range(5) if m[b, t]]
                s = sum(old[b, t].item() - behav[b, t].item() for t in ts)
                raw = math.exp(s / max(len(ts), 1) if agg == "geometric" else s)
                want = min(raw, 1.1) if mode == "truncate" else (raw if 0.9 <= raw <= 1.1 else 0.0)
                for t in range(5):
                    assert w[b, t].item() == pytest.approx(want if m[b, t] else 0.0)


def test_loglinear_prox_hand():
    behav = torch.tensor([[-2.0, -2.0, -2.0, -2.0]], dtype=F64)
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], dtype=F64)
    versions = torch.tensor([[4, 3, 5, -1]])
    # current 5, proximal 4: v_b = 4 → α 0; v_b = 3 → α (4−3)/(5−3) = .5; v_b = 5 → α 0; prompt → 0
    out = prox_logp_loglinear(behav, logp, versions, current_version=5)
    torch.testing.assert_close(out, torch.tensor([[-2.0, -1.5, -2.0, -2.0]], dtype=F64))
