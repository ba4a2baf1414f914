"""PPO for the trainer: builders that turn config sections into the step's functions.

The formulas are pure functions in `areal_lite.algo` (docs/algorithms.md); this module reads the
`actor` config section once and returns callables, the way torchtitan's `build_*_loss` wraps its
losses:

    advantage_fn = build_advantage_fn(cfg.actor, max_new_tokens=...)   # batch → Advantages
    loss_fn = build_ppo_loss_fn(cfg.actor, loss_norm_constant=...)      # LossInputs → (loss, stats)
    actor = PPOActor(cfg.actor, loss_fn, seed=cfg.seed)                 # passes and the update

Every per-token quantity of a step is a `[B, T]` row tensor of the whole batch (`StepRows`): masks,
behaviour, proximal and reference log-probs, advantages. A micro-batch's loss reads its rows.
Per step: proximal log-probs (one no-grad pass, when `recompute_logprob`), reference log-probs (only
with a KL term), shaped rewards → group filter → advantages (adv_norm, KL-in-reward or entropy
shaping) → soft reweighting, then `ppo_n_minibatches` optimizer steps whose losses are reduced with
the minibatch's global token and sequence counts, so the update is the same at any layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from areal_lite import algo
from areal_lite.trainer.batch import MicroBatch, SeqBatch, balance_across_ranks


# ------------------------------------------------------------------------------------ step rows


@dataclass
class StepRows:
    """The step's per-token values as `[B, T]` rows; None where the configuration needs none."""

    mask: torch.Tensor  # bool: tokens the policy generated and is trained on
    behav_logp: torch.Tensor  # float32: the inference engine's log-probs
    prox_logp: torch.Tensor | None = None  # float32: recomputed before the update
    ref_logp: torch.Tensor | None = None  # float32: the reference model's (KL)
    entropy: torch.Tensor | None = None  # float32: of the proximal policy (entropy shaping)

    @classmethod
    def of(cls, batch: SeqBatch) -> "StepRows":
        return cls(mask=batch.to_rows(batch.loss_mask), behav_logp=batch.to_rows(batch.behav_logp))

    @property
    def old_logp(self) -> torch.Tensor:
        """π_old of the PPO ratio: the proximal policy when recomputed, else the behaviour policy."""
        return self.prox_logp if self.prox_logp is not None else self.behav_logp


@dataclass
class Advantages:
    """Per-token advantages `[B, T]` (0 on dropped sequences and untrained tokens), which sequences
    were kept, and their statistics."""

    keep: torch.Tensor  # [B] bool
    rows: torch.Tensor  # [B, T] float32
    stats: dict[str, float]


@dataclass
class LossInputs:
    """What a micro-batch's loss needs, all `[b, T_mb]` rows of its sequences."""

    logp: torch.Tensor  # current policy (differentiable)
    old_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    total_tokens: float  # trained tokens of the whole minibatch (all ranks)
    total_seqs: float  # sequences with trained tokens in the whole minibatch
    behav_logp: torch.Tensor | None = None  # decoupled PPO's behaviour policy
    ref_logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    @classmethod
    def for_microbatch(cls, mb: MicroBatch, logp, entropy, rows: StepRows, adv: torch.Tensor, *,
                       decoupled: bool, totals: tuple[float, float]) -> "LossInputs":
        idx, t = torch.as_tensor(mb.seq_index), mb.max_len

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[idx, :t].to(logp.device)

        mask = pick(rows.mask)
        if mb.dummy:  # stands for no sequence: nothing of it is trained
            mask = torch.zeros_like(mask)
        return cls(logp=logp, entropy=entropy, old_logp=pick(rows.old_logp), advantages=pick(adv), mask=mask,
                   behav_logp=pick(rows.behav_logp) if decoupled else None, ref_logp=pick(rows.ref_logp),
                   total_tokens=totals[0], total_seqs=totals[1])


LossFn = Callable[[LossInputs], tuple[torch.Tensor, dict[str, float]]]
AdvantageFn = Callable[..., Advantages]


# ------------------------------------------------------------------------------------ the loss


