"""Training batches: groups → sequences → data-parallel shards → token-budget micro-batches.

Every rank holds the whole batch's metadata (it is small: token ids and a few floats per token), so
advantages, loss denominators and the rank/micro-batch layout are computed identically everywhere
without communication; each rank then runs forward/backward on its own shard only.

Micro-batches are packed: a micro-batch's sequences are concatenated into rows with position ids
restarting at 0 per sequence, which transformers turns into a block-diagonal causal mask (no
padding, no cross-sequence attention). Everything per token that the algorithm uses (masks,
log-probs, advantages) lives in one layout for the whole step, `[B, T]` rows (sequence b's token t
at [b, t]): the engine returns its results in it, and a micro-batch's loss reads its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


@dataclass
class SeqBatch:
    """A batch of sequences as flat token arrays with offsets (the wire layout, concatenated)."""

    input_ids: np.ndarray  # [N] int64, all sequences back to back
    loss_mask: np.ndarray  # [N] bool
    behav_logp: np.ndarray  # [N] float32
    versions: np.ndarray  # [N] int32
    seqlens: np.ndarray  # [B] int64
    prompt_lens: np.ndarray  # [B] int64
    rewards: np.ndarray  # [B] float64 (raw outcome rewards)
    group_ids: np.ndarray  # [B] int64 (index of the group within the batch)
    truncated: np.ndarray  # [B] bool (finish_reason == "length")
    prompt_ids: list[str] = field(default_factory=list)  # [B]
    # [B] float64: each sequence's ReMax baseline (its prompt's greedy reward), NaN where the workflow sent none
    baseline_rewards: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.seqlens)])

    @property
    def num_seqs(self) -> int:
        return int(self.seqlens.shape[0])

    @property
    def max_len(self) -> int:
        """T of the `[B, T]` row layout: the longest sequence."""
        return int(self.seqlens.max()) if self.num_seqs else 1

    def to_rows(self, values: np.ndarray) -> torch.Tensor:
        """A per-token array `[N]` of the whole batch as `[B, T]` rows (0 past each sequence's end)."""
        rows = np.zeros((self.num_seqs, self.max_len), dtype=values.dtype)
        row = np.repeat(np.arange(self.num_seqs), self.seqlens)
        col = np.arange(values.shape[0]) - np.repeat(self.offsets[:-1], self.seqlens)
        rows[row, col] = values
        return torch.from_numpy(rows)

    def gen_lens(self) -> np.ndarray:
        """Generated (trained) tokens per sequence."""
        off = self.offsets
        return np.add.reduceat(self.loss_mask.astype(np.int64), off[:-1]) if self.num_seqs else np.zeros(0, np.int64)

    def select(self, idx: Sequence[int]) -> "SeqBatch":
        idx = np.asarray(idx, dtype=np.int64)
        off = self.offsets
        token_idx = (
            np.concatenate([np.arange(off[i], off[i + 1]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
        )
        return SeqBatch(
            input_ids=self.input_ids[token_idx],
            loss_mask=self.loss_mask[token_idx],
            behav_logp=self.behav_logp[token_idx],
            versions=self.versions[token_idx],
            seqlens=self.seqlens[idx],
            prompt_lens=self.prompt_lens[idx],
            rewards=self.rewards[idx],
            group_ids=self.group_ids[idx],
            truncated=self.truncated[idx],
            prompt_ids=[self.prompt_ids[i] for i in idx],
            baseline_rewards=None if self.baseline_rewards is None else self.baseline_rewards[idx],
        )


def batch_from_groups(groups: Sequence) -> SeqBatch:
    """Concatenate trajectory groups (transport `TrajectoryGroup`s) into one SeqBatch."""
    ids, mask, blp, ver, seqlens, plens, rewards, gids, trunc, pids = [], [], [], [], [], [], [], [], [], []
    baselines = []
    for gi, g in enumerate(groups):
        ids.append(g.input_ids.astype(np.int64))
        mask.append(g.loss_mask.astype(bool))
        blp.append(g.behav_logp.astype(np.float32))
        ver.append(g.versions.astype(np.int32))
        seqlens.append(g.seqlens.astype(np.int64))
        for s in g.samples:
            plens.append(int(s["prompt_len"]))
            rewards.append(float(s["reward"]))
            baselines.append(float(s.get("baseline_reward", np.nan)))
            trunc.append(s.get("finish_reason") == "length")
            gids.append(gi)
            pids.append(g.prompt_id)
    cat = np.concatenate
    return SeqBatch(
        input_ids=cat(ids),
        loss_mask=cat(mask),
        behav_logp=cat(blp),
        versions=cat(ver),
        seqlens=cat(seqlens),
        prompt_lens=np.asarray(plens, np.int64),
        rewards=np.asarray(rewards, np.float64),
        group_ids=np.asarray(gids, np.int64),
        truncated=np.asarray(trunc, bool),
        prompt_ids=pids,
        baseline_rewards=np.asarray(baselines, np.float64),
    )


def balance_across_ranks(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Assign sequence indices to ranks so that token counts are as even as possible (LPT greedy).

    Deterministic, so every rank computes the same assignment. Sequences of one group may land on
    different ranks; nothing in the algorithm needs them together (statistics come from the whole
    batch every rank holds).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    loads = [0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        r = min(range(world_size), key=lambda k: (loads[k], len(shards[k]), k))
        shards[r].append(i)
        loads[r] += lengths[i]
    return [sorted(s) for s in shards]


def pack_microbatches(lengths: Sequence[int], indices: Sequence[int], max_tokens: int) -> list[list[int]]:
    """First-fit-decreasing packing of `indices` into bins of at most `max_tokens` tokens (micro-batches, rows)."""
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        if lengths[i] > max_tokens:
            raise ValueError(f"a sequence of {lengths[i]} tokens exceeds max_tokens_per_mb={max_tokens}")
        for b in range(len(bins)):
            if loads[b] + lengths[i] <= max_tokens:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return [sorted(b) for b in bins]


def chunk_microbatches(lengths: Sequence[int], indices: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Padded layout: consecutive sequences while B·max_len stays within `max_tokens` (no sorting)."""
    bins: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in indices:
        new_max = max(cur_max, lengths[i])
        if cur and new_max * (len(cur) + 1) > max_tokens:
            bins.append(cur)
            cur, cur_max = [], 0
            new_max = lengths[i]
        cur.append(i)
        cur_max = new_max
    if cur:
        bins.append(cur)
    return bins


@dataclass
class MicroBatch:
    """Model inputs of one micro-batch and the map from model tokens back to `[B, T]` rows."""

    input_ids: torch.Tensor  # [R, L]: packed rows, or one padded row per sequence (R = B)
    position_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor | None  # [R, L] for the padded layout, None when packed
    seq_index: list[int]  # batch indices of the sequences, in row order
    row: torch.Tensor  # [n] row in the [B, T] layout of each real token
    col: torch.Tensor  # [n] column in the [B, T] layout of each real token
    flat: torch.Tensor  # [n] position of each real token in the flattened model input
    max_len: int
    num_real_tokens: int  # sequence tokens (a shared prompt counts once per sequence)
    num_model_tokens: int  # tokens the model runs, padding included
    num_padding_tokens: int = 0
    # [L] of one row with shared prompts: the model position whose logits predict each position's token
    # (the token before it, or the prompt's last token for an answer's first); None: the row's previous token.
    pred: torch.Tensor | None = None
    dummy: bool = False  # a placeholder that keeps a rank without work in step with the others (trains nothing)


def shared_prompt_units(batch: SeqBatch, indices: Sequence[int]) -> list[list[int]]:
    """`indices` in clusters whose sequences share their prompt (one group, the same prompt tokens),
    in order of first appearance; a sequence that shares with none is a cluster of its own."""
    off = batch.offsets
    units: dict[tuple, list[int]] = {}
    for i in indices:
        p = int(batch.prompt_lens[i])
        key = (int(batch.group_ids[i]), p, batch.input_ids[off[i]: off[i] + p].tobytes()) if p > 0 else ("", i)
        units.setdefault(key, []).append(i)
    return list(units.values())


def shared_length(batch: SeqBatch, unit: Sequence[int]) -> int:
    """Model tokens of a cluster with its prompt carried once."""
    return int(batch.seqlens[unit[0]]) + sum(int(batch.seqlens[i] - batch.prompt_lens[i]) for i in unit[1:])


def pack_shared_microbatches(batch: SeqBatch, indices: Sequence[int], max_tokens: int) -> list[list[int]]:
    """First-fit-decreasing packing of prompt-sharing clusters into micro-batches of at most
    `max_tokens` model tokens, each cluster's prompt counted once; a cluster longer than that is cut
    into pieces that fit (each carries the prompt again)."""
    pieces: list[list[int]] = []
    for unit in shared_prompt_units(batch, indices):
        cur: list[int] = []
        for i in unit:
            if cur and shared_length(batch, cur + [i]) > max_tokens:
                pieces.append(cur)
                cur = []
            cur.append(i)
        pieces.append(cur)
    lengths = [shared_length(batch, piece) for piece in pieces]
    bins = pack_microbatches(lengths, range(len(pieces)), max_tokens)
    return [sorted(i for k in b for i in pieces[k]) for b in bins]


def build_shared_row(batch: SeqBatch, seq_index: Sequence[int], *, device: torch.device) -> MicroBatch:
    """One row without padding in which the sequences of a group that share a prompt carry it once.

    A cluster's first sequence is laid out whole (positions from 0); each other sequence follows with
    only its answer, at positions continuing from its prompt's length, which is how the varlen
    attention knows to let it see the prompt (`trainer.attention.segments`). The prompt tokens of
    every sequence in the cluster map to the first one's (`flat`), and `pred` names the model
    position whose logits predict each token: an answer's first token is predicted at its prompt's
    last token. Every sequence's log-probs are therefore what it would get alone.
    """
    off = batch.offsets
    row_of = {i: r for r, i in enumerate(seq_index)}
    ids, pos, pred, flat = [], [], [], [None] * len(seq_index)
    cursor = 0
    for unit in shared_prompt_units(batch, seq_index):
        first, root = unit[0], cursor
        n = int(batch.seqlens[first])
        ids.append(batch.input_ids[off[first]: off[first + 1]])
        pos.append(np.arange(n))
        pred.append(np.maximum(cursor + np.arange(n) - 1, cursor))  # a sequence's first token: no prediction
        flat[row_of[first]] = cursor + np.arange(n)
        cursor += n
        for i in unit[1:]:
            p, n = int(batch.prompt_lens[i]), int(batch.seqlens[i])
            ids.append(batch.input_ids[off[i] + p: off[i + 1]])
            pos.append(np.arange(p, n))
            pred.append(np.concatenate([[root + p - 1], cursor + np.arange(n - p - 1)]) if n > p else np.zeros(0, int))
            flat[row_of[i]] = np.concatenate([root + np.arange(p), cursor + np.arange(n - p)])
            cursor += n - p
    lens = [int(batch.seqlens[i]) for i in seq_index]
    t = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64)).to(device)  # noqa: E731
    return MicroBatch(
        input_ids=t(ids).view(1, cursor),
        position_ids=t(pos).view(1, cursor),
        attention_mask=None,
        seq_index=list(seq_index),
        row=t([np.full(n, r) for r, n in enumerate(lens)]),
        col=t([np.arange(n) for n in lens]),
        flat=t(flat),
        max_len=max(lens),
        num_real_tokens=sum(lens),
        num_model_tokens=cursor,
        pred=t(pred),
    )


def build_microbatch(
    batch: SeqBatch, seq_index: Sequence[int], *, packed: bool, device: torch.device, row_tokens: int = 0
) -> MicroBatch:
    """Model inputs for the sequences `seq_index` of `batch`.

    Packed: sequences side by side in rows of max(`row_tokens`, longest sequence) tokens (first fit
    decreasing), each restarting its position ids, which is how transformers recognises packed
    sequences and masks attention between them; a row's padding is a sequence of its own, whose
    outputs are dropped. Attention over a row costs its length squared (on CPU, and on GPU without a
    variable-length kernel, the block-diagonal mask is dense), so rows as long as the longest
    sequence cost no more attention than padding, while short sequences share rows.
    Padded: one `[max_len]` row per sequence with an attention mask.
    """
    off = batch.offsets
    lens = [int(batch.seqlens[i]) for i in seq_index]
    max_len = max(lens) if lens else 1
    token_idx = np.concatenate([np.arange(off[i], off[i + 1]) for i in seq_index]) if lens else np.zeros(0, np.int64)
    rows = np.concatenate([np.full(n, r) for r, n in enumerate(lens)]) if lens else np.zeros(0, np.int64)
    cols = np.concatenate([np.arange(n) for n in lens]) if lens else np.zeros(0, np.int64)
    ids = torch.from_numpy(batch.input_ids[token_idx])
    if packed:
        packed_rows = pack_microbatches(lens, range(len(lens)), max([row_tokens, *lens])) or [[]]
        loads = [sum(lens[k] for k in row) for row in packed_rows]
        width = max(max(loads), 1)
        offset = np.zeros(len(lens), np.int64)  # each sequence's first position in the flattened rows
        for r, row in enumerate(packed_rows):
            offset[row] = r * width + np.cumsum([0] + [lens[k] for k in row[:-1]])
        flat = torch.from_numpy(np.concatenate([np.arange(n) + offset[k] for k, n in enumerate(lens)])
                                if lens else np.zeros(0, np.int64))
        input_ids = torch.zeros(len(packed_rows) * width, dtype=torch.long)
        input_ids[flat] = ids
        # Position ids: each sequence's own 0..n-1; every row's tail (padding) counts from 0 again.
        position_ids = torch.cat([torch.cat([torch.zeros(load, dtype=torch.long), torch.arange(width - load)])
                                  for load in loads])
        position_ids[flat] = torch.from_numpy(cols)
        input_ids, position_ids = input_ids.view(len(packed_rows), width), position_ids.view(len(packed_rows), width)
        attention_mask = None
        model_tokens = len(packed_rows) * width
        padding = model_tokens - sum(loads)
    else:
        input_ids = torch.zeros(len(lens), max_len, dtype=torch.long)
        attention_mask = torch.zeros(len(lens), max_len, dtype=torch.long)
        input_ids[rows, cols] = ids
        attention_mask[rows, cols] = 1
        position_ids = torch.arange(max_len).expand(len(lens), -1).contiguous()
        flat = torch.from_numpy(rows * max_len + cols)
        model_tokens = len(lens) * max_len
        padding = model_tokens - len(token_idx)
    return MicroBatch(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=None if attention_mask is None else attention_mask.to(device),
        seq_index=list(seq_index),
        row=torch.from_numpy(rows).to(device),
        col=torch.from_numpy(cols).to(device),
        flat=flat.to(device),
        max_len=max_len,
        num_real_tokens=len(token_idx),
        num_model_tokens=model_tokens,
        num_padding_tokens=padding,
    )
