"""Reward shaping, filtering and reweighting: TC10, TC11, TC19 and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from areal_lite.algo import (
    drop_all_equal_groups,
    normalize,
    overlong_penalty,
    shape_rewards,
    soft_reweight,
    soft_reweight_weights,
    top_k_groups_by_std,
)

F64 = torch.float64


def t(v):
    return torch.tensor(v, dtype=F64)


def test_shape_rewards_bias_scale_clip_and_truncation():
    r = t([0.0, 1.0, 3.0, 1.0])
    # AReaL GSM8K: bias −0.5, scaling 10 → {−5, +5}; clip 20 cuts the 25
    assert shape_rewards(r, bias=-0.5, scaling=10.0, clip=20.0).tolist() == [-5.0, 5.0, 20.0, 5.0]
    trunc = torch.tensor([False, False, False, True])
    assert shape_rewards(r, bias=-0.5, scaling=10.0, clip=20.0, truncated=trunc).tolist() == [-5.0, 5.0, 20.0, 0.0]
    assert shape_rewards(r).tolist() == [0.0, 1.0, 3.0, 1.0]


def test_tc19_dapo_overlong_penalty():
    lens = torch.tensor([10, 15, 16, 18, 20])
    out = overlong_penalty(lens, max_len=20, buffer_len=4, factor=1.0)
    assert out.tolist() == [0.0, 0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(lens, max_len=20, buffer_len=4, factor=2.0).tolist() == [0.0, 0.0, 0.0, -1.0, -2.0]
    with pytest.raises(ValueError):
        overlong_penalty(lens, max_len=20, buffer_len=0)


def test_dapo_dynamic_sampling_drops_all_equal_groups():
    # groups (non-adjacent): 1 → {1, 0}, 2 → {1, 1, 1}, 3 → {0, 0}, 4 → {0.5} (singleton), 5 → {0, 0.2}
    r = t([1, 1, 0, 1, 0, 0, 0.5, 1, 0, 0.2])
    g = torch.tensor([1, 2, 3, 2, 1, 3, 4, 2, 5, 5])
    keep, stats = drop_all_equal_groups(r, g)
    assert keep.tolist() == [True, False, False, False, True, False, False, False, True, True]
    assert stats == {"num_groups": 5.0, "kept_groups": 2.0, "kept_seqs": 4.0}
    keep, _ = drop_all_equal_groups(r, g, atol=0.25)  # group 5's spread 0.2 now counts as equal
    assert keep.tolist() == [True, False, False, False, True, False, False, False, False, False]


def test_tc11_top_k_groups_by_std():
    stds = [0, 0.5, 0.57735, 0, 0.25, 0.525991, 0.258199, 0.05]
    # a two-member group {0, d} has unbiased std d/√2; lay groups out interleaved (non-adjacent)
    rewards = [0.0] * 8 + [s * math.sqrt(2) for s in stds]
    gids = list(range(8)) * 2
    keep, stats = top_k_groups_by_std(t(rewards), torch.tensor(gids), ratio=0.25)
    kept_groups = sorted({gids[i] for i in range(len(gids)) if keep[i]})
    assert kept_groups == [2, 5]
    assert stats["kept_groups"] == 2.0 and stats["kept_seqs"] == 4.0
    keep3, _ = top_k_groups_by_std(t(rewards), torch.tensor(gids), k=3)
    assert sorted({gids[i] for i in range(len(gids)) if keep3[i]}) == [1, 2, 5]
    # ratio·G < 1 still keeps one group; ties keep the smaller group id
    keep1, _ = top_k_groups_by_std(t([0, 1, 0, 1]), torch.tensor([8, 8, 3, 3]), ratio=0.1)
    assert keep1.tolist() == [False, False, True, True]
    with pytest.raises(ValueError):
        top_k_groups_by_std(t(rewards), torch.tensor(gids))


def test_tc10_soft_reweighting_on_dr_grpo_advantages():
    r = t([1, 0, 0, 0, 1, 1, 0, 0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = normalize(r, g, mean_level="group", std_level="none")  # Dr.GRPO: [.75, −.25×3 | .5, .5, −.5, −.5]
    w, _ = soft_reweight_weights(r, g)
    s0, s1 = 0.5, math.sqrt(1 / 3)  # unbiased group stds
    torch.testing.assert_close(w, t([s0 / (s1 + 1e-6), s1 / (s1 + 1e-6)]))
    assert w.tolist() == pytest.approx([0.866024, 0.999998], abs=1e-6)
    out, stats = soft_reweight(adv, r, g)
    expected = [0.649518, -0.216506, -0.216506, -0.216506, 0.499999, 0.499999, -0.499999, -0.499999]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    assert stats["min"] == pytest.approx(0.866024, abs=1e-6) and stats["max"] == pytest.approx(0.999998, abs=1e-6)
    assert stats["mean"] == pytest.approx((0.866024 + 0.999998) / 2, abs=1e-6)


def test_soft_reweight_token_level_broadcasts_per_row():
    r = t([1, 0, 1, 1])
    g = torch.tensor([5, 5, 2, 2])  # group 2 has std 0 → weight 0
    adv = torch.ones(4, 3, dtype=F64)
    out, _ = soft_reweight(adv, r, g)
    w = math.sqrt(0.5) / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(out, t([[w] * 3, [w] * 3, [0.0] * 3, [0.0] * 3]))


def test_filter_before_normalising_changes_batch_statistics():
    # Normalisation statistics must describe the kept sequences only.
    r = t([1, 0, 1, 1, 0, 1])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    keep, _ = top_k_groups_by_std(r, g, k=2)  # group 1 (all equal) is dropped
    kept = keep.nonzero().squeeze(1)
    adv = normalize(r[kept], g[kept], mean_level="batch", std_level="batch", eps=0.0)
    # kept rewards {1, 0, 0, 1}: mean 0.5, unbiased std √(1/3)
    s = math.sqrt(1 / 3)
    torch.testing.assert_close(adv, t([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]))
