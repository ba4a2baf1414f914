"""RAGEN rollout filtering: hand-computed selections for each strategy, metric and option."""

from __future__ import annotations

import math

import pytest
import torch

from areal_lite.algo import filter_loss_scale, group_scores, rollout_filter, select_groups

S = torch.tensor([0.5, 0.0, 0.3, 0.2], dtype=torch.float64)  # Σ = 1.0


def kept(**kw):
    return torch.nonzero(select_groups(S, **kw)).squeeze(1).tolist()


def test_top_p_linear():
    # threshold .7 − .01: .5 then .3 reaches .8 ≥ .69 → {0, 2}
    assert kept(strategy="top_p", value=0.7) == [0, 2]
    assert kept(strategy="top_p", value=1.0) == [0, 1, 2, 3]
    # smallest: ascending order starts at 0.0, which stops the walk before the threshold → nothing
    assert kept(strategy="top_p", value=0.5, filter_type="smallest") == []
    assert kept(strategy="top_p", value=0.5, filter_type="smallest", include_zero=False) == [2, 3]


def test_top_p_softmax():
    p = torch.softmax(S, 0).tolist()  # [.2936, .1781, .2404, .2177]…
    assert p[0] > p[2] > p[3] > p[1]
    # cumsum .2936, .5340, .7517: < .6 twice → k = 3
    assert kept(strategy="top_p", value=0.6, top_p_mode="softmax") == [0, 2, 3]


def test_top_k_top_k_abs_min_p():
    assert kept(strategy="top_k", value=0.5) == [0, 2]  # int(.5·4) = 2
    assert kept(strategy="top_k", value=0.1) == [0]  # at least one
    assert kept(strategy="top_k_abs", value=3, filter_type="smallest") == [1, 2, 3]
    assert kept(strategy="min_p", value=0.5) == [0, 2]  # ≥ .25
    assert kept(strategy="min_p", value=0.5, filter_type="smallest", include_zero=False) == [2, 3]  # ≤ .2/.5


def test_metrics_and_rollout_filter():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 2.0])
    g = torch.tensor([5, 5, 3, 3, 9])
    std, idx = group_scores(r, g, metric="reward_std")
    assert std[0].item() == 0.0 and std[1].item() == pytest.approx(math.sqrt(0.5)) and math.isnan(std[2].item())
    assert group_scores(r, g, metric="reward_mean")[0].tolist() == [1.0, 0.5, 2.0]
    assert group_scores(r, g, metric="reward_sum")[0].tolist() == [2.0, 1.0, 2.0]
    lens = torch.tensor([10, 20, 30, 50, 7])
    assert group_scores(r, g, metric="length", lengths=lens)[0].tolist() == [40.0, 15.0, 7.0]
    keep, stats = rollout_filter(r, g, metric="reward_mean", strategy="top_k_abs", value=1)
    assert keep.tolist() == [False, False, False, False, True] and stats["kept_ratio"] == pytest.approx(1 / 3)
    assert filter_loss_scale(0.25, "sqrt") == 0.5 and filter_loss_scale(0.25, "linear") == 0.25
    assert filter_loss_scale(0.25) == 1.0
    with pytest.raises(ValueError, match="filter strategy"):
        select_groups(S, strategy="top_q")
