"""The default micro-batch layout (`max_row_tokens: 0`): sequences sorted by length into micro-batches;
rows shared where two sequences fit one, otherwise one sequence per row with plain causal attention.
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
    assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))  # every sequence once
    assert all(mb == sorted(mb) for mb in mbs)  # index order inside a micro-batch
    for a, b in zip(mbs, mbs[1:]):  # longest first: no sequence of a later micro-batch is longer
        assert min(lengths[i] for i in a) >= max(lengths[i] for i in b)
    assert all(len(mb) * max(lengths[i] for i in mb) <= 60 for mb in mbs)
    assert sorted_microbatches(lengths, [2, 4, 7], 60) == [[2, 4, 7]]  # a rank's shard only
    with pytest.raises(ValueError, match="31 tokens exceeds max_tokens_per_mb=30"):
        sorted_microbatches([31, 3], [0, 1], 30)


def test_one_sequence_per_row_runs_on_through_its_padding_without_a_mask():
    batch = make_batch(vocab=200)
    lens_all = [int(n) for n in batch.seqlens]
    seqs = [i for i, n in enumerate(lens_all) if n > max(lens_all) // 2]  # no two fit one row
    mb = build_microbatch(batch, seqs, packed=True, device=CPU, row_tokens=0)
    lens = [lens_all[i] for i in seqs]
    assert mb.attention_mask is None  # transformers then runs plain causal attention
    assert mb.input_ids.shape == (len(seqs), max(lens))
    assert torch.equal(mb.position_ids, torch.arange(max(lens)).expand(len(seqs), -1))
    off = batch.offsets
    for r, (i, n) in enumerate(zip(seqs, lens)):
        assert mb.input_ids[r, :n].tolist() == batch.input_ids[off[i]:off[i + 1]].tolist()
        assert not mb.input_ids[r, n:].any()
    assert mb.num_model_tokens == len(seqs) * max(lens) and mb.num_real_tokens == sum(lens)


def test_rows_are_shared_where_two_sequences_fit_one():
    batch = make_batch(vocab=200)
    seqs = list(range(len(batch.seqlens)))  # lengths 7..33: the short ones pair up in rows of 33
    mb = build_microbatch(batch, seqs, packed=True, device=CPU, row_tokens=0)
    assert mb.attention_mask is None and mb.input_ids.shape[0] < len(seqs)
    assert (mb.position_ids[:, 1:] == 0).any()  # a second sequence (or the tail) restarts its positions
    assert mb.num_real_tokens == int(batch.seqlens.sum())
