"""Evaluation figures: the unbiased pass@k estimator against hand-computed values and against its
definition (every k-subset of the n answers enumerated), and accuracy / avg@n / pass@k of groups."""

from __future__ import annotations

import itertools
import math

import pytest

from areal_lite.rollout.evaluate import pass_at_k, pass_ks, score_groups


def pass_at_k_by_enumeration(correct: list[bool], k: int) -> float:
    """The share of the k-subsets of the answers that hold a correct one (the estimator's definition)."""
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_hand_computed_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(10, 3, 9) == 1.0  # fewer wrong answers than k: every k-subset holds a correct one
    assert pass_at_k(200, 7, 10) == pytest.approx(1 - math.comb(193, 10) / math.comb(200, 10))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_matches_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_by_enumeration(correct, k)), (n, c, k)


def test_bad_arguments_are_refused():
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_groups_scores():
    assert pass_ks(1) == [1] and pass_ks(8) == [1, 2, 4, 8] and pass_ks(6) == [1, 2, 4, 6]
    rewards = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]]  # prompts x 4 answers
    s = score_groups(rewards)
    assert s["accuracy"] == pytest.approx(1 / 3)  # the first answer of each prompt
    assert s["avg@4"] == pytest.approx(4 / 12)
    assert s["pass@1"] == pytest.approx(s["avg@4"])
    assert s["pass@2"] == pytest.approx((0.5 + 0 + 1.0) / 3)  # c=1: 1-C(3,2)/C(4,2); c=3: 1
    assert s["pass@4"] == pytest.approx(2 / 3)
    one = score_groups([[1.0], [0.0], [0.0], [1.0]])
    assert one == {"accuracy": 0.5, "reward_mean": 0.5, "pass@1": 0.5}  # one answer: no avg@n
