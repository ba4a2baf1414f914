"""The default micro-batch layout: one sequence per row, sorted by length, plain causal attention.
tests/trainer/test_layout_update.py shows the update equals every other layout's; here the layout itself."""

from __future__ import annotations

import pytest
import torch

from areal_lite.trainer.batch import build_microbatch, sorted_microbatches
from tests.trainer.layout_update_worker import make_batch

CPU = torch.device("cpu")


def test_sorted_microbatches_group_similar_lengths_within_the_model_token_budget():
    lengths = [5, 30, 12, 30, 7, 18, 25, 3]
    mbs = sorted_microbatches(lengths, range(len(lengths)), 60)
    flat = [i for mb in mbs for i in mb]
    assert sorted(flat) == list(range(len(lengths)))  # every sequence once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert all(len(mb) * max(lengths[i] for i in mb) <= 60 for mb in mbs)
    assert sorted_microbatches(lengths, [2, 4, 7], 60) == [[2, 4, 7]]  # a rank's shard only
    with pytest.raises(ValueError, match="31 tokens exceeds max_tokens_per_mb=30"):
        sorted_microbatches([31, 3], [0, 1], 30)


def test_one_sequence_per_row_runs_on_through_its_padding_without_a_mask():
    batch = make_batch(vocab=200)
    seqs = sorted_microbatches([int(n) for n in batch.seqlens], range(len(batch.seqlens)), 10**6)[0]
    mb = build_microbatch(batch, seqs, packed=True, device=CPU, row_tokens=0)
    lens = [int(batch.seqlens[i]) for i in seqs]
    assert mb.attention_mask is None  # transformers then runs plain causal attention
    assert mb.input_ids.shape == (len(seqs), max(lens))
    assert torch.equal(mb.position_ids, torch.arange(max(lens)).expand(len(seqs), -1))
    off = batch.offsets
    for r, (i, n) in enumerate(zip(seqs, lens)):
        assert mb.input_ids[r, :n].tolist() == batch.input_ids[off[i]:off[i + 1]].tolist()
        assert not mb.input_ids[r, n:].any()
    assert mb.num_model_tokens == len(seqs) * max(lens) and mb.num_real_tokens == sum(lens)
    packed = build_microbatch(batch, seqs, packed=True, device=CPU, row_tokens=max(lens))
    assert packed.attention_mask is None and packed.position_ids.shape[0] < len(seqs)  # rows shared, positions restart
