"""Batched sampling: reported log-probs against hand-computed values, and the filters."""

import math

import pytest
import torch

from areal_lite.inference.embedded.sampling import sample_next_tokens

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
