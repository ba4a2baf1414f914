"""PPO for the trainer: builders that turn config sections into the step's functions.

The formulas are pure functions in `areal_lite.algo` (docs/algorithms.md); this module reads the
`actor` config section once and returns callables, the way torchtitan's `build_*_loss` wraps its
losses:

    advantage_fn = build_advantage_fn(cfg.actor, max_new_tokens=...)   # batch → Advantages
    loss_fn = build_ppo_loss_fn(cfg.actor, loss_norm_constant=...)      # LossInputs → (loss, stats)
    actor = PPOActor(cfg.actor, loss_fn, advantage_fn, seed=cfg.seed)   # passes and the update

Every per-token quantity of a step is a `[B, T]` row tensor of the whole batch (`StepRows`): masks,
behaviour, proximal and reference log-probs, entropies, critic values, advantages. A micro-batch's
loss reads its rows. Per step: proximal log-probs (one no-grad pass, unless approximated
log-linearly or taken from the update's own forward), reference log-probs (only with a KL term), critic values (only with GAE), shaped
rewards → group filter → advantage estimator → soft reweighting, then `ppo_n_minibatches`
optimizer steps. Whatever needs the whole minibatch (the loss denominators, the top-entropy
quantile, the Clip-Cov / KL-Cov token selection) is computed once per minibatch from the rows every
rank holds, so the update is the same at any micro-batch and rank layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from areal_lite import algo
from areal_lite.trainer.advantage import Advantages, AdvantageFn, build_advantage_fn  # noqa: F401 (re-exported)
from areal_lite.trainer.batch import MicroBatch, SeqBatch, balance_across_ranks
from areal_lite.trainer.rows import StepRows

# ------------------------------------------------------------------------------------ loss inputs


@dataclass
class LossInputs:
    """What a micro-batch's loss needs, all `[b, T_mb]` rows of its sequences."""

    logp: torch.Tensor  # current policy (differentiable)
    old_logp: torch.Tensor  # proximal policy (recomputed or log-linear), else the behaviour policy
    advantages: torch.Tensor
    mask: torch.Tensor
    total_tokens: float  # trained tokens of the whole minibatch (all ranks)
    total_seqs: float  # sequences with trained tokens in the whole minibatch
    behav_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None  # current policy (differentiable)
    token_scale: torch.Tensor | None = None  # top-entropy mask: 1 on the tokens whose policy loss counts
    cov_mask: torch.Tensor | None = None  # Clip-Cov: tokens whose loss is dropped; KL-Cov: tokens penalised

    @classmethod
    def for_microbatch(cls, mb: MicroBatch, logp, entropy, rows: StepRows, adv: torch.Tensor,
                       selected: dict[str, torch.Tensor], *, totals: tuple[float, float],
                       version: int) -> "LossInputs":
        """The micro-batch's rows of the step rows, advantages and minibatch selections.

        Log-linear proximal log-probs (rows with `versions`) are made here from the current ones,
        with the trainer's weight `version` as AReaL's v_θ.
        """
        idx, t = torch.as_tensor(mb.seq_index), mb.max_len

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[idx, :t].to(logp.device)

        mask = pick(rows.mask)
        if mb.dummy:  # stands for no sequence: nothing of it is trained
            mask = torch.zeros_like(mask)
        behav = pick(rows.behav_logp)
        old = logp.detach() if rows.prox_in_update else pick(rows.prox_logp)
        if old is None and rows.versions is not None:
            old = algo.prox_logp_loglinear(behav, logp, pick(rows.versions), version)
        return cls(logp=logp, entropy=entropy, old_logp=behav if old is None else old, advantages=pick(adv),
                   mask=mask, behav_logp=behav, ref_logp=pick(rows.ref_logp),
                   token_scale=pick(selected.get("token_scale")), cov_mask=pick(selected.get("cov_mask")),
                   total_tokens=totals[0], total_seqs=totals[1])


LossFn = Callable[[LossInputs], tuple[torch.Tensor, dict[str, float]]]
TermFn = Callable[[LossInputs], tuple[torch.Tensor, dict[str, torch.Tensor]]]


# ------------------------------------------------------------------------------------ the loss


