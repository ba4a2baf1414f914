"""`normalize`: hand-computed tables, PEER_SEMANTICS test cases, and a naive reference loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from areal_lite.algo import NORM_LEVELS, normalize

F64 = torch.float64

# Non-adjacent, unequal groups and a singleton: group 7 = {1, 2, 5}, group 3 = {4, 0}, group 9 = {3}.
X = [1.0, 4.0, 2.0, 0.0, 5.0, 3.0]
G = [7, 3, 7, 3, 7, 9]
# Hand-computed set statistics (see the comments for the arithmetic).
MEAN = {
    "group": [8 / 3, 2.0, 8 / 3, 2.0, 8 / 3, 3.0],
    "batch": [2.5] * 6,  # 15 / 6
    "none": [0.0] * 6,
}
LOO_MEAN = {
    "group": [3.5, 0.0, 3.0, 4.0, 1.5, 0.0],  # (2+5)/2, 0/1, (1+5)/2, 4/1, (1+2)/2, singleton → 0
    "batch": [2.8, 2.2, 2.6, 3.0, 2.0, 2.4],  # (15 − x) / 5
    "none": [0.0] * 6,
}


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def _expected_std(mean, std_level, unbiased):
    """std of element e: sqrt(Σ_{j in e's std set} (X_j − mean_j)² / (n − 1 or n)); 1 when the divisor is 0."""
    out = []
    for e in range(len(X)):
        members = range(len(X)) if std_level == "batch" else [j for j in range(len(X)) if G[j] == G[e]]
        ss = sum((X[j] - mean[j]) ** 2 for j in members)
        d = len(members) - 1 if unbiased else len(members)
        out.append(math.sqrt(ss / d) if d >= 1 else 1.0)
    return out


def test_expected_std_against_hand_arithmetic():
    r13, r8 = math.sqrt(13 / 3), math.sqrt(8)
    # group/group: group 7 = {1, 2, 5} around 8/3 → Σ = 26/3; group 3 = {4, 0} around 2 → 8; singleton → 1
    assert _expected_std(MEAN["group"], "group", True) == pytest.approx([r13, r8, r13, r8, r13, 1.0])
    # biased: a singleton has divisor 1 and spread 0 around its own mean
    b = math.sqrt(26 / 9)
    assert _expected_std(MEAN["group"], "group", False) == pytest.approx([b, 2.0, b, 2.0, b, 0.0])
    # none/batch: Σx² = 55 over 6 values
    assert _expected_std(MEAN["none"], "batch", True) == pytest.approx([math.sqrt(11)] * 6)
    # group/batch: the group-centred squares summed over the batch, 26/3 + 8 + 0
    assert _expected_std(MEAN["group"], "batch", True) == pytest.approx([math.sqrt((26 / 3 + 8) / 5)] * 6)
    # batch/group, group 3 = {4, 0} around the batch mean 2.5: 1.5² + 2.5² = 8.5
    got = _expected_std(MEAN["batch"], "group", True)
    assert got[1] == pytest.approx(math.sqrt(8.5)) and got[5] == 1.0


@pytest.mark.parametrize("mean_level,std_level", list(itertools.product(NORM_LEVELS, NORM_LEVELS)))
@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("unbiased", [True, False])
def test_all_level_combinations_hand_computed(mean_level, std_level, leave_one_out, unbiased):
    eps = 1e-6
    out = normalize(
        t(X), torch.tensor(G), mean_level=mean_level, std_level=std_level,
        leave_one_out=leave_one_out, unbiased=unbiased, eps=eps,
    )
    mean = (LOO_MEAN if leave_one_out else MEAN)[mean_level]
    if std_level == "none":
        expected = [x - mu for x, mu in zip(X, mean)]
    else:
        stds = _expected_std(mean, std_level, unbiased)
        expected = [(x - mu) / (sd + eps) for x, mu, sd in zip(X, mean, stds)]
    torch.testing.assert_close(out, t(expected), rtol=1e-12, atol=1e-12)


def test_issue15_defect1_all_equal_group_is_not_divided_by_eps():
    # r = [1, 1 | 0, 1], none/group: group 1 has Σx² = 2 → std √2; group 2 has Σx² = 1 → std 1
    r, g = t([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1])
    out = normalize(r, g, mean_level="none", std_level="group", eps=1e-5)
    torch.testing.assert_close(out, t([1 / (2**0.5 + 1e-5)] * 2 + [0.0, 1 / (1 + 1e-5)]))
    assert abs(float(out[0]) - 0.707102) < 1e-6
    # batch/group: batch mean 3/4; group 1 around it: Σ = 2·(1/4)²; group 2: (3/4)² + (1/4)²
    out = normalize(r, g, mean_level="batch", std_level="group", eps=1e-5)
    s1, s2 = math.sqrt(2 / 16), math.sqrt(10 / 16)
    torch.testing.assert_close(out, t([0.25 / (s1 + 1e-5)] * 2 + [-0.75 / (s2 + 1e-5), 0.25 / (s2 + 1e-5)]))


def test_issue15_group_mean_batch_std_is_std_of_group_centred_rewards():
    # r = [1,0,0,0 | 1,1,0,1]: centred [.75,-.25,-.25,-.25 | .25,.25,-.75,.25], Σ² = 1.5, unbiased /7
    r = t([1.0, 0, 0, 0, 1, 1, 0, 1])
    out = normalize(r, torch.tensor([0] * 4 + [1] * 4), mean_level="group", std_level="batch", eps=1e-5)
    s = math.sqrt(1.5 / 7)
    assert abs(float(out[0]) - 0.75 / (s + 1e-5)) < 1e-12
    assert abs(float(out[0]) - 1.62015) < 1e-5 and abs(float(out[1]) + 0.54005) < 1e-5


def test_leave_one_out_with_std_equals_plain_group_norm_without_eps():
    # x − (Σ − x)/(n − 1) = n/(n − 1)·(x − μ): the LOO-centred std scales by the same factor
    r, g = t([1.0, 0.0, 0.0, 1.0, 0.5]), torch.tensor([0] * 5)
    loo = normalize(r, g, mean_level="group", std_level="group", leave_one_out=True, eps=0.0)
    plain = normalize(r, g, mean_level="group", std_level="group", eps=0.0)
    torch.testing.assert_close(loo, plain, rtol=1e-12, atol=1e-12)


def test_option_spellings_and_errors():
    a = normalize(t(X), torch.tensor(G), mean_level="group", std_level=None)
    b = normalize(t(X), torch.tensor(G), mean_level="Group", std_level="none")
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="mean_level='grp'.*group, batch, none"):
        normalize(t(X), torch.tensor(G), mean_level="grp", std_level="none")


# ---------------------------------------------------------------- PEER_SEMANTICS test cases


def grpo(r, gids, **kw):
    return normalize(t(r), torch.tensor(gids), **{"mean_level": "group", "std_level": "group", **kw})


def test_tc1_grpo_group_norm():
    # std = sqrt(1/3) (unbiased), output ±0.5/(std + eps)
    out = grpo([1, 0, 0, 1], [0] * 4, eps=1e-6)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(out, t([a, -a, -a, a]))
    assert abs(a - 0.866024) < 1e-6
    # population std, the "wrong" row of TC1
    out = grpo([1, 0, 0, 1], [0] * 4, eps=1e-6, unbiased=False)
    assert abs(float(out[0]) - 0.999998) < 1e-6


def test_tc2_dr_grpo_and_tc3_all_equal():
    torch.testing.assert_close(grpo([1, 0, 0, 1], [0] * 4, std_level="none"), t([0.5, -0.5, -0.5, 0.5]))
    torch.testing.assert_close(grpo([1, 1, 1, 1], [0] * 4), t([0.0] * 4))


def test_tc4_singleton_group():
    # Plain mean of a singleton is the value itself → 0 (AReaL group_size=1). verl's GRPO value 0.699999
    # is the leave-one-out mean (0) with std 1; verl's RLOO value 0.7 is leave-one-out without std.
    assert float(grpo([0.7], [5])[0]) == 0.0
    assert abs(float(grpo([0.7], [5], leave_one_out=True)[0]) - 0.7 / (1 + 1e-6)) < 1e-15
    assert float(grpo([0.7], [5], leave_one_out=True, std_level="none")[0]) == pytest.approx(0.7, abs=1e-15)


def test_tc5_rloo():
    out = grpo([1, 0, 0, 0], [0] * 4, leave_one_out=True, std_level="none")
    torch.testing.assert_close(out, t([1.0, -1 / 3, -1 / 3, -1 / 3]))


def test_tc6_trl_scale_rewards():
    r, g = [1, 0, 0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1]
    group = grpo(r, g, eps=1e-4)
    none = grpo(r, g, std_level="none")
    exp_group = [1.4997, -0.4999, -0.4999, -0.4999, 0.4999, 0.4999, -1.4997, 0.4999]
    torch.testing.assert_close(group, t(exp_group), atol=1e-4, rtol=0)
    torch.testing.assert_close(none, t([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, -0.75, 0.25]))
    # TRL `batch` divides by the raw batch std (√(4/7)): 1.402859. group/batch here divides by the
    # std of the group-centred rewards (√(1.5/7)) instead: 0.75/(0.462910 + 1e-4) = 1.619827.
    batch = grpo(r, g, std_level="batch", eps=1e-4)
    assert abs(float(batch[0]) - 0.75 / (math.sqrt(1.5 / 7) + 1e-4)) < 1e-12
    assert abs(float(batch[0]) - 1.402859) > 0.2


def test_tc7_token_weighted_vs_sequence_weighted_batch_norm():
    values = t([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    out = normalize(values, torch.tensor([0, 1]), mean_level="batch", std_level="batch", mask=mask, eps=1e-5)
    # tokens {1, 0, 0, 0}: mean 1/4, unbiased std 1/2
    torch.testing.assert_close(out, t([[0.75 / 0.50001, 0, 0], [-0.25 / 0.50001] * 3]))
    assert abs(float(out[0, 0]) - 1.49997) < 1e-5 and abs(float(out[1, 0]) + 0.49999) < 1e-5
    seq = normalize(t([1.0, 0.0]), torch.tensor([0, 1]), mean_level="batch", std_level="batch", eps=1e-5)
    assert abs(float(seq[0]) - 0.707097) < 1e-6 and abs(float(seq[1]) + 0.707097) < 1e-6


def test_tc8_pipelinerl_is_not_group_group_leave_one_out():
    # PipelineRL divides the LOO-centred reward by the *plain* group std: ±1.154501 (TC8). Here the std
    # is taken around the subtracted (LOO) mean, which gives plain GRPO's value: ±0.866.
    out = grpo([1, 0, 0, 1], [0] * 4, leave_one_out=True, eps=1e-4)
    centred = 2 / 3  # 1 − 1/3
    a = centred / (math.sqrt(4 * centred**2 / 3) + 1e-4)
    torch.testing.assert_close(out, t([a, -a, -a, a]))
    assert abs(a - 0.865913) < 1e-6


def test_tc21_token_whitening_biased_and_unbiased():
    values = t([[0.5, 0.0, 0.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    kw = dict(mean_level="batch", std_level="batch", mask=mask, eps=0.0)
    unb = normalize(values, torch.tensor([0, 1]), unbiased=True, **kw)
    bia = normalize(values, torch.tensor([0, 1]), unbiased=False, **kw)
    torch.testing.assert_close(unb, t([[1.5, 0, 0], [-0.5] * 3]))
    s = math.sqrt(0.75 / 4)  # biased std of {.5, −.5, −.5, −.5}
    torch.testing.assert_close(bia, t([[0.75 / s, 0, 0], [-0.25 / s] * 3]))
    assert abs(float(bia[0, 0]) - 1.732051) < 1e-6 and abs(float(bia[1, 0]) + 0.57735) < 1e-5


# ---------------------------------------------------------------- masked tokens, reference loop


def test_masked_positions_are_zero_and_ignored():
    values = t([[1.0, 2.0, 99.0], [3.0, float("nan"), 5.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    out = normalize(values, torch.tensor([4, 4]), mean_level="group", std_level="group", mask=mask, eps=0.0)
    # tokens {1, 2, 3, 5}: mean 11/4, Σ(x−μ)² = 3.0625+0.5625+0.0625+5.0625 = 8.75, unbiased var 35/12
    s = math.sqrt(35 / 12)
    expected = t([[(1 - 2.75) / s, (2 - 2.75) / s, 0.0], [(3 - 2.75) / s, 0.0, (5 - 2.75) / s]])
    torch.testing.assert_close(out, expected)


def _reference(values, gids, mask, mean_level, std_level, loo, unbiased, eps):
    """Element-by-element loop over Python lists: the formula of the docstring, nothing shared."""
    B = len(values)
    elems = [(b, j) for b in range(B) for j in range(len(values[b])) if mask[b][j]]

    def members(b, level):
        if level == "batch":
            return elems
        return [(c, j) for (c, j) in elems if gids[c] == gids[b]]

    def mean_of(b, j):
        """The mean subtracted from element (b, j)."""
        if mean_level == "none":
            return 0.0
        vals = [values[c][k] for c, k in members(b, mean_level)]
        if loo:
            return (sum(vals) - values[b][j]) / (len(vals) - 1) if len(vals) >= 2 else 0.0
        return sum(vals) / len(vals)

    out = [[0.0] * len(values[b]) for b in range(B)]
    for b, j in elems:
        x, mu = values[b][j], mean_of(b, j)
        if std_level == "none":
            out[b][j] = x - mu
            continue
        mem = members(b, std_level)
        d = len(mem) - 1 if unbiased else len(mem)
        sd = math.sqrt(sum((values[c][k] - mean_of(c, k)) ** 2 for c, k in mem) / d) if d >= 1 else 1.0
        out[b][j] = (x - mu) / (sd + eps)
    return out


@pytest.mark.parametrize("mean_level,std_level", list(itertools.product(NORM_LEVELS, NORM_LEVELS)))
def test_token_level_matches_reference_loop(mean_level, std_level):
    gen = torch.Generator().manual_seed(3)
    B, T = 7, 5
    values = torch.randn(B, T, generator=gen, dtype=F64)
    lengths = [5, 1, 3, 0, 4, 2, 5]
    mask = torch.tensor([[j < n for j in range(T)] for n in lengths])
    gids = [2, 9, 2, 5, 9, 2, 11]  # group 11 is a singleton, group 5 has no valid token
    for loo, unbiased in itertools.product([False, True], [False, True]):
        out = normalize(
            values, torch.tensor(gids), mean_level=mean_level, std_level=std_level, mask=mask,
            leave_one_out=loo, unbiased=unbiased, eps=1e-6,
        )
        ref = _reference(values.tolist(), gids, mask.tolist(), mean_level, std_level, loo, unbiased, 1e-6)
        torch.testing.assert_close(out, t(ref), rtol=1e-12, atol=1e-12)


def test_float32_input_keeps_dtype_and_integer_input_becomes_float():
    x32 = torch.tensor([1.0, 0.0], dtype=torch.float32)
    out = normalize(x32, torch.tensor([0, 0]), mean_level="group", std_level="none")
    assert out.dtype == torch.float32
    out = normalize(torch.tensor([1, 0]), torch.tensor([0, 0]), mean_level="group", std_level="none")
    assert out.dtype == torch.float32 and out.tolist() == [0.5, -0.5]
