"""Batched next-token sampling with the log-probabilities the trainer recomputes.

Semantics (the same as SGLang's default sampler and as the trainer's `logp`):
- the reported log-prob of a sampled token is log_softmax(logits / T) at that token, in float32, over the
  *untruncated* vocabulary: top-p / top-k / min_new_tokens change what is sampled, not what is reported;
- greedy rows (temperature 0) take argmax(logits) and report log_softmax(logits) (T = 1), as SGLang does
  by turning temperature 0 into top_k = 1 at temperature 1.

Sampling inverts each row's cumulative distribution at one uniform draw (one random number per row):
the same distribution as `torch.multinomial`, whose CPU kernel draws an exponential per vocabulary
entry and cost more than a decode step's matmuls on small models.
"""

from __future__ import annotations

import torch


def sample_next_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    greedy: torch.Tensor,
    *,
    top_p: torch.Tensor | None = None,
    top_k: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
    all_greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; returns (tokens [B] long, logprobs [B] float32).

    logits [B, V] (any float dtype); temperature [B] (1.0 on greedy rows); greedy [B] bool;
    top_p [B] in (0, 1] and top_k [B] (<= 0 or >= V: whole vocabulary) are None when no row filters;
    banned [B, V] bool marks tokens a row may not sample (min_new_tokens), None when none are.
    """
    logits = logits.float()
    scaled = logits / temperature.unsqueeze(1)  # [B, V]
    logp = torch.log_softmax(scaled, dim=-1)  # [B, V], the reported distribution
    if all_greedy and banned is None:
        tokens = torch.argmax(logits, dim=-1)
    else:
        pick = scaled if banned is None else scaled.masked_fill(banned, float("-inf"))
        if top_p is None and top_k is None:
            probs = logp.exp() if banned is None else torch.softmax(pick, dim=-1)
            tokens = sample_from_probs(probs, generator)
        else:
            tokens = _sample_filtered(pick, top_p, top_k, generator)
        if bool(greedy.any()):
            tokens = torch.where(greedy, torch.argmax(pick, dim=-1), tokens)
    token_logp = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
    # A token of zero probability would report -inf, which JSON cannot carry (SGLang clamps the same way).
    return tokens, token_logp.clamp_(min=torch.finfo(torch.float32).min)


def _sample_filtered(
    scaled: torch.Tensor,
    top_p: torch.Tensor | None,
    top_k: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Sample from softmax(scaled) restricted to each row's top-k / top-p set."""
    vocab = scaled.shape[-1]
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [B, V]
    rank = torch.arange(vocab, device=scaled.device).unsqueeze(0)  # [1, V]
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if top_k is not None:
        k = torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)
        drop |= rank >= k.unsqueeze(1)
    sorted_probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    if top_p is not None:
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays);
        # rows at top_p = 1 keep everything, even where rounding puts the running sum at 1.
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        p = top_p.unsqueeze(1)
        drop |= (mass_before >= p) & (p < 1.0)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    choice = sample_from_probs(sorted_probs, generator)  # [B] index into sorted order
    return order.gather(1, choice.unsqueeze(1)).squeeze(1)


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of probs [B, V] (non-negative, any positive total), drawn in proportion.

    Inverse-CDF sampling: with u uniform in (0, 1], the first index whose cumulative mass reaches
    u * total. Such an index always adds positive mass, so zero-probability entries are never drawn;
    the cumulative sum is float64 so that a long tail of tiny probabilities keeps its mass.
    """
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)  # [B, V]
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    target = (1.0 - u) * cdf[:, -1:]  # in (0, total]
    index = torch.searchsorted(cdf, target).squeeze(1)  # [B]
    return index.clamp_(max=probs.shape[-1] - 1)  # only NaN mass lands past the end
