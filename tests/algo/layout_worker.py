"""Layout-invariance helpers, and the worker process of the 2-rank gloo test.

A shared parameter θ [D] produces per-token log-probs logp = −softplus(feat·θ) for a padded batch;
the loss of a layout (micro-batches, each padded to its own length, on one or more ranks, with the
minibatch's global counts) must equal the whole-batch loss, and so must the gradient wrt θ.

Run as a script: `python layout_worker.py RANK WORLD INIT_METHOD OUT_JSON`.
"""

from __future__ import annotations

import json
import sys
from functools import partial

import torch
import torch.nn.functional as F

from areal_lite.algo import (
    LOSS_REDUCTIONS,
    NORM_LEVELS,
    aggregate_stats,
    loss_counts,
    normalize,
    policy_loss,
    reduce_loss,
)

F64 = torch.float64
B, T, D = 8, 9, 4
LENGTHS = [9, 3, 0, 5, 1, 7, 4, 2]  # row 2 has no trained token
GROUP_IDS = [4, 1, 4, 9, 1, 4, 9, 6]  # non-adjacent, unequal, group 6 is a singleton
NORM_CONSTANT = 16.0
POLICY_KW = dict(eps_clip=0.2, eps_clip_higher=0.28, c_clip=3.0, behav_weight_cap=1.5, behav_weight_mode="mask")


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(B, T, D, generator=gen, dtype=F64)
    theta0 = torch.randn(D, generator=gen, dtype=F64)
    mask = torch.tensor([[j < n for j in range(T)] for n in LENGTHS])
    old = -F.softplus(feat @ theta0) + 0.1 * torch.randn(B, T, generator=gen, dtype=F64)
    behav = old + 0.3 * torch.randn(B, T, generator=gen, dtype=F64)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5], dtype=F64)
    adv_seq = normalize(rewards, torch.tensor(GROUP_IDS), mean_level="group", std_level="batch")
    adv = adv_seq[:, None].expand(B, T) + 0.2 * torch.randn(B, T, generator=gen, dtype=F64)
    return dict(feat=feat, theta0=theta0, mask=mask, old=old, behav=behav, adv=adv,
                token_values=torch.randn(B, T, generator=gen, dtype=F64), rewards=rewards)


def layout_loss(batch, theta, mode, rows_per_mb, total_tokens, total_seqs, ratio_level="token"):
    """Σ over micro-batches of the reduced loss; each micro-batch is padded to its own max length."""
    total = theta.new_zeros(())
    stats = []
    for rows in rows_per_mb:
        idx = torch.tensor(rows, dtype=torch.long)
        width = max(1, max(LENGTHS[r] for r in rows))  # [b, width]: a different padding per micro-batch
        mb = {k: batch[k][idx, :width] for k in ("feat", "old", "adv", "mask", "behav")}
        logp = -F.softplus(mb["feat"] @ theta)
        tok, st = policy_loss(logp, mb["old"], mb["adv"], mb["mask"], behav_logp=mb["behav"],
                              ratio_level=ratio_level, **POLICY_KW)
        total = total + reduce_loss(tok, mb["mask"], mode, norm_constant=NORM_CONSTANT,
                                    total_tokens=total_tokens, total_seqs=total_seqs)
        stats.append(st)
    return total, stats


def full_loss(batch, theta, mode, ratio_level="token"):
    logp = -F.softplus(batch["feat"] @ theta)
    tok, _ = policy_loss(logp, batch["old"], batch["adv"], batch["mask"], behav_logp=batch["behav"],
                         ratio_level=ratio_level, **POLICY_KW)
    return reduce_loss(tok, batch["mask"], mode, norm_constant=NORM_CONSTANT)


def loss_and_grad(fn):
    theta = make_batch()["theta0"].clone().requires_grad_()
    loss = fn(theta)
    (grad,) = torch.autograd.grad(loss, theta)
    return loss.detach(), grad


SHARDS = [[0, 3, 4, 7], [1, 2, 5, 6]]  # groups 1, 4 and 9 have trained tokens on both ranks
RANK_MICROBATCHES = [[[4], [0, 7], [3]], [[6, 1], [2, 5]]]


def run_rank(rank: int, world: int, init_method: str) -> dict:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        batch = make_batch()
        n_tok, n_seq = loss_counts(batch["mask"])  # the minibatch's global counts (every rank knows them)
        out: dict = {"loss": {}, "norm": {}, "norm_local": {}}
        for mode in LOSS_REDUCTIONS:
            for ratio_level in ("token", "sequence"):
                theta = batch["theta0"].clone().requires_grad_()
                loss, stats = layout_loss(batch, theta, mode, RANK_MICROBATCHES[rank], n_tok, n_seq, ratio_level)
                (grad,) = torch.autograd.grad(loss, theta)
                both = torch.cat([loss.detach()[None], grad])
                dist.all_reduce(both)  # FSDP would average: the trainer multiplies by the world size
                ref_loss, ref_grad = loss_and_grad(partial(full_loss, batch, mode=mode, ratio_level=ratio_level))
                agg = aggregate_stats(stats, group=dist.group.WORLD)
                out["loss"][f"{mode}/{ratio_level}"] = {
                    "loss": both[0].item(), "ref_loss": ref_loss.item(),
                    "grad": both[1:].tolist(), "ref_grad": ref_grad.tolist(), "n_tokens": agg["n_tokens"],
                }
        rows = torch.tensor(SHARDS[rank])
        gids = torch.tensor(GROUP_IDS)
        for mean_level in NORM_LEVELS:
            for std_level in NORM_LEVELS:
                for loo in (False, True):
                    kw = dict(mean_level=mean_level, std_level=std_level, leave_one_out=loo)
                    # token level, this rank's rows only, statistics all-reduced
                    part = normalize(batch["token_values"][rows], gids[rows], mask=batch["mask"][rows],
                                     group=dist.group.WORLD, **kw)
                    whole = normalize(batch["token_values"], gids, mask=batch["mask"], **kw)[rows]
                    seq_part = normalize(batch["rewards"][rows], gids[rows], group=dist.group.WORLD, **kw)
                    seq_whole = normalize(batch["rewards"], gids, **kw)[rows]
                    local = normalize(batch["token_values"][rows], gids[rows], mask=batch["mask"][rows], **kw)
                    key = f"{mean_level}/{std_level}/{loo}"
                    out["norm"][key] = max(
                        (part - whole).abs().max().item(), (seq_part - seq_whole).abs().max().item()
                    )
                    out["norm_local"][key] = (local - whole).abs().max().item()
        return out
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    rank_, world_, init_, path_ = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    result = run_rank(rank_, world_, init_)
    with open(path_, "w") as f:
        json.dump(result, f)
