"""GTPO / GRPO-S entropy-weighted shaping against hand-computed values."""

from __future__ import annotations

import statistics

import pytest
import torch

from areal_lite.algo import entropy_shaped_advantages, grpo_s_rewards, gtpo_token_rewards, normalize

F64 = torch.float64


def test_gtpo_token_rewards_hand_computed():
    # Rows 0, 2, 4 form group 7: successes rows 0 (H = 3, 1) and 2 (H = 1, ends after one token),
    # failure row 4 (H = 4, 1). Rows 1, 3 form group 2: two failures with H = (4, 1) and (1, 4).
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=F64)
    gids = torch.tensor([7, 2, 7, 2, 7])
    H = torch.tensor([[3.0, 1.0], [4.0, 1.0], [1.0, 9.0], [1.0, 4.0], [4.0, 1.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    shaped, positive = gtpo_token_rewards(rewards, H, mask, gids, alpha=1.0, beta=0.1, eps=0.0)
    assert positive.tolist() == [True, False, True, False, False]
    expected = [
        [1 + 0.1 * 2 * 3 / 4, 1 + 0.1 * 1 * 1 / 1],  # t=0: d=2, ΣH=4; t=1: d=1 (row 2 has ended)
        [-1 - 0.1 * 2 * 0.25 / 1.25, -1 - 0.1 * 2 * 1.0 / 1.25],  # 1/H shares (.25, 1)/1.25 and reversed
        [1 + 0.1 * 2 * 1 / 4, 0.0],
        [-1 - 0.1 * 2 * 1.0 / 1.25, -1 - 0.1 * 2 * 0.25 / 1.25],
        [-1 - 0.1 * 1 * 1.0, -1 - 0.1 * 1 * 1.0],  # the only failure of group 7 takes the whole share
    ]
    torch.testing.assert_close(shaped, torch.tensor(expected, dtype=F64))
    assert shaped[1].tolist() == pytest.approx([-1.04, -1.16])


def test_gtpo_positions_count_valid_tokens_and_zero_entropy_splits_evenly():
    # Row 0's valid tokens sit at columns 0 and 2: its second valid token is position 1.
    rewards = torch.tensor([1.0, 1.0], dtype=F64)
    H = torch.tensor([[2.0, 7.0, 0.0], [0.0, 0.0, 5.0]], dtype=F64)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    shaped, _ = gtpo_token_rewards(rewards, H, mask, torch.tensor([0, 0]), beta=0.5)
    # t=0: H = (2, 0), d=2 → shares (1, 0); t=1: H = (0, 0) → even split 1/2 each
    expected = [[1 + 0.5 * 2 * 1.0, 0.0, 1 + 0.5 * 2 * 0.5], [1 + 0.0, 1 + 0.5 * 2 * 0.5, 0.0]]
    torch.testing.assert_close(shaped, torch.tensor(expected, dtype=F64))


def test_grpo_s_rewards_hand_computed():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    H = torch.tensor([[1.0, 3.0], [1.0, 0.0], [0.5, 0.0], [2.0, 2.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]], dtype=torch.bool)
    shaped, positive = grpo_s_rewards(rewards, H, mask, torch.tensor([3, 3, 3, 3]), eps=0.0)
    # mean entropies (2, 1, 0.5, 2); O⁺ shares 2/3, 1/3; O⁻ 1/Ĥ = (2, 0.5) → shares 0.8, 0.2
    expected = [1 + 0.1 * 2 * 2 / 3, 1 + 0.1 * 2 * 1 / 3, -1 - 0.1 * 2 * 0.8, -1 - 0.1 * 2 * 0.2]
    torch.testing.assert_close(shaped, torch.tensor(expected, dtype=F64))
    assert positive.tolist() == [True, True, False, False]


def test_entropy_shaped_advantages_sequence_level():
    shaped = torch.tensor([17 / 15, 16 / 15, -1.16, -1.04], dtype=F64)
    positive = torch.tensor([True, True, False, False])
    adv = entropy_shaped_advantages(shaped, positive, torch.tensor([0, 0, 0, 0]), eps=0.0)
    x_pos = [17 / 15, 16 / 15, 0.0, 0.0]
    x_neg = [0.0, 0.0, -1.16, -1.04]
    mp, sp = statistics.mean(x_pos), statistics.stdev(x_pos)
    mn, sn = statistics.mean(x_neg), statistics.stdev(x_neg)
    expected = [(x_pos[0] - mp) / sp, (x_pos[1] - mp) / sp, (x_neg[2] - mn) / sn, (x_neg[3] - mn) / sn]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64))
    assert adv[0] > 0 and adv[1] > 0 and adv[2] < 0 and adv[3] < 0


def test_beta_zero_reduces_to_token_weighted_grpo():
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 5
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=F64)
    gids = torch.tensor([0, 1, 0, 1, 0, 0])
    H = torch.rand(B, T, generator=gen, dtype=F64)
    mask = torch.tensor([[j < n for j in range(T)] for n in (5, 2, 3, 4, 1, 5)])
    shaped, positive = gtpo_token_rewards(rewards, H, mask, gids, beta=0.0)
    # eps = 0: the ±1 values have twice the std of the 0/1 indicators, so eps would scale differently
    adv = entropy_shaped_advantages(shaped, positive, gids, mask=mask, eps=0.0)
    plus_minus = torch.where(positive, 1.0, -1.0).to(F64)[:, None].expand(B, T)
    ref = normalize(plus_minus, gids, mean_level="group", std_level="group", mask=mask, eps=0.0)
    torch.testing.assert_close(adv, ref)
