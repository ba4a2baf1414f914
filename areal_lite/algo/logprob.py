"""Per-token log-probabilities and entropies from logits, chunked over tokens.

With a 151,936-token vocabulary, a float32 log-softmax over 4,096 tokens is 2.5 GB, and the naive
autograd graph keeps several such tensors alive. Here at most `chunk_size` rows are expanded to the
compute dtype at a time, in the forward pass and again (recomputed from the saved logits and the
row log-sum-exp) in the backward pass. The only full-size tensor ever created is the gradient of
the logits, in the logits' own dtype, which autograd needs anyway.

Temperature: every role (generation-side checks, proximal, reference, training) scores
`logits / T` through this one function; T ≤ 0 (greedy sampling) is treated as 1.
"""

from __future__ import annotations

import torch

# 512 rows × 151,936 × 4 B ≈ 297 MiB per temporary; large enough to keep GPU kernels efficient.
DEFAULT_CHUNK_SIZE = 512


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ChunkedLogpEntropy(torch.autograd.Function):
    """logits [A, M, V], labels [A, M] → logp [A, M] (and entropy [A, M])."""

    @staticmethod
    def forward(ctx, logits, labels, inv_temp: float, chunk_size: int, with_entropy: bool):
        A, M, _ = logits.shape
        cdt = _compute_dtype(logits.dtype)
        logp = torch.empty(A, M, dtype=cdt, device=logits.device)
        lse = torch.empty(A, M, dtype=cdt, device=logits.device)
        ent = torch.empty(A, M, dtype=cdt, device=logits.device) if with_entropy else None
        for a in range(A):
            for s in range(0, M, chunk_size):
                e = min(s + chunk_size, M)
                x = logits[a, s:e].to(cdt, copy=True).mul_(inv_temp)  # [c, V]
                mx = x.amax(dim=-1, keepdim=True)
                p = (x - mx).exp_()  # unnormalised probabilities
                z = p.sum(dim=-1, keepdim=True)
                row_lse = (mx + z.log()).squeeze(-1)  # [c]
                lse[a, s:e] = row_lse
                logp[a, s:e] = x.gather(-1, labels[a, s:e, None]).squeeze(-1) - row_lse
                if with_entropy:
                    # H = lse − Σ p·x; a −inf logit (masked vocabulary) has p·x = 0·(−inf) := 0
                    ent[a, s:e] = row_lse - p.div_(z).mul_(x).nan_to_num_(nan=0.0).sum(dim=-1)
                del x, p
        ctx.inv_temp, ctx.chunk_size, ctx.with_entropy = inv_temp, chunk_size, with_entropy
        ctx.save_for_backward(logits, labels, lse, ent if with_entropy else lse)
        return (logp, ent) if with_entropy else logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_ent=None):
        logits, labels, lse, ent = ctx.saved_tensors
        A, M, _ = logits.shape
        cdt = _compute_dtype(logits.dtype)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        use_ent = ctx.with_entropy and grad_ent is not None
        for a in range(A):
            for s in range(0, M, ctx.chunk_size):
                e = min(s + ctx.chunk_size, M)
                # log p, in place on the chunk copy
                g = logits[a, s:e].to(cdt, copy=True).mul_(ctx.inv_temp).sub_(lse[a, s:e, None])  # [c, V]
                p = g.exp()
                gl = grad_logp[a, s:e, None].to(cdt) if grad_logp is not None else None
                if use_ent:
                    # ∂H/∂x_j = −p_j (log p_j + H), which is 0 where p_j = 0 (log p_j = −inf)
                    g.add_(ent[a, s:e, None]).mul_(p).nan_to_num_(nan=0.0).mul_(-grad_ent[a, s:e, None].to(cdt))
                    if gl is not None:
                        g.sub_(p.mul_(gl))
                elif gl is not None:
                    g = p.mul_(-gl)
                else:
                    g.zero_()
                if gl is not None:
                    # ∂logp/∂x_j = 1[j = label] − p_j
                    g.scatter_add_(-1, labels[a, s:e, None], gl)
                grad[a, s:e] = g.mul_(ctx.inv_temp)
                del g, p
        return grad, None, None, None, None


def logprobs_and_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits/T)[label] and the entropy of softmax(logits/T), per token.

    Args:
        logits: `[..., V]` (any float dtype; bf16/fp16 are computed in float32).
        labels: `[...]` integer token ids in `[0, V)`.
        temperature: T; T ≤ 0 is treated as 1.
        chunk_size: tokens expanded to the compute dtype at a time.
        with_entropy: also return the entropy (else `None`).

    Returns:
        `(logp, entropy)`, each shaped like `labels`, float32 (float64 for float64 logits).
        Gradients flow to `logits` through both.
    """
    if logits.shape[:-1] != labels.shape or logits.dim() < 2:
        raise ValueError(f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + [V]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0
    lead = labels.shape
    # [A, M, V] view without copying slices such as logits[:, :-1] (strided along the token dim).
    x = logits.unsqueeze(0) if logits.dim() == 2 else logits.reshape(-1, *logits.shape[-2:])
    y = labels.reshape(x.shape[:2]).to(torch.long)
    out = _ChunkedLogpEntropy.apply(x, y, inv_temp, int(chunk_size), bool(with_entropy))
    if with_entropy:
        logp, ent = out
        return logp.reshape(lead), ent.reshape(lead)
    return out.reshape(lead), None


def logprobs_and_entropy_naive(
    logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference implementation (full log-softmax at once); same contract as `logprobs_and_entropy`."""
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0
    logprobs = torch.log_softmax(logits.to(_compute_dtype(logits.dtype)) * inv_temp, dim=-1)
    logp = logprobs.gather(-1, labels.to(torch.long).unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp, None
    return logp, -(logprobs.exp() * logprobs).sum(dim=-1)
