"""Varlen attention (`actor.attn_impl: varlen`) against transformers' own SDPA path on a real Qwen2
model (grouped-query attention): the same log-probs and gradients over packed rows, padded rows and
one row per micro-batch, with no padding left in the varlen layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from areal_lite.trainer.attention import VARLEN, resolve_attn_impl, segments, varlen_attention
from areal_lite.trainer.batch import SeqBatch, build_microbatch, build_shared_row, pack_shared_microbatches

CPU = torch.device("cpu")


def _batch(vocab: int, lens: list[int], seed: int = 0, groups: list[tuple[int, int]] | None = None) -> SeqBatch:
    """Random sequences; `groups` [(group id, prompt length)] per sequence: a group's sequences share their prompt."""
    rng = np.random.default_rng(seed)
    groups = groups or [(i, 1) for i in range(len(lens))]
    prompts: dict[int, np.ndarray] = {}
    ids = []
    for n, (g, p) in zip(lens, groups):
        prompt = prompts.setdefault(g, rng.integers(3, vocab, p))
        ids.append(np.concatenate([prompt, rng.integers(3, vocab, n - p)]))
    n = sum(lens)
    return SeqBatch(input_ids=np.concatenate(ids), loss_mask=np.ones(n, bool), behav_logp=np.zeros(n, np.float32),
                    versions=np.zeros(n, np.int32), seqlens=np.asarray(lens),
                    prompt_lens=np.asarray([p for _, p in groups], np.int64), rewards=np.zeros(len(lens)),
                    group_ids=np.asarray([g for g, _ in groups], np.int64), truncated=np.zeros(len(lens), bool),
                    prompt_ids=[""] * len(lens))


