"""Batched sampling: reported log-probs against hand-computed values, and the filters."""

import math

import pytest
import torch

from areal_lite.inference.embedded.sampling import sample_from_probs, sample_next_tokens

LN2 = math.log(2.0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_greedy_rows_take_argmax_and_report_untempered_logprob():
    # probs of row 0 = [1/4, 1/4, 1/2]; row 1 = [1/2, 1/4, 1/4]
    logits = torch.tensor([[0.0, 0.0, LN2], [LN2, 0.0, 0.0]])
    tokens, logp = sample_next_tokens(
        logits, torch.ones(2), torch.ones(2, dtype=torch.bool), all_greedy=True, generator=_gen()
    )
    assert tokens.tolist() == [2, 0]
    assert logp.tolist() == pytest.approx([math.log(0.5), math.log(0.5)], abs=1e-6)


def test_logprob_is_under_temperature_scaled_untruncated_distribution():
    # T = 0.5 doubles the logits: [0, 0, 2 ln2] -> probs [1/6, 1/6, 4/6]. top_k = 1 forces token 2,
    # but the reported log-prob stays log(4/6) (the filter changes what is sampled, not what is reported).
    logits = torch.tensor([[0.0, 0.0, LN2]])
    tokens, logp = sample_next_tokens(
        logits,
        torch.tensor([0.5]),
        torch.zeros(1, dtype=torch.bool),
        top_p=torch.ones(1),
        top_k=torch.tensor([1]),
        generator=_gen(),
    )
    assert tokens.tolist() == [2]
    assert logp.item() == pytest.approx(math.log(4 / 6), abs=1e-6)


def test_top_p_keeps_smallest_prefix_reaching_mass():
    # probs [0.5, 0.25, 0.125, 0.125]: top_p 0.6 keeps {0, 1}; top_p 0.5 keeps {0} only.
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]])).repeat(400, 1)
    top_p = torch.tensor([0.6] * 200 + [0.5] * 200)
    tokens, _ = sample_next_tokens(
        logits, torch.ones(400), torch.zeros(400, dtype=torch.bool), top_p=top_p, top_k=torch.full((400,), -1), generator=_gen(1)
    )
    assert set(tokens[:200].tolist()) == {0, 1}
    assert set(tokens[200:].tolist()) == {0}


def test_sampling_frequencies_follow_tempered_distribution():
    # T = 2 on log([0.64, 0.36]) gives probs proportional to [0.8, 0.6] = [4/7, 3/7].
    n = 20000
    logits = torch.log(torch.tensor([[0.64, 0.36]])).repeat(n, 1)
    tokens, logp = sample_next_tokens(logits, torch.full((n,), 2.0), torch.zeros(n, dtype=torch.bool), generator=_gen(2))
    freq = tokens.float().mean().item()
    assert freq == pytest.approx(3 / 7, abs=0.015)  # ~4 standard deviations
    expected = torch.where(tokens == 1, math.log(3 / 7), math.log(4 / 7))
    assert torch.allclose(logp, expected, atol=1e-5)


def test_banned_tokens_are_never_sampled_but_logprob_is_unmasked():
    logits = torch.tensor([[5.0, 0.0, 0.0]]).repeat(50, 1)
    banned = torch.zeros(50, 3, dtype=torch.bool)
    banned[:, 0] = True
    greedy = torch.tensor([True] * 25 + [False] * 25)
    tokens, logp = sample_next_tokens(logits, torch.ones(50), greedy, banned=banned, generator=_gen(3))
    assert 0 not in tokens.tolist()
    ref = torch.log_softmax(logits[0], -1)
    assert torch.allclose(logp, ref[tokens])


def test_inverse_cdf_draw_matches_a_naive_walk_of_the_cumulative_mass():
    # The same uniforms, drawn from a generator in the same state, walked token by token in Python.
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.1, 0.0, 0.0, 0.0, 0.0, 0.9], [0.0, 0.0, 2.0, 0.0, 0.0, 2.0]])
    probs = probs.repeat(50, 1)  # [150, 6]; the last rows' total is 4 (unnormalised weights are fine)
    got = sample_from_probs(probs, _gen(7))
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, generator=_gen(7)).squeeze(1)
    for row, (p, ui, token) in enumerate(zip(probs.tolist(), u.tolist(), got.tolist())):
        target, mass = (1.0 - ui) * sum(p), 0.0
        for j, pj in enumerate(p):
            mass += pj
            if mass >= target:
                break
        assert token == j, row
        assert p[token] > 0


def test_inverse_cdf_frequencies_and_zero_mass_tokens():
    n = 40000
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(n, 1)
    tokens = sample_from_probs(probs, _gen(8))
    counts = torch.bincount(tokens, minlength=6).tolist()
    assert counts[0] == counts[2] == counts[5] == 0
    for j, p in ((1, 0.5), (3, 0.3), (4, 0.2)):
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[j] - n * p) < 4 * sd, (j, counts)


def test_reported_logprob_matches_a_naive_log_softmax_per_row():
    # Mixed rows: greedy, tempered, top-p/top-k filtered; the report is log_softmax(logits / T) at the token.
    gen = _gen(9)
    logits = torch.randn(6, 50, generator=gen) * 3
    temperature = torch.tensor([1.0, 0.5, 1.7, 1.0, 0.8, 2.0])
    greedy = torch.tensor([True, False, False, True, False, False])
    top_p, top_k = torch.tensor([1.0, 0.9, 1.0, 1.0, 0.5, 1.0]), torch.tensor([-1, -1, 5, -1, 3, -1])
    tokens, logp = sample_next_tokens(logits, temperature, greedy, top_p=top_p, top_k=top_k, generator=gen)
    for i in range(6):
        row = (logits[i] / temperature[i]).tolist()
        peak = max(row)
        lse = peak + math.log(sum(math.exp(x - peak) for x in row))
        assert logp[i].item() == pytest.approx(row[tokens[i]] - lse, abs=1e-5)
        if greedy[i]:
            assert tokens[i].item() == int(logits[i].argmax())