def build_ppo_loss_fn(actor: Any, *, loss_norm_constant: float) -> LossFn:
    """The decoupled-PPO loss of the `actor` section: clipped policy loss (token or sequence ratio,
    dual clip, behaviour weights), reduced per `loss_reduction`, plus `kl_ctl`·KL when the KL is a
    loss term. Statistics are sums over the micro-batch (`*_max`: maxima), to be aggregated."""

    def loss_fn(x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        token_loss, pstats = algo.policy_loss(
            x.logp, x.old_logp, x.advantages, x.mask,
            eps_clip=actor.eps_clip, eps_clip_higher=actor.eps_clip_higher, c_clip=actor.c_clip,
            behav_logp=x.behav_logp, behav_weight_cap=actor.behav_weight_cap,
            behav_weight_mode=actor.behav_weight_mode, ratio_level=actor.ratio_level,
        )
        loss = algo.reduce_loss(token_loss, x.mask, actor.loss_reduction, norm_constant=loss_norm_constant,
                                total_tokens=x.total_tokens, total_seqs=x.total_seqs)
        stats = {f"ppo/{k}": float(v) for k, v in pstats.items()}
        if actor.kl_ctl > 0 and not actor.kl_in_reward and x.ref_logp is not None:
            kl = algo.kl_estimate(x.logp, x.ref_logp, actor.kl_estimator, clamp=actor.kl_clamp)
            loss = loss + actor.kl_ctl * algo.reduce_loss(kl * x.mask, x.mask, "token_mean",
                                                          total_tokens=x.total_tokens)
            stats["ppo/kl_sum"] = float((kl.detach() * x.mask).sum())
        if x.entropy is not None:
            stats["ppo/entropy_sum"] = float((x.entropy.detach() * x.mask).sum())
        stats["ppo/loss_sum"] = float(loss.detach())
        stats["ppo/n_tokens"] = float(x.mask.sum())
        return loss, stats

    return loss_fn


# ------------------------------------------------------------------------------------ advantages


def build_advantage_fn(actor: Any, *, max_new_tokens: int) -> AdvantageFn:
    """`advantage_fn(batch, rows, kl=None) → Advantages` for the `actor` section.

    shaped rewards (bias, scale, clip, truncation, DAPO overlong penalty) → top-k group filter →
    advantages of the kept sequences: `adv_norm` on sequence rewards broadcast to their tokens, or
    on per-token values when the KL penalty is in the reward (`kl`: `[B, T]`), or GTPO/GRPO-S
    entropy shaping (`rows.entropy`) → Dr.GRPO+ soft reweighting.
    """
    n = actor.adv_norm

    def advantage_fn(batch: SeqBatch, rows: StepRows, *, kl: torch.Tensor | None = None) -> Advantages:
        shaped = _shaped_rewards(actor, batch, max_new_tokens)
        group_ids = torch.from_numpy(batch.group_ids)
        keep, stats = _kept_groups(actor, shaped, group_ids)
        kept = keep.nonzero().squeeze(1)
        mask = rows.mask[kept]  # [K, T]
        r, g = shaped[kept], group_ids[kept]
        if actor.entropy_shaping.mode != "none":
            if rows.entropy is None:
                raise ValueError("actor.entropy_shaping is on: the advantages need the proximal entropies")
            adv, estats = _entropy_shaped(actor, r, g, mask, rows.entropy[kept].double())
            stats.update(estats)
        elif kl is None and n.weighting == "sequence":
            seq = algo.normalize(r, g, mean_level=n.mean_level, std_level=n.std_level,
                                 leave_one_out=n.leave_one_out, unbiased=n.unbiased, eps=n.eps)
            adv = torch.where(mask, seq[:, None], 0.0)
        else:
            values = torch.where(mask, r[:, None], 0.0)  # the outcome reward on every generated token
            if kl is not None:
                # γ = λ = 1: minus kl_ctl·KL of the token and of every later one.
                values = values + algo.kl_reward_to_go(kl[kept].double(), mask, actor.kl_ctl)
                stats["reward/kl_penalty_mean"] = float((kl[kept] * mask).sum(1).mean() * actor.kl_ctl) \
                    if kept.numel() else 0.0
            adv = algo.normalize(torch.where(mask, values, 0.0), g, mask=mask, mean_level=n.mean_level,
                                 std_level=n.std_level, leave_one_out=n.leave_one_out, unbiased=n.unbiased,
                                 eps=n.eps)
        if actor.group_filter.soft_reweight:
            adv, sstats = algo.soft_reweight(adv, r, g)
            stats.update({f"train/soft_reweight_{k}": v for k, v in sstats.items()})
        out = torch.zeros(rows.mask.shape, dtype=torch.float32)
        out[kept] = adv.float()
        stats.update(_advantage_stats(out, rows.mask & keep[:, None], shaped, keep))
        return Advantages(keep, out, stats)

    return advantage_fn


def _shaped_rewards(actor: Any, batch: SeqBatch, max_new_tokens: int) -> torch.Tensor:
    """Outcome rewards [B] after bias, scaling, clipping, truncation masking and the overlong penalty."""
    shaped = algo.shape_rewards(
        torch.from_numpy(batch.rewards.astype(np.float64)), bias=actor.reward_bias, scaling=actor.reward_scaling,
        clip=actor.reward_clip, truncated=torch.from_numpy(batch.truncated) if actor.mask_truncated_reward else None,
    )
    o = actor.overlong_penalty
    if o.enabled:
        shaped = shaped + algo.overlong_penalty(torch.from_numpy(batch.gen_lens()), max_len=max_new_tokens,
                                                buffer_len=o.buffer_len, factor=o.penalty_factor)
    return shaped


def _kept_groups(actor: Any, shaped: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """RAGEN's top-k groups by reward std (all kept at ratio 1)."""
    if actor.group_filter.top_k_ratio >= 1.0:
        return torch.ones(shaped.shape[0], dtype=torch.bool), {}
    keep, fstats = algo.top_k_groups_by_std(shaped, group_ids, ratio=actor.group_filter.top_k_ratio)
    return keep, {f"filter/{k}": float(v) for k, v in fstats.items()}


def _entropy_shaped(actor: Any, r, g, mask, entropy) -> tuple[torch.Tensor, dict[str, float]]:
    """GTPO (token) or GRPO-S (sequence) advantages of the kept sequences, `[K, T]`."""
    n, beta = actor.adv_norm, actor.entropy_shaping.beta
    if actor.entropy_shaping.mode == "token":
        x, positive = algo.gtpo_token_rewards(r, entropy, mask, g, beta=beta)
        adv = algo.entropy_shaped_advantages(x, positive, g, mask=mask, unbiased=n.unbiased, eps=n.eps)
    else:
        x, positive = algo.grpo_s_rewards(r, entropy, mask, g, beta=beta)
        adv = algo.entropy_shaped_advantages(x, positive, g, unbiased=n.unbiased, eps=n.eps)[:, None]
    m = mask.double()
    return torch.where(mask, adv, 0.0), {
        "entropy_shaping/success_frac": float(positive.double().mean()) if r.numel() else 0.0,
        "entropy_shaping/entropy_mean": float((entropy * m).sum() / m.sum().clamp(min=1)),
    }


def _advantage_stats(adv: torch.Tensor, trained: torch.Tensor, shaped: torch.Tensor, keep) -> dict[str, float]:
    vals = adv[trained]
    some = vals.numel() > 0
    return {
        "reward/shaped_mean": float(shaped.mean()),
        "adv/mean": float(vals.mean()) if some else 0.0,
        "adv/std": float(vals.std(unbiased=False)) if some else 0.0,
        "adv/max": float(vals.max()) if some else 0.0,
        "adv/min": float(vals.min()) if some else 0.0,
        "filter/kept_seqs": float(keep.sum()),
    }


# ------------------------------------------------------------------------------------ the actor


class PPOActor:
    """The passes of a PPO step over an `FSDPEngine`: log-probs (proximal, reference) and the update."""

    def __init__(self, actor: Any, loss_fn: LossFn, advantage_fn: AdvantageFn, *, seed: int):
        self.cfg = actor
        self.loss_fn = loss_fn
        self.advantage_fn = advantage_fn
        self.seed = seed

    @classmethod
    def build(cls, actor: Any, *, max_new_tokens: int, loss_norm_constant: float, seed: int) -> "PPOActor":
        """The actor of the `actor` config section, with its loss and advantage functions."""
        return cls(actor, build_ppo_loss_fn(actor, loss_norm_constant=loss_norm_constant),
                   build_advantage_fn(actor, max_new_tokens=max_new_tokens), seed=seed)

    def layout(self, engine, batch: SeqBatch, seqs: np.ndarray | None = None) -> list[list[int]]:
        """This rank's micro-batches over `seqs` (default: all sequences), balanced by tokens."""
        idx = np.arange(batch.num_seqs) if seqs is None else seqs
        shards = balance_across_ranks([int(batch.seqlens[i]) for i in idx], engine.world_size)
        return engine.microbatches(batch, [[int(idx[j]) for j in shard] for shard in shards])[engine.rank]

    def compute_logp(self, engine, batch: SeqBatch) -> torch.Tensor:
        """`[B, T]` log-probs of every token under `engine`'s current weights, on every rank."""
        return _sum_over_ranks(engine.forward_logp(batch, self.layout(engine, batch)), engine.dist.cpu_group)

    def step_rows(self, engine, batch: SeqBatch, *, ref=None) -> StepRows:
        """The step's rows: behaviour log-probs, and the proximal (and reference) passes it needs.

        Entropies come from the same no-grad pass, when entropy shaping wants them.
        """
        rows = StepRows.of(batch)
        want_ent = self.cfg.entropy_shaping.mode != "none"
        if self.cfg.recompute_logprob or want_ent:
            my_mbs, group = self.layout(engine, batch), engine.dist.cpu_group
            if want_ent:
                logp, ent = engine.forward_logp(batch, my_mbs, with_entropy=True)
                both = _sum_over_ranks(torch.stack([logp, ent]), group)
                logp, rows.entropy = both[0], both[1]
            else:
                logp = _sum_over_ranks(engine.forward_logp(batch, my_mbs), group)
            rows.prox_logp = logp if self.cfg.recompute_logprob else None
        if ref is not None:
            rows.ref_logp = self.compute_logp(ref, batch)
        return rows

    def kl_rows(self, rows: StepRows) -> torch.Tensor | None:
        """The KL penalty per token `[B, T]` for `kl_in_reward` (None when the KL is not in the reward)."""
        c = self.cfg
        if rows.ref_logp is None or not c.kl_in_reward:
            return None
        return algo.kl_estimate(rows.old_logp.double(), rows.ref_logp.double(), c.kl_estimator, clamp=c.kl_clamp)

    def ppo_update(self, engine, batch: SeqBatch, rows: StepRows, adv: Advantages, *, step: int) -> dict[str, float]:
        """`ppo_n_minibatches` optimizer steps over the kept sequences (shuffled with the seed and step)."""
        c = self.cfg
        kept = adv.keep.nonzero().squeeze(1).numpy()
        order = kept[np.random.default_rng([self.seed, step]).permutation(len(kept))]
        decoupled = c.use_decoupled_loss and rows.prox_logp is not None
        gen = batch.gen_lens()
        per_mb: list[dict] = []
        t0 = time.perf_counter()
        for seqs in np.array_split(order, c.ppo_n_minibatches):
            seqs = np.sort(seqs)
            totals = (float(gen[seqs].sum()), float((gen[seqs] > 0).sum()))
            if totals[0] == 0:
                continue

            def mb_loss(logp, entropy, mb):
                return self.loss_fn(LossInputs.for_microbatch(mb, logp, entropy, rows, adv.rows,
                                                              decoupled=decoupled, totals=totals))

            per_mb.append(engine.train_minibatch(batch, self.layout(engine, batch, seqs), mb_loss))
        totals = algo.aggregate_stats(per_mb + [{"update_s": time.perf_counter() - t0}], group=engine.dist.cpu_group)
        return _update_metrics(totals, max(len(per_mb), 1), engine.world_size)


def _sum_over_ranks(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Rows each rank filled for its own sequences, summed over the ranks of `group`."""
    if dist.get_world_size(group) > 1:
        dist.all_reduce(x, group=group)
    return x


def _update_metrics(t: dict[str, float], n_minibatches: int, world: int) -> dict[str, float]:
    """Sums over micro-batches, minibatches and ranks → the step's `ppo/*`, `train/*`, `perf/*` metrics."""
    n_tok = max(t.get("ppo/n_tokens", 0.0), 1.0)
    out = {
        "ppo/loss": t.get("ppo/loss_sum", 0.0) / n_minibatches,
        "ppo/entropy": t.get("ppo/entropy_sum", 0.0) / n_tok,
        "train/grad_norm": t.get("train/grad_norm", 0.0) / (n_minibatches * world),
        "train/lr": t.get("train/lr", 0.0) / (n_minibatches * world),
        "train/trained_tokens": t.get("ppo/n_tokens", 0.0),
        "perf/padding_waste": 1.0 - t.get("perf/real_tokens", 0.0) / max(t.get("perf/model_tokens", 1.0), 1.0),
        # Sequence tokens through forward + backward + optimizer, per second of the update (all ranks).
        "perf/trained_tokens_per_s": t.get("perf/real_tokens", 0.0) / max(t.get("update_s", 0.0) / world, 1e-9),
    }
    if "train/skipped_steps" in t:
        out["train/skipped_steps"] = t["train/skipped_steps"]
    for k, v in t.items():
        name = k.removeprefix("ppo/")
        if not k.startswith("ppo/") or name in ("loss_sum", "entropy_sum", "n_tokens"):
            continue
        if name.endswith("_sum"):
            out[f"ppo/{name[:-4]}_mean"] = v / n_tok
        elif name.endswith("_count"):
            out[f"ppo/{name[:-6]}_frac"] = v / n_tok
        elif name.endswith("_max"):
            out[k] = v
    return out
