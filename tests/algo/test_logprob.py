"""Chunked log-probs and entropy: exact against the naive path, and never a full float32 [N, V]."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from areal_lite.algo import logprobs_and_entropy, logprobs_and_entropy_naive


def _grads(fn, logits, labels, w_lp, w_ent, **kw):
    x = logits.detach().clone().requires_grad_()
    lp, ent = fn(x, labels, **kw)
    (g,) = torch.autograd.grad((lp * w_lp).sum() + (ent * w_ent).sum(), x)
    return lp.detach(), ent.detach(), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 0.0])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_chunked_matches_naive_values_and_gradients(dtype, temperature, chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 9, 257, generator=gen)).to(dtype)
    labels = torch.randint(0, 257, (2, 9), generator=gen)
    w_lp, w_ent = torch.randn(2, 9, generator=gen).to(dtype), torch.randn(2, 9, generator=gen).to(dtype)
    a = _grads(logprobs_and_entropy, logits, labels, w_lp, w_ent, temperature=temperature, chunk_size=chunk_size)
    b = _grads(logprobs_and_entropy_naive, logits, labels, w_lp, w_ent, temperature=temperature)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for x, y in zip(a, b):
        assert x.dtype == dtype
        torch.testing.assert_close(x, y, **tol)


def test_strided_slice_like_the_engine_uses():
    # The engine passes logits[:, :-1] (not contiguous); only logp is requested.
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 50, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 5), generator=gen)
    lp, ent = logprobs_and_entropy(logits[:, :-1], labels, chunk_size=2, with_entropy=False)
    assert ent is None
    (g,) = torch.autograd.grad(lp.sum(), logits)
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[..., None]).squeeze(-1)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(lp, ref)
    torch.testing.assert_close(g, g_ref)
    assert float(g[:, -1].abs().sum()) == 0.0


def test_gradcheck_float64_both_outputs():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    assert torch.autograd.gradcheck(lambda t: logprobs_and_entropy(t, labels, temperature=1.3, chunk_size=3), (x,))


def test_hand_computed_uniform_and_peaked():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf, -math.inf]], dtype=torch.float64)
    lp, ent = logprobs_and_entropy(logits, torch.tensor([2, 1]))
    # uniform over 4: log(1/4), H = log 4; (3/4, 1/4, 0, 0): log(1/4), H = −(.75 log .75 + .25 log .25)
    torch.testing.assert_close(lp, torch.tensor([-math.log(4), -math.log(4)], dtype=torch.float64))
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(ent, torch.tensor([math.log(4), h2], dtype=torch.float64))
    # −inf logits (a masked vocabulary) contribute nothing to the entropy or its gradient
    x = logits.clone().requires_grad_()
    lp, ent = logprobs_and_entropy(x, torch.tensor([2, 1]))
    (g,) = torch.autograd.grad(ent.sum(), x)
    assert torch.isfinite(g).all() and g[1, 2:].tolist() == [0.0, 0.0]
    # ∂H/∂x_j = −p_j (log p_j + H) for the (3/4, 1/4) row
    expected = [-0.75 * (math.log(0.75) + h2), -0.25 * (math.log(0.25) + h2)]
    torch.testing.assert_close(g[1, :2], torch.tensor(expected, dtype=torch.float64))


def test_bf16_logits_computed_in_float32():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 40, generator=gen).to(torch.bfloat16)
    labels = torch.randint(0, 40, (5,), generator=gen)
    lp, ent = logprobs_and_entropy(logits, labels, chunk_size=2)
    lp_ref, ent_ref = logprobs_and_entropy_naive(logits.float(), labels)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, lp_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-6, atol=1e-6)


class _RecordFloat32(TorchDispatchMode):
    """Largest float32 tensor produced by any op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.dtype == torch.float32:
                self.largest = max(self.largest, o.numel())
        return out


def test_never_materialises_full_float32_vocab_tensor():
    N, V, chunk = 64, 1000, 8
    logits = torch.randn(N, V).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, V, (N,))
    with _RecordFloat32() as rec:
        lp, ent = logprobs_and_entropy(logits, labels, chunk_size=chunk)
        (lp.sum() + ent.sum()).backward()
    assert rec.largest <= chunk * V
    with _RecordFloat32() as naive:
        lp, ent = logprobs_and_entropy_naive(logits, labels)
        (lp.sum() + ent.sum()).backward()
    assert naive.largest >= N * V  # the check above would catch a full-size tensor


def test_shape_errors():
    with pytest.raises(ValueError):
        logprobs_and_entropy(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        logprobs_and_entropy(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), chunk_size=0)
