"""Supervised fine-tuning on the same FSDP engine: cross-entropy on the answer tokens of prompt/answer pairs.

Used to warm-start small models before RL (the CPU quickstart's tiny model), and callable directly.
The loss is the token mean over each optimizer batch's answer tokens, across micro-batches and ranks.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch

from areal_lite.trainer.batch import MicroBatch, SeqBatch, balance_across_ranks

logger = logging.getLogger("areal_lite.sft")


def sft_batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]]) -> SeqBatch:
    """A SeqBatch from (prompt ids, answer ids) pairs; the answer tokens are the trained ones."""
    ids, mask, seqlens, plens = [], [], [], []
    for prompt, answer in examples:
        ids.append(np.asarray([*prompt, *answer], np.int64))
        mask.append(np.concatenate([np.zeros(len(prompt), bool), np.ones(len(answer), bool)]))
        seqlens.append(len(prompt) + len(answer))
        plens.append(len(prompt))
    n = len(examples)
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return SeqBatch(
        input_ids=flat,
        loss_mask=np.concatenate(mask) if mask else np.zeros(0, bool),
        behav_logp=np.zeros(flat.shape[0], np.float32),
        versions=np.zeros(flat.shape[0], np.int32),
        seqlens=np.asarray(seqlens, np.int64),
        prompt_lens=np.asarray(plens, np.int64),
        rewards=np.zeros(n),
        group_ids=np.arange(n),
        truncated=np.zeros(n, bool),
        prompt_ids=[str(i) for i in range(n)],
    )


def sft_loss_fn(batch: SeqBatch, total_tokens: float) -> Callable:
    """−Σ log p(answer tokens) / total answer tokens of the optimizer batch (this micro-batch's share)."""
    mask_rows = batch.to_rows(batch.loss_mask)  # [B, T]

    def loss_fn(logp: torch.Tensor, entropy: torch.Tensor | None, mb: MicroBatch):
        mask = mask_rows[torch.as_tensor(mb.seq_index), : mb.max_len].to(logp.device, logp.dtype)
        if mb.dummy:
            mask = torch.zeros_like(mask)
        nll = -(logp * mask).sum()
        return nll / total_tokens, {"sft/nll_sum": float(nll.detach()), "sft/n_tokens": float(mask.sum())}

    return loss_fn


def run_sft(
    engine,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    log_fn: Callable[[int, dict], None] | None = None,
) -> list[float]:
    """Train `engine` on the examples; returns the per-step mean answer-token NLL (identical on all ranks)."""
    losses: list[float] = []
    rng = np.random.default_rng(seed)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(examples))
        for start in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[start : start + batch_size]]
            batch = sft_batch(chunk)
            total = float(batch.loss_mask.sum())
            shards = balance_across_ranks([int(x) for x in batch.seqlens], engine.world_size)
            my_mbs = engine.microbatches(batch, shards)[engine.rank]
            stats = engine.train_minibatch(batch, my_mbs, sft_loss_fn(batch, total))
            nll = _global_sum(stats.get("sft/nll_sum", 0.0), engine.dist.cpu_group) / max(total, 1.0)
            losses.append(nll)
            if log_fn is not None:
                log_fn(step, {"sft/nll": nll, "train/grad_norm": stats["train/grad_norm"], "train/lr": stats["train/lr"]})
            step += 1
    return losses


def _global_sum(x: float, group) -> float:
    import torch.distributed as dist

    if dist.get_world_size(group) == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t.item())
