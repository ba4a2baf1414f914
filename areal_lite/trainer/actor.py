"""The PPO actor: from a batch of trajectory groups to advantages to decoupled-PPO updates.

Per training step (every rank holds the whole batch's metadata; see batch.py):
  1. proximal log-probs: one no-grad pass with the current weights (same temperature as generation),
     when `recompute_logprob`; reference log-probs only when a KL term is configured;
  2. reward shaping (bias/scale/clip, DAPO overlong penalty, zero for truncated answers) →
     group filtering (top-k groups by reward std) → advantages (`adv_norm`) → soft reweighting;
  3. `ppo_n_minibatches` optimizer steps, each minibatch's loss reduced with its global token and
     sequence counts (across all micro-batches and ranks), so the layout never changes the update.
The formulas live in `areal_lite.algo`; this module only wires them to the config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from areal_lite import algo
from areal_lite.trainer.batch import MicroBatch, SeqBatch, balance_across_ranks, token_values_to_rows


@dataclass
class Advantages:
    """Per-token advantages of the kept sequences, and which sequences were kept."""

    keep: np.ndarray  # [B] bool
    token_adv: np.ndarray  # [N] float32 over the whole batch (0 on dropped sequences and context)
    stats: dict[str, float]


def _allreduce_sum(x: np.ndarray, group: dist.ProcessGroup) -> np.ndarray:
    """Sum of a per-token array over the ranks of `group` (each rank filled only its own sequences)."""
    if dist.get_world_size(group) == 1:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    dist.all_reduce(t, group=group)
    return t.numpy()


class PPOActor:
    def __init__(self, actor_cfg: Any, *, max_new_tokens: int, loss_norm_constant: float, seed: int):
        self.cfg = actor_cfg
        self.max_new_tokens = max_new_tokens
        self.loss_norm_constant = loss_norm_constant
        self.seed = seed

    # ------------------------------------------------------------------ log-probs

    def layout(self, engine, batch: SeqBatch, seq_subset: np.ndarray | None = None) -> list[list[int]]:
        """This rank's micro-batches over `seq_subset` (default: all sequences), balanced by tokens."""
        idx = np.arange(batch.num_seqs) if seq_subset is None else seq_subset
        lengths = [int(batch.seqlens[i]) for i in idx]
        shards = [[int(idx[j]) for j in shard] for shard in balance_across_ranks(lengths, engine.world_size)]
        return engine.microbatches(batch, shards)[engine.rank]

    def compute_logp(self, engine, batch: SeqBatch) -> np.ndarray:
        """Log-probs of every token under `engine`'s current weights, gathered on all ranks ([N])."""
        return _allreduce_sum(engine.forward_logp(batch, self.layout(engine, batch)), engine.dist.cpu_group)

    @property
    def needs_entropy(self) -> bool:
        """Entropy shaping needs the policy's per-token entropy before the advantages."""
        return self.cfg.entropy_shaping.mode != "none"

    def proximal(self, engine, batch: SeqBatch) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(proximal log-probs, entropies), both [N] on every rank, from one no-grad pass.

        Log-probs when `recompute_logprob`, entropies when entropy shaping is on; (None, None) and
        no pass when neither is wanted.
        """
        want_logp, want_ent = self.cfg.recompute_logprob, self.needs_entropy
        if not (want_logp or want_ent):
            return None, None
        my_mbs = self.layout(engine, batch)
        if not want_ent:
            return _allreduce_sum(engine.forward_logp(batch, my_mbs), engine.dist.cpu_group), None
        logp, ent = engine.forward_logp(batch, my_mbs, with_entropy=True)
        both = _allreduce_sum(np.concatenate([logp, ent]), engine.dist.cpu_group)
        n = logp.shape[0]
        return (both[:n] if want_logp else None), both[n:]

    def kl_per_token(self, logp: np.ndarray, ref_logp: np.ndarray) -> np.ndarray:
        """The configured KL estimate per token ([N]), for the KL-in-reward penalty."""
        kl = algo.kl_estimate(torch.from_numpy(logp), torch.from_numpy(ref_logp), self.cfg.kl_estimator,
                              clamp=self.cfg.kl_clamp)
        return kl.numpy()

    # ------------------------------------------------------------------ advantages

    def compute_advantages(
        self, batch: SeqBatch, *, kl: np.ndarray | None = None, entropy: np.ndarray | None = None
    ) -> Advantages:
        """Shaped rewards → group filter → advantages (adv_norm, or entropy shaping) → soft reweight.

        `kl` ([N], for `kl_in_reward`) and `entropy` ([N], for `entropy_shaping`) are per-token arrays
        over the whole batch, as `kl_per_token` and `proximal` return them.
        """
        c = self.cfg
        if self.needs_entropy and entropy is None:
            raise ValueError("actor.entropy_shaping is on: compute_advantages needs the entropies from proximal()")
        if self.needs_entropy and kl is not None:
            raise ValueError("actor.entropy_shaping cannot be combined with actor.kl_in_reward")
        rewards = torch.from_numpy(batch.rewards.astype(np.float64))
        gen_lens = torch.from_numpy(batch.gen_lens())
        group_ids = torch.from_numpy(batch.group_ids)
        stats: dict[str, float] = {}

        shaped = algo.shape_rewards(
            rewards,
            bias=c.reward_bias,
            scaling=c.reward_scaling,
            clip=c.reward_clip,
            truncated=torch.from_numpy(batch.truncated) if c.mask_truncated_reward else None,
        )
        if c.overlong_penalty.enabled:
            shaped = shaped + algo.overlong_penalty(
                gen_lens, max_len=self.max_new_tokens, buffer_len=c.overlong_penalty.buffer_len,
                factor=c.overlong_penalty.penalty_factor,
            )

        keep = torch.ones(batch.num_seqs, dtype=torch.bool)
        if c.group_filter.top_k_ratio < 1.0:
            keep, fstats = algo.top_k_groups_by_std(shaped, group_ids, ratio=c.group_filter.top_k_ratio)
            stats.update({f"filter/{k}": float(v) for k, v in fstats.items()})

        n = c.adv_norm
        kept = keep.nonzero().squeeze(1)
        off = batch.offsets
        token_adv = np.zeros(batch.input_ids.shape[0], np.float32)
        mask_np = batch.loss_mask
        if self.needs_entropy:
            token_adv_rows, sel, estats = self._entropy_shaped(batch, shaped, group_ids, kept, entropy)
            stats.update(estats)
            for r, i in enumerate(sel):
                L = int(batch.seqlens[i])
                token_adv[off[i] : off[i] + L] = token_adv_rows[r, :L].float().numpy()
        elif n.weighting == "sequence" and kl is None:
            seq_adv = torch.zeros(batch.num_seqs, dtype=torch.float64)
            seq_adv[kept] = algo.normalize(
                shaped[kept], group_ids[kept], mean_level=n.mean_level, std_level=n.std_level,
                leave_one_out=n.leave_one_out, unbiased=n.unbiased, eps=n.eps,
            )
            if c.group_filter.soft_reweight:
                seq_adv[kept], sstats = algo.soft_reweight(seq_adv[kept], shaped[kept], group_ids[kept])
                stats.update({f"train/soft_reweight_{k}": float(v) for k, v in sstats.items()})
            for i in kept.tolist():
                seg = slice(off[i], off[i + 1])
                token_adv[seg] = np.where(mask_np[seg], float(seq_adv[i]), 0.0)
        else:
            # Token-level values: the outcome reward on every generated token, minus kl_ctl·KL of the
            # token and all later ones (γ = λ = 1) when the KL penalty is part of the reward.
            sel = kept.tolist()
            max_len = int(batch.seqlens[sel].max()) if sel else 1
            mask = token_values_to_rows(batch, sel, mask_np.astype(np.float32), max_len) > 0
            values = shaped[kept].to(torch.float64)[:, None].expand(-1, max_len).clone()
            if kl is not None:
                kl_rows = token_values_to_rows(batch, sel, kl.astype(np.float32), max_len).to(torch.float64)
                values = values + algo.kl_reward_to_go(kl_rows, mask, c.kl_ctl)
                stats["reward/kl_penalty_mean"] = float(
                    (kl_rows * mask).sum(dim=1).mean() * c.kl_ctl) if sel else 0.0
            values = values * mask
            adv_rows = algo.normalize(
                values, group_ids[kept], mask=mask, mean_level=n.mean_level, std_level=n.std_level,
                leave_one_out=n.leave_one_out, unbiased=n.unbiased, eps=n.eps,
            )
            if c.group_filter.soft_reweight:
                adv_rows, sstats = algo.soft_reweight(adv_rows, shaped[kept], group_ids[kept])
                stats.update({f"train/soft_reweight_{k}": float(v) for k, v in sstats.items()})
            for r, i in enumerate(sel):
                L = int(batch.seqlens[i])
                token_adv[off[i] : off[i] + L] = adv_rows[r, :L].float().numpy()

        adv_vals = token_adv[mask_np & np.repeat(keep.numpy(), batch.seqlens)]
        stats.update(
            {
                "reward/shaped_mean": float(shaped.mean()),
                "adv/mean": float(adv_vals.mean()) if adv_vals.size else 0.0,
                "adv/std": float(adv_vals.std()) if adv_vals.size else 0.0,
                "adv/max": float(adv_vals.max()) if adv_vals.size else 0.0,
                "adv/min": float(adv_vals.min()) if adv_vals.size else 0.0,
                "filter/kept_seqs": float(keep.sum()),
            }
        )
        return Advantages(keep.numpy(), token_adv, stats)

    def _entropy_shaped(self, batch, shaped, group_ids, kept, entropy):
        """GTPO (token) or GRPO-S (sequence) advantages of the kept sequences, `[K, T]` rows."""
        c, n = self.cfg, self.cfg.adv_norm
        sel = kept.tolist()
        max_len = int(batch.seqlens[sel].max()) if sel else 1
        mask = token_values_to_rows(batch, sel, batch.loss_mask.astype(np.float32), max_len) > 0
        ent_rows = token_values_to_rows(batch, sel, entropy.astype(np.float32), max_len).to(torch.float64)
        r, g = shaped[kept].to(torch.float64), group_ids[kept]
        beta = c.entropy_shaping.beta
        if c.entropy_shaping.mode == "token":
            x, positive = algo.gtpo_token_rewards(r, ent_rows, mask, g, beta=beta)
            adv = algo.entropy_shaped_advantages(x, positive, g, mask=mask, unbiased=n.unbiased, eps=n.eps)
        else:
            x, positive = algo.grpo_s_rewards(r, ent_rows, mask, g, beta=beta)
            adv = algo.entropy_shaped_advantages(x, positive, g, unbiased=n.unbiased, eps=n.eps)
            adv = adv[:, None].expand(-1, max_len)
        adv = torch.where(mask, adv, 0.0)
        if c.group_filter.soft_reweight:
            adv, sstats = algo.soft_reweight(adv, r, g)
            soft = {f"train/soft_reweight_{k}": float(v) for k, v in sstats.items()}
        else:
            soft = {}
        m = mask.to(torch.float64)
        stats = {
            "entropy_shaping/success_frac": float(positive.double().mean()) if sel else 0.0,
            "entropy_shaping/entropy_mean": float((ent_rows * m).sum() / m.sum().clamp(min=1)),
            **soft,
        }
        return adv, sel, stats

    # ------------------------------------------------------------------ update

    def ppo_update(
        self,
        engine,
        batch: SeqBatch,
        adv: Advantages,
        *,
        prox_logp: np.ndarray | None,
        ref_logp: np.ndarray | None,
        step: int,
    ) -> dict[str, float]:
        c = self.cfg
        kept = np.flatnonzero(adv.keep)
        rng = np.random.default_rng([self.seed, step])
        order = kept[rng.permutation(len(kept))]
        minibatches = np.array_split(order, c.ppo_n_minibatches)
        old_logp = prox_logp if prox_logp is not None else batch.behav_logp
        behav = batch.behav_logp if (c.use_decoupled_loss and prox_logp is not None) else None
        totals: dict[str, float] = {}
        maxima: dict[str, float] = {}
        t0 = time.perf_counter()
        for mb_seqs in minibatches:
            mb_seqs = np.sort(mb_seqs)
            gen = batch.gen_lens()[mb_seqs]
            total_tokens = float(gen.sum())
            total_seqs = float((gen > 0).sum())
            if total_tokens == 0:
                continue

            def loss_fn(logp: torch.Tensor, entropy: torch.Tensor | None, mb: MicroBatch):
                return self._loss(batch, mb, logp, entropy, old_logp, behav, ref_logp, adv.token_adv,
                                  total_tokens, total_seqs)

            stats = engine.train_minibatch(batch, self.layout(engine, batch, mb_seqs), loss_fn)
            for k, v in stats.items():
                if k.endswith("_max"):
                    maxima[k] = max(maxima.get(k, float("-inf")), v)
                else:
                    totals[k] = totals.get(k, 0.0) + v
        totals["update_s"] = time.perf_counter() - t0
        return self._finalize_stats(totals, maxima, len(minibatches), engine.dist.cpu_group)

    def _loss(self, batch, mb, logp, entropy, old_logp, behav, ref_logp, token_adv, total_tokens, total_seqs):
        c = self.cfg
        rows = lambda arr: token_values_to_rows(batch, mb.seq_index, arr, mb.max_len).to(logp.device)  # noqa: E731
        shape = (len(mb.seq_index), mb.max_len)
        logp_rows = logp.new_zeros(shape).index_put((mb.row, mb.col), logp)  # [B, T]
        mask = rows(batch.loss_mask.astype(np.float32)) > 0
        old = rows(old_logp.astype(np.float32))
        adv = rows(token_adv)
        behav_rows = rows(behav.astype(np.float32)) if behav is not None else None
        token_loss, pstats = algo.policy_loss(
            logp_rows, old, adv, mask,
            eps_clip=c.eps_clip, eps_clip_higher=c.eps_clip_higher, c_clip=c.c_clip,
            behav_logp=behav_rows, behav_weight_cap=c.behav_weight_cap, behav_weight_mode=c.behav_weight_mode,
            ratio_level=c.ratio_level,
        )
        loss = algo.reduce_loss(
            token_loss, mask, c.loss_reduction, norm_constant=self.loss_norm_constant,
            total_tokens=total_tokens, total_seqs=total_seqs,
        )
        stats = {k: float(v) for k, v in pstats.items()}
        if c.kl_ctl > 0 and not c.kl_in_reward and ref_logp is not None:
            kl = algo.kl_estimate(logp_rows, rows(ref_logp.astype(np.float32)), c.kl_estimator, clamp=c.kl_clamp)
            kl_loss = algo.reduce_loss(kl * mask, mask, "token_mean", total_tokens=total_tokens)
            loss = loss + c.kl_ctl * kl_loss
            stats["kl_sum"] = float((kl.detach() * mask).sum())
        if entropy is not None:
            ent_rows = entropy.new_zeros(shape).index_put((mb.row, mb.col), entropy.detach())
            stats["entropy_sum"] = float((ent_rows * mask).sum())
        stats["loss"] = float(loss.detach())
        stats["n_tokens"] = float(mask.sum())
        stats["model_tokens"] = float(mb.num_model_tokens)
        stats["real_tokens"] = float(mb.num_real_tokens)
        return loss, stats

    def _finalize_stats(self, totals: dict[str, float], maxima: dict[str, float], n_minibatches: int,
                        group: dist.ProcessGroup) -> dict:
        """Sum statistics over ranks, then turn sums into the per-step metrics."""
        keys = sorted(totals)
        world = dist.get_world_size(group)
        if world > 1 and keys:
            t = torch.tensor([totals[k] for k in keys], dtype=torch.float64)
            dist.all_reduce(t, group=group)
            totals = dict(zip(keys, t.tolist()))
            mkeys = sorted(maxima)
            if mkeys:
                m = torch.tensor([maxima[k] for k in mkeys], dtype=torch.float64)
                dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
                maxima = dict(zip(mkeys, m.tolist()))
        n_tok = max(totals.get("n_tokens", 0.0), 1.0)
        out = {
            "loss": totals.get("loss", 0.0) / max(n_minibatches, 1),
            "grad_norm": totals.get("grad_norm", 0.0) / max(n_minibatches * world, 1),
            "lr": totals.get("lr", 0.0) / max(n_minibatches * world, 1),
            "entropy": totals.get("entropy_sum", 0.0) / n_tok,
            "train/trained_tokens": totals.get("n_tokens", 0.0) / max(n_minibatches, 1) * n_minibatches,
            "perf/padding_waste": 1.0 - totals.get("real_tokens", 0.0) / max(totals.get("model_tokens", 1.0), 1.0),
            # Sequence tokens through forward + backward + optimizer, per second of the update (all ranks).
            "perf/trained_tokens_per_s": totals.get("real_tokens", 0.0)
            / max(totals.get("update_s", 0.0) / world, 1e-9),
        }
        for k, v in totals.items():
            if k == "update_s":
                continue
            if k.endswith("_sum") and k not in ("entropy_sum",):
                out[f"ppo/{k[:-4]}_mean"] = v / n_tok
            elif k.endswith("_count"):
                out[f"ppo/{k[:-6]}_frac"] = v / n_tok
        for k, v in maxima.items():
            out[f"ppo/{k}"] = v
        return out