def build_ppo_loss_fn(actor: Any, *, loss_norm_constant: float) -> LossFn:
    """The loss of the `actor` section: the per-token policy loss (`policy_loss`, with the decoupled
    behaviour weight), times the sequence IS weight and the top-entropy mask, minus the entropy
    bonus, reduced per `loss_reduction`; plus `kl_ctl`·KL reduced per `kl_loss_reduction` when the
    KL is a loss term. Statistics are sums over the micro-batch (`*_max`: maxima), to be aggregated."""
    policy_term = build_policy_term(actor)
    kl_term = build_kl_term(actor, loss_norm_constant=loss_norm_constant)

    def loss_fn(x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        token_loss, pstats = policy_term(x)
        stats = {f"ppo/{k}": float(v) for k, v in pstats.items()}
        token_loss = _token_weighted(actor, token_loss, x, stats)
        loss = algo.reduce_loss(token_loss, x.mask, actor.loss_reduction, norm_constant=loss_norm_constant,
                                total_tokens=x.total_tokens, total_seqs=x.total_seqs)
        if kl_term is not None:
            kl_loss, kstats = kl_term(x)
            loss = loss + kl_loss
            stats.update(kstats)
        if x.entropy is not None:
            stats["ppo/entropy_sum"] = float((x.entropy.detach() * x.mask).sum())
        stats["ppo/loss_sum"] = float(loss.detach())
        stats["ppo/n_tokens"] = float(x.mask.sum())
        return loss, stats

    return loss_fn


def build_policy_term(actor: Any) -> TermFn:
    """`LossInputs → (per-token policy loss [b, T], stats)` for `actor.policy_loss`.

    `ppo` applies the decoupled behaviour weight itself; for the other forms the same weight
    (`behav_weight_cap`, `behav_weight_mode`) multiplies their per-token loss.
    """
    a = actor
    behav = (lambda x: x.behav_logp) if a.use_decoupled_loss else (lambda x: None)
    if a.policy_loss == "ppo":
        return lambda x: algo.policy_loss(
            x.logp, x.old_logp, x.advantages, x.mask, eps_clip=a.eps_clip, eps_clip_higher=a.eps_clip_higher,
            c_clip=a.c_clip, behav_logp=behav(x), behav_weight_cap=a.behav_weight_cap,
            behav_weight_mode=a.behav_weight_mode, ratio_level=a.ratio_level,
        )
    forms: dict[str, TermFn] = {
        "cispo": lambda x: algo.cispo_loss(x.logp, x.old_logp, x.advantages, x.mask, eps_low=a.cispo.eps_low,
                                           eps_high=a.cispo.eps_high),
        "sapo": lambda x: algo.sapo_loss(x.logp, x.old_logp, x.advantages, x.mask, tau_pos=a.sapo.tau_pos,
                                         tau_neg=a.sapo.tau_neg),
        "gmpo": lambda x: algo.gmpo_loss(x.logp, x.old_logp, x.advantages, x.mask, eps_low=a.gmpo.eps_low,
                                         eps_high=a.gmpo.eps_high),
        "reinforce": lambda x: algo.reinforce_loss(x.logp, x.advantages, x.mask),
        "clip_cov": lambda x: algo.clip_cov_loss(x.logp, x.old_logp, x.advantages, x.mask, eps_clip=a.eps_clip,
                                                 eps_clip_higher=a.eps_clip_higher, drop=x.cov_mask),
        "kl_cov": lambda x: algo.kl_cov_loss(x.logp, x.old_logp, x.advantages, x.mask, kl_coef=a.kl_cov.kl_coef,
                                             penalised=x.cov_mask),
    }
    form = forms[a.policy_loss]

    def term(x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, stats = form(x)
        b = behav(x)
        if b is not None:
            w, wstats = algo.behav_weight(x.old_logp, b, x.mask, cap=a.behav_weight_cap, mode=a.behav_weight_mode)
            loss, stats = loss * w.to(loss.dtype), {**stats, **wstats}
        return loss, stats

    return term


def _token_weighted(actor: Any, token_loss: torch.Tensor, x: LossInputs, stats: dict[str, float]) -> torch.Tensor:
    """The per-token loss times the sequence IS weight and the top-entropy mask, minus the entropy bonus."""
    s = actor.seq_is
    if s.enabled:
        w, wstats = algo.sequence_is_weights(x.old_logp, x.behav_logp, x.mask, agg=s.agg, mode=s.mode, cap=s.cap,
                                             lower=s.lower)
        token_loss = token_loss * w.to(token_loss.dtype)
        stats.update({f"seq_is/{k.removeprefix('seq_is_')}": float(v) for k, v in wstats.items()})
    if x.token_scale is not None:
        token_loss = token_loss * x.token_scale.to(token_loss.dtype)
        stats["ppo/top_entropy_kept_count"] = float((x.token_scale & x.mask).sum())
    if actor.entropy_coef > 0:
        token_loss = token_loss + algo.entropy_bonus(x.entropy, x.mask, actor.entropy_coef)
    return token_loss


def build_kl_term(actor: Any, *, loss_norm_constant: float) -> TermFn | None:
    """`kl_ctl`·KL(π_θ ‖ π_ref) as a loss term reduced per `kl_loss_reduction` (null: as the policy
    term); None when there is no KL loss (kl_ctl 0, or the KL is in the reward)."""
    if actor.kl_ctl <= 0 or actor.kl_in_reward:
        return None
    mode = actor.kl_loss_reduction or actor.loss_reduction

    def term(x: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        if x.ref_logp is None:
            raise ValueError("actor.kl_ctl > 0: the loss needs the reference log-probs")
        kl = algo.kl_estimate(x.logp, x.ref_logp, actor.kl_estimator, clamp=actor.kl_clamp)
        loss = algo.reduce_loss(kl * x.mask, x.mask, mode, norm_constant=loss_norm_constant,
                                total_tokens=x.total_tokens, total_seqs=x.total_seqs)
        return actor.kl_ctl * loss, {"ppo/kl_sum": float((kl.detach() * x.mask).sum())}

    return term


# ------------------------------------------------------------------------------------ minibatch selections

SelectFn = Callable[..., dict[str, torch.Tensor]]


def build_token_selection(actor: Any, *, seed: int) -> SelectFn:
    """`select(rows, adv, seqs, step=, minibatch=) → {name: [B, T] rows}`: the token selections that
    need the whole minibatch, made once per minibatch from the step rows (identical on every rank):

    - `token_scale`: the top-entropy mask (`top_entropy_fraction` < 1), the quantile over the
      minibatch's trained tokens of the proximal policy's entropies;
    - `cov_mask`: Clip-Cov's dropped tokens (drawn with a generator seeded by seed, step and
      minibatch) or KL-Cov's penalised tokens, the covariance over the minibatch's trained tokens
      with the step's log-probs (`rows.old_logp`).
    """
    a = actor

    def select(rows: StepRows, adv: torch.Tensor, seqs: np.ndarray, *, step: int, minibatch: int):
        idx = torch.as_tensor(seqs)
        mask, out = rows.mask[idx], {}
        if a.top_entropy_fraction < 1:
            if rows.entropy is None:
                raise ValueError("actor.top_entropy_fraction < 1: the step rows need the proximal entropies")
            out["token_scale"] = algo.top_entropy_mask(rows.entropy[idx], mask, a.top_entropy_fraction)
        if a.policy_loss == "clip_cov":
            c = a.clip_cov
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, minibatch]).generate_state(1)[0]))
            out["cov_mask"] = algo.clip_cov_select(adv[idx], rows.old_logp[idx], mask, ratio=c.ratio, cov_lb=c.cov_lb,
                                                   cov_ub=c.cov_ub, generator=gen)
        elif a.policy_loss == "kl_cov":
            out["cov_mask"] = algo.kl_cov_select(adv[idx], rows.old_logp[idx], mask, ratio=a.kl_cov.ratio)
        return {k: _scatter_rows(v, idx, rows.mask.shape) for k, v in out.items()}

    return select


