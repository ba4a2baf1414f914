"""Run under torchrun by test_layout_update.py: one PPO update per (case, micro-batch budget).

A case is a loss reduction, `separate_pass` (seq_mean_token_mean with the proximal log-probs from a
pass of their own instead of the update's forward), or `whole_batch`: the statistics that need the whole minibatch (the
top-entropy quantile, Clip-Cov's random token draw, over two minibatches) with the entropy bonus and
sequence IS weights on top. Writes, from rank 0, the parameter delta of each update to
`{out}/{case}-{budget}-w{world}.safetensors`.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from areal_lite.config.schema import ActorConfig
from areal_lite.trainer.ppo import PPOActor
from areal_lite.trainer.batch import SeqBatch
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.utils.distributed import init_trainer_dist
from areal_lite.utils.distributed import run_and_exit


def make_batch(vocab: int, seed: int = 0) -> SeqBatch:
    """3 groups × 4 samples, prompt and answer lengths varying, rewards with contrast in each group."""
    rng = np.random.default_rng(seed)
    ids, mask, behav, seqlens, plens, rewards, gids = [], [], [], [], [], [], []
    for g in range(3):
        plen = int(rng.integers(4, 9))
        prompt = rng.integers(3, vocab, plen)
        for s in range(4):
            alen = int(rng.integers(3, 30))
            ids.append(np.concatenate([prompt, rng.integers(3, vocab, alen)]))
            mask.append(np.concatenate([np.zeros(plen, bool), np.ones(alen, bool)]))
            behav.append(np.concatenate([np.zeros(plen), -rng.uniform(3.0, 7.0, alen)]).astype(np.float32))
            seqlens.append(plen + alen)
            plens.append(plen)
            rewards.append(float((s + g) % 2))
            gids.append(g)
    flat = np.concatenate(ids).astype(np.int64)
    return SeqBatch(
        input_ids=flat, loss_mask=np.concatenate(mask), behav_logp=np.concatenate(behav),
        versions=np.zeros(flat.shape[0], np.int32), seqlens=np.asarray(seqlens), prompt_lens=np.asarray(plens),
        rewards=np.asarray(rewards), group_ids=np.asarray(gids), truncated=np.zeros(len(seqlens), bool),
        prompt_ids=[f"0:{g}" for g in gids],
    )


def actor_cfg(model: str, case: str) -> ActorConfig:
    if case == "separate_pass":  # the proximal log-probs from their own no-grad pass, not the update's forward
        cfg = actor_cfg(model, "seq_mean_token_mean")
        cfg.prox_logp_in_update = False
        return cfg
    if case != "whole_batch":
        cfg = ActorConfig(path=model, loss_reduction=case, behav_weight_cap=5.0)
        cfg.adv_norm.mean_level, cfg.adv_norm.std_level = "group", "group"
        return cfg
    cfg = ActorConfig(path=model, loss_reduction="seq_mean_token_mean", policy_loss="clip_cov", ppo_n_minibatches=2,
                      top_entropy_fraction=0.5, entropy_coef=0.01)
    cfg.clip_cov.ratio, cfg.clip_cov.cov_lb, cfg.clip_cov.cov_ub = 0.1, -1e9, 1e9  # every token a candidate
    cfg.seq_is.enabled, cfg.seq_is.cap = True, 1.5
    return cfg


def main() -> int:
    model, out, budgets, reductions = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")
    torch.set_num_threads(1)
    d = init_trainer_dist("cpu")
    rank, world = d.rank, d.world_size
    results = {}
    for reduction in reductions:
        for budget in budgets:
            # Adam with eps = 1 and tiny gradients moves each parameter by ≈ lr·g: the delta is
            # proportional to the gradient, so a wrong loss scale cannot hide behind Adam's normalisation.
            # "<tokens>": packed, one row per micro-batch; "<tokens>r<row>": packed rows of max(<row>, longest)
            # tokens; "pad<tokens>": one padded row per sequence (all three with sdpa's block-diagonal mask);
            # "v<tokens>": varlen attention, one row per micro-batch, each group's prompt carried once.
            varlen = budget.startswith("v")
            padded = budget.removeprefix("v").startswith("pad")
            tokens, _, row = budget.removeprefix("v").removeprefix("pad").partition("r")
            spec = EngineSpec(path=model, lr=1e-2, eps=1.0, weight_decay=0.0, gradient_clipping=0.0,
                              max_tokens_per_mb=int(tokens), packing=not padded, max_row_tokens=int(row or tokens),
                              attn_impl="varlen" if varlen else "sdpa")
            engine = FSDPEngine(spec, d, total_optimizer_steps=1)
            engine.initialize()
            before = {k: v.clone() for k, v in engine.full_state_dict().items()}  # may alias the live params
            cfg = actor_cfg(model, reduction)
            actor = PPOActor.build(cfg, max_new_tokens=32, loss_norm_constant=32.0, seed=0)
            batch = make_batch(vocab=200)
            rows = actor.step_rows(engine, batch)
            assert rows.prox_in_update == (reduction in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"))
            assert (rows.prox_logp is None) == rows.prox_in_update
            stats = actor.ppo_update(engine, batch, rows, actor.advantage_fn(batch, rows), step=0)
            after = engine.full_state_dict()
            if rank == 0:
                delta = {k: (after[k] - before[k]).contiguous() for k in after}
                save_file(delta, os.path.join(out, f"{reduction}-{budget}-w{world}.safetensors"))
                results[f"{reduction}-{budget}-w{world}"] = {
                    "loss": stats["ppo/loss"], "grad_norm": stats["train/grad_norm"],
                    "padding_waste": stats["perf/padding_waste"],
                    "model_tokens_per_seq_token": stats["perf/model_tokens_per_seq_token"],
                    **{k: v for k, v in stats.items() if k.startswith(("ppo/", "seq_is/"))}}
            del engine
    if rank == 0:
        with open(os.path.join(out, f"stats-w{world}.json"), "w") as fh:
            json.dump(results, fh)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