def _logp_and_grads(model, mb) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-token log-probs of the real tokens (sequence order) and the gradient of a weighted sum of them."""
    model.zero_grad(set_to_none=True)
    if mb.pred is None:  # as the engine: position k predicts token k + 1
        logits = model(input_ids=mb.input_ids, position_ids=mb.position_ids, attention_mask=mb.attention_mask,
                       use_cache=False).logits
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, mb.input_ids[:, 1:, None])[..., 0]
        lp = torch.cat([lp.new_zeros(lp.shape[0], 1), lp], 1)
    else:  # a row with shared prompts: each token's logits at its predictor
        logits = model(input_ids=mb.input_ids, position_ids=mb.position_ids, logits_to_keep=mb.pred).logits
        lp = torch.log_softmax(logits, -1).gather(-1, mb.input_ids[..., None])[..., 0]
    lp = lp.reshape(-1)[mb.flat].masked_fill(mb.col == 0, 0.0)
    (lp * torch.linspace(0.5, 1.5, lp.numel(), device=lp.device)).sum().backward()
    return lp.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    resolve_attn_impl("varlen", CPU)  # registers the implementation
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    varlen = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=VARLEN, dtype=torch.float32)
    assert sdpa.config.num_key_value_heads < sdpa.config.num_attention_heads  # grouped-query attention is covered
    return sdpa, varlen


def test_varlen_matches_sdpa_in_every_layout(models):
    torch.set_num_threads(1)
    sdpa, varlen = models
    batch = _batch(sdpa.config.vocab_size, [17, 5, 33, 9, 21, 2, 40, 12])
    seqs = list(range(8))
    ref = build_microbatch(batch, seqs, packed=True, device=CPU)  # rows as long as the longest, padded tails
    ref_lp, ref_grads = _logp_and_grads(sdpa, ref)
    layouts = {
        "one row": build_microbatch(batch, seqs, packed=True, device=CPU, row_tokens=10_000),
        "rows of 40": build_microbatch(batch, seqs, packed=True, device=CPU),
        "padded": build_microbatch(batch, seqs, packed=False, device=CPU),
    }
    assert layouts["one row"].num_model_tokens == layouts["one row"].num_real_tokens == sum(batch.seqlens)
    assert ref.num_model_tokens > ref.num_real_tokens and layouts["one row"].input_ids.shape[0] == 1
    for name, mb in layouts.items():
        lp, grads = _logp_and_grads(varlen, mb)
        assert torch.allclose(lp, ref_lp, atol=1e-5), (name, float((lp - ref_lp).abs().max()))
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, atol=1e-5, rtol=1e-4), (name, float((g - r).abs().max()))
    # Without the per-sequence split the one-row layout would let sequences see each other: it matters.
    whole = build_microbatch(batch, seqs, packed=True, device=CPU, row_tokens=10_000)
    leaked = sdpa(input_ids=whole.input_ids, position_ids=torch.arange(whole.input_ids.shape[1])[None]).logits
    assert not torch.allclose(leaked, varlen(input_ids=whole.input_ids, position_ids=whole.position_ids).logits)


def test_shared_prompts_give_each_sequence_its_own_log_probs(models):
    """A group's samples carry their prompt once (`build_shared_row`): the same log-probs and gradients as
    every sequence alone, with fewer model tokens; a sequence whose prompt differs is not shared."""
    torch.set_num_threads(1)
    sdpa, varlen = models
    lens = [20, 9, 31, 12, 25, 14, 14, 30]
    groups = [(0, 7), (0, 7), (0, 7), (1, 12), (1, 12), (2, 5), (3, 5), (1, 12)]  # group 1: a sample with no answer
    batch = _batch(sdpa.config.vocab_size, lens, seed=1, groups=groups)
    seqs = list(range(len(lens)))
    ref_lp, ref_grads = _logp_and_grads(sdpa, build_microbatch(batch, seqs, packed=True, device=CPU))
    shared = build_shared_row(batch, seqs, device=CPU)
    assert shared.num_model_tokens == sum(lens) - 2 * 7 - 2 * 12 and shared.num_real_tokens == sum(lens)
    lp, grads = _logp_and_grads(varlen, shared)
    assert torch.allclose(lp, ref_lp, atol=1e-5), float((lp - ref_lp).abs().max())
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4), float((g - r).abs().max())
    # Packing keeps a group's samples together and counts its prompt once against the budget.
    mbs = pack_shared_microbatches(batch, seqs, max_tokens=60)
    assert sorted(i for mb in mbs for i in mb) == seqs
    for mb in mbs:
        assert build_shared_row(batch, mb, device=CPU).num_model_tokens <= 60
    assert any({0, 1, 2} <= set(mb) for mb in mbs)


def sequence_sizes(position_ids: torch.Tensor, rows: int, length: int) -> list[int]:
    return [size for _, size, _, _ in segments(position_ids, rows, length)]


def test_sequence_sizes_follow_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert sequence_sizes(pos, 2, 6) == [3, 2, 1, 4, 2]
    assert sequence_sizes(torch.arange(5)[None], 3, 5) == [5, 5, 5]  # one position row broadcast over rows
    # Positions continuing a prompt (shared prompts) make a sequence that sees that prompt's first tokens.
    assert segments(torch.tensor([[0, 1, 2, 3, 2, 3, 0, 1, 1]]), 1, 9) == [(0, 4, -1, 0), (4, 2, 0, 2),
                                                                         (6, 2, -1, 0), (8, 1, 6, 1)]
    with pytest.raises(ValueError, match="restart at 0"):
        segments(torch.tensor([[0, 1, 5, 6]]), 1, 4)


def test_resolve_attn_impl():
    assert resolve_attn_impl("auto", CPU) == VARLEN
    assert resolve_attn_impl("auto", torch.device("cuda")) == "sdpa"  # constructing a device needs no GPU
    assert resolve_attn_impl("sdpa", CPU) == "sdpa"
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        resolve_attn_impl("flash", CPU)


def test_varlen_refuses_what_it_does_not_apply(models):
    _, varlen = models
    attn = varlen.model.layers[0].self_attn
    q = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="sliding window"):
        varlen_attention(attn, q, q, q, None, sliding_window=4, position_ids=torch.arange(8)[None])
    with pytest.raises(ValueError, match="soft-capping"):
        varlen_attention(attn, q, q, q, None, softcap=30.0)