def _scatter_rows(values: torch.Tensor, idx: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows `[K, T]` of the sequences `idx` placed in a `[B, T]` tensor (zeros elsewhere)."""
    out = torch.zeros(shape, dtype=values.dtype)
    out[idx] = values
    return out


# ------------------------------------------------------------------------------------ the actor


class PPOActor:
    """The passes of a PPO step over an `FSDPEngine`: log-probs (proximal, reference), critic values,
    and the update of the policy (and of the critic, when there is one)."""

    def __init__(self, actor: Any, loss_fn: LossFn, advantage_fn: AdvantageFn, *, seed: int, critic=None):
        self.cfg = actor
        self.loss_fn = loss_fn
        self.advantage_fn = advantage_fn
        self.select = build_token_selection(actor, seed=seed)
        self.seed = seed
        self.critic = critic  # trainer.critic.Critic (adv_estimator=gae) or None

    @classmethod
    def build(cls, actor: Any, *, max_new_tokens: int, loss_norm_constant: float, seed: int,
              critic=None) -> "PPOActor":
        """The actor of the `actor` config section, with its loss and advantage functions."""
        return cls(actor, build_ppo_loss_fn(actor, loss_norm_constant=loss_norm_constant),
                   build_advantage_fn(actor, max_new_tokens=max_new_tokens), seed=seed, critic=critic)

    def layout(self, engine, batch: SeqBatch, seqs: np.ndarray | None = None) -> list[list[int]]:
        return rank_microbatches(engine, batch, seqs)

    def compute_logp(self, engine, batch: SeqBatch) -> torch.Tensor:
        """`[B, T]` log-probs of every token under `engine`'s current weights, on every rank."""
        return sum_over_ranks(engine.forward_logp(batch, self.layout(engine, batch)), engine.dist.cpu_group)

    def step_rows(self, engine, batch: SeqBatch, *, ref=None) -> StepRows:
        """The step's rows: behaviour log-probs, and the passes the configuration needs.

        One no-grad pass gives the proximal log-probs (`prox_logp_method=recompute` with
        `recompute_logprob`) and the entropies (entropy shaping, the top-entropy mask); with
        `loglinear` the rows carry the token versions instead and the pass runs only for entropies.
        Where `prox_logp_in_update` applies, no pass runs: the update's forward gives them.
        """
        c = self.cfg
        rows = StepRows.of(batch)
        recompute = c.recompute_logprob and c.prox_logp_method == "recompute"
        want_ent = c.entropy_shaping.mode != "none" or c.top_entropy_fraction < 1
        if recompute and not want_ent and prox_logp_in_update(c):
            recompute, rows.prox_in_update = False, True
        if recompute or want_ent:
            my_mbs, group = self.layout(engine, batch), engine.dist.cpu_group
            if want_ent:
                logp, ent = engine.forward_logp(batch, my_mbs, with_entropy=True)
                logp, rows.entropy = sum_over_ranks(torch.stack([logp, ent]), group).unbind(0)
            else:
                logp = sum_over_ranks(engine.forward_logp(batch, my_mbs), group)
            rows.prox_logp = logp if recompute else None
        if c.prox_logp_method == "loglinear":
            rows.versions = batch.to_rows(batch.versions)
        if ref is not None:
            rows.ref_logp = self.compute_logp(ref, batch)
        if self.critic is not None:
            rows.values = self.critic.values(batch)
        return rows

    def kl_rows(self, rows: StepRows) -> torch.Tensor | None:
        """The KL penalty per token `[B, T]` for `kl_in_reward` (None when the KL is not in the reward)."""
        c = self.cfg
        if rows.ref_logp is None or not c.kl_in_reward:
            return None
        return algo.kl_estimate(rows.old_logp.double(), rows.ref_logp.double(), c.kl_estimator, clamp=c.kl_clamp)

    def minibatches(self, batch: SeqBatch, adv: Advantages, step: int) -> list[tuple[np.ndarray, tuple[float, float]]]:
        """The kept sequences shuffled with the seed and step, split into `ppo_n_minibatches`: each
        minibatch's sequences and its (tokens, sequences) loss counts; empty minibatches dropped."""
        kept = adv.keep.nonzero().squeeze(1).numpy()
        order = kept[np.random.default_rng([self.seed, step]).permutation(len(kept))]
        gen = batch.gen_lens()
        out = []
        for seqs in np.array_split(order, self.cfg.ppo_n_minibatches):
            seqs = np.sort(seqs)
            totals = (float(gen[seqs].sum()), float((gen[seqs] > 0).sum()))
            if totals[0] > 0:
                out.append((seqs, totals))
        return out

    def ppo_update(self, engine, batch: SeqBatch, rows: StepRows, adv: Advantages, *, step: int) -> dict[str, float]:
        """One optimizer step per minibatch for the policy (and then the critic)."""
        minibatches = self.minibatches(batch, adv, step)
        per_mb: list[dict] = []
        t0 = time.perf_counter()
        for k, (seqs, totals) in enumerate(minibatches):
            selected = self.select(rows, adv.rows, seqs, step=step, minibatch=k)

            def mb_loss(logp, entropy, mb):
                return self.loss_fn(LossInputs.for_microbatch(mb, logp, entropy, rows, adv.rows, selected,
                                                              totals=totals, version=step))

            per_mb.append(engine.train_minibatch(batch, self.layout(engine, batch, seqs), mb_loss))
        totals = algo.aggregate_stats(per_mb + [{"update_s": time.perf_counter() - t0}], group=engine.dist.cpu_group)
        out = _update_metrics(totals, max(len(per_mb), 1), engine.world_size)
        if self.critic is not None:
            out.update(self.critic.update(batch, rows, adv, minibatches))
        return out


def prox_logp_in_update(actor: Any) -> bool:
    """Whether the update's own forward gives the proximal log-probs (`actor.prox_logp_in_update`).

    With one optimizer step per training step the proximal policy π_prox is the policy whose forward
    the update runs, so `logp.detach()` is π_prox up to float rounding and the no-grad pass that would
    compute it again is skipped (verl's on-policy shortcut). Not where something reads them before
    the update: the KL in the reward and the Clip-Cov / KL-Cov token selections.
    """
    a = actor
    return (a.prox_logp_in_update and a.ppo_n_minibatches == 1 and not (a.kl_ctl > 0 and a.kl_in_reward)
            and a.policy_loss not in ("clip_cov", "kl_cov"))


def rank_microbatches(engine, batch: SeqBatch, seqs: np.ndarray | None = None) -> list[list[int]]:
    """This rank's micro-batches over `seqs` (default: all sequences), balanced by tokens."""
    idx = np.arange(batch.num_seqs) if seqs is None else seqs
    shards = balance_across_ranks([int(batch.seqlens[i]) for i in idx], engine.world_size)
    return engine.microbatches(batch, [[int(idx[j]) for j in shard] for shard in shards])[engine.rank]


def sum_over_ranks(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Rows each rank filled for its own sequences, summed over the ranks of `group`."""
    if dist.get_world_size(group) > 1:
        dist.all_reduce(x, group=group)
    return x


def _update_metrics(t: dict[str, float], n_minibatches: int, world: int) -> dict[str, float]:
    """Sums over micro-batches, minibatches and ranks → the step's `ppo/*`, `seq_is/*`, `train/*`,
    `perf/*` metrics."""
    n_tok = max(t.get("ppo/n_tokens", 0.0), 1.0)
    out = {
        "ppo/loss": t.get("ppo/loss_sum", 0.0) / n_minibatches,
        "ppo/entropy": t.get("ppo/entropy_sum", 0.0) / n_tok,
        "train/grad_norm": t.get("train/grad_norm", 0.0) / (n_minibatches * world),
        "train/lr": t.get("train/lr", 0.0) / (n_minibatches * world),
        "train/trained_tokens": t.get("ppo/n_tokens", 0.0),
        "perf/padding_waste": t.get("perf/padding_tokens", 0.0) / max(t.get("perf/model_tokens", 1.0), 1.0),
        # Tokens the model ran per sequence token: below 1 where a group's samples share their prompt.
        "perf/model_tokens_per_seq_token": t.get("perf/model_tokens", 0.0) / max(t.get("perf/real_tokens", 1.0), 1.0),
        # Sequence tokens through forward + backward + optimizer, per second of the update (all ranks).
        "perf/trained_tokens_per_s": t.get("perf/real_tokens", 0.0) / max(t.get("update_s", 0.0) / world, 1e-9),
    }
    if "train/skipped_steps" in t:
        out["train/skipped_steps"] = t["train/skipped_steps"]
    if "seq_is/n_seqs" in t:  # per sequence, not per token
        n_seq = max(t["seq_is/n_seqs"], 1.0)
        out["seq_is/weight_mean"] = t["seq_is/weight_sum"] / n_seq
        out["seq_is/capped_frac"] = t["seq_is/capped_count"] / n_seq
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
