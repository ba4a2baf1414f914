"""Every algorithm option of the `actor` section reaches the step: the builders of trainer/ppo.py and
trainer/advantage.py, on one batch, against the algorithm functions they are meant to call (each pinned
to hand-computed values and the peers' code in tests/algo and tests/parity), and against PPO's defaults
(the option changes the loss, its gradient or the advantages)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from areal_lite import algo
from areal_lite.config.schema import ActorConfig
from areal_lite.trainer.batch import build_microbatch
from areal_lite.trainer.ppo import (LossInputs, PPOActor, build_advantage_fn, build_ppo_loss_fn, build_token_selection,
                                    prox_logp_in_update)
from areal_lite.trainer.rows import StepRows
from tests.trainer.layout_update_worker import make_batch

C = 32.0  # loss_norm_constant
CPU = torch.device("cpu")


def cfg(**kw) -> ActorConfig:
    c = ActorConfig(path="unused")
    for key, value in kw.items():
        obj, *parts = [c, *key.split("__")]
        for p in parts[:-1]:
            obj = getattr(obj, p)
        setattr(obj, parts[-1], value)
    return c


@pytest.fixture(scope="module")
def step():
    """A batch of 3 groups × 4, its rows (proximal ≠ behaviour, entropies, reference log-probs, values)."""
    batch = make_batch(vocab=200)
    rows = StepRows.of(batch)
    g = torch.Generator().manual_seed(0)
    noise = lambda s: s * torch.randn(rows.mask.shape, generator=g) * rows.mask  # noqa: E731
    rows.prox_logp = rows.behav_logp + noise(0.3)
    rows.ref_logp = rows.prox_logp + noise(0.2)
    rows.entropy = torch.rand(rows.mask.shape, generator=g) * 3 * rows.mask
    rows.values = noise(0.5)
    logp = rows.prox_logp + noise(0.1)
    return batch, rows, logp


def run_loss(c: ActorConfig, step, seqs=None, adv=None):
    """(loss, stats, d loss/d logp, d loss/d entropy) of one minibatch (default: the whole batch) in one micro-batch."""
    batch, rows, logp0 = step
    seqs = np.arange(batch.num_seqs) if seqs is None else np.asarray(seqs)
    adv = build_advantage_fn(c, max_new_tokens=32)(batch, rows).rows if adv is None else adv
    selected = build_token_selection(c, seed=0)(rows, adv, seqs, step=3, minibatch=0)
    gen = batch.gen_lens()
    totals = (float(gen[seqs].sum()), float((gen[seqs] > 0).sum()))
    mb = build_microbatch(batch, list(seqs), packed=True, device=CPU)
    logp = logp0[seqs, : mb.max_len].clone().requires_grad_(True)
    ent = rows.entropy[seqs, : mb.max_len].clone().requires_grad_(True)
    x = LossInputs.for_microbatch(mb, logp, ent, rows, adv, selected, totals=totals, version=3)
    loss, stats = build_ppo_loss_fn(c, loss_norm_constant=C)(x)
    loss.backward()
    return loss.detach(), stats, logp.grad, ent.grad, x


# ------------------------------------------------------------------------------------------ policy losses

FORMS = {
    "cispo": (dict(cispo__eps_high=0.05), lambda x: algo.cispo_loss(x.logp, x.old_logp, x.advantages, x.mask,
                                                                      eps_high=0.05)),
    "sapo": (dict(sapo__tau_pos=2.0, sapo__tau_neg=3.0),
             lambda x: algo.sapo_loss(x.logp, x.old_logp, x.advantages, x.mask, tau_pos=2.0, tau_neg=3.0)),
    "gmpo": (dict(gmpo__eps_low=0.05, gmpo__eps_high=0.1),
             lambda x: algo.gmpo_loss(x.logp, x.old_logp, x.advantages, x.mask, eps_low=0.05, eps_high=0.1)),
    "reinforce": ({}, lambda x: algo.reinforce_loss(x.logp, x.advantages, x.mask)),
    "kl_cov": (dict(kl_cov__ratio=0.1, kl_cov__kl_coef=3.0),
               lambda x: algo.kl_cov_loss(x.logp, x.old_logp, x.advantages, x.mask, kl_coef=3.0, penalised=x.cov_mask)),
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_policy_loss_is_its_formula_with_the_behaviour_weight(step, name):
    knobs, form = FORMS[name]
    c = cfg(policy_loss=name, loss_reduction="seq_mean_token_mean", behav_weight_cap=1.2, **knobs)
    loss, stats, grad, _, x = run_loss(c, step)
    lp = x.logp.detach().requires_grad_(True)
    token_loss, _ = form(LossInputs(**{**x.__dict__, "logp": lp}))
    w, _ = algo.behav_weight(x.old_logp, x.behav_logp, x.mask, cap=1.2, mode="mask")
    assert int((w[x.mask] == 0).sum()) > 0  # the cap bites somewhere: the weight is really applied
    want = algo.reduce_loss(token_loss * w.float(), x.mask, "seq_mean_token_mean", total_tokens=x.total_tokens,
                            total_seqs=x.total_seqs)
    want.backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, lp.grad, rtol=1e-6, atol=1e-8)
    ppo_loss, _, ppo_grad, _, _ = run_loss(cfg(loss_reduction="seq_mean_token_mean", behav_weight_cap=1.2), step)
    assert float((grad - ppo_grad).abs().max()) > 1e-3 * float(ppo_grad.abs().max())  # not PPO's update
    assert stats["ppo/n_tokens"] == x.total_tokens


def test_clip_cov_drops_tokens_selected_over_the_whole_minibatch(step):
    c = cfg(policy_loss="clip_cov", clip_cov__ratio=0.1, clip_cov__cov_lb=-50.0, clip_cov__cov_ub=50.0)
    loss, stats, grad, _, x = run_loss(c, step)
    n = int(x.mask.sum())
    assert stats["ppo/cov_dropped_count"] == max(1, int(0.1 * n))
    dropped = x.cov_mask & x.mask
    assert int(dropped.sum()) == stats["ppo/cov_dropped_count"]
    assert float(grad[dropped].abs().max()) == 0.0  # a dropped token has no gradient ...
    plain, _, ppo_grad, _, _ = run_loss(cfg(), step)
    kept = x.mask & ~dropped
    torch.testing.assert_close(grad[kept], ppo_grad[kept], rtol=1e-6, atol=1e-9)  # ... the others PPO's
    # The draw is seeded by (seed, step, minibatch): the same on every rank and at every layout.
    again = run_loss(c, step)[4].cov_mask
    assert torch.equal(again, x.cov_mask)


def test_kl_cov_penalises_the_minibatchs_top_covariance_tokens(step):
    batch, rows, _ = step
    c = cfg(policy_loss="kl_cov", kl_cov__ratio=0.1)
    _, stats, _, _, x = run_loss(c, step)
    # Covariance over the whole minibatch with the step's (proximal) log-probs, a naive loop:
    cells = [(b, t) for b in range(12) for t in range(x.mask.shape[1]) if x.mask[b, t]]
    a_mean = sum(float(x.advantages[c_]) for c_ in cells) / len(cells)
    l_mean = sum(float(rows.prox_logp[c_]) for c_ in cells) / len(cells)
    cov = {c_: (float(x.advantages[c_]) - a_mean) * (float(rows.prox_logp[c_]) - l_mean) for c_ in cells}
    top = set(sorted(cells, key=lambda c_: -cov[c_])[: int(0.1 * len(cells))])
    assert {c_ for c_ in cells if x.cov_mask[c_]} == top
    assert stats["ppo/kl_penalised_count"] == len(top)


def test_ratio_level_and_ppo_knobs_still_reach_the_ppo_loss(step):
    base, _, g0, _, _ = run_loss(cfg(), step)
    for knobs in (dict(ratio_level="sequence"), dict(eps_clip=0.01), dict(c_clip=1.01)):
        loss, _, g, _, _ = run_loss(cfg(**knobs), step)
        assert float((g - g0).abs().max()) > 0, knobs


# ------------------------------------------------------------------------------------------ terms beside the policy loss


@pytest.mark.parametrize("reduction", ["seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_kl_term_is_reduced_like_the_policy_term_unless_told(step, reduction):
    kw = dict(kl_ctl=0.04, kl_estimator="k3", loss_reduction=reduction)
    with_kl, stats, _, _, x = run_loss(cfg(**kw), step)
    without, _, _, _, _ = run_loss(cfg(loss_reduction=reduction), step)
    k3 = algo.kl_estimate(x.logp.detach(), x.ref_logp, "k3", clamp=10.0)
    n_i = x.mask.sum(1)
    per_seq = (k3 * x.mask).sum(1)
    if reduction == "seq_mean_token_mean":  # TRL `grpo`: β·mean_i(mean_t k3)
        want = sum(float(per_seq[i] / n_i[i]) for i in range(len(n_i)) if n_i[i] > 0) / x.total_seqs
    else:  # Dr.GRPO: β·Σ/(S·C)
        want = float(per_seq.sum()) / (x.total_seqs * C)
    assert float(with_kl - without) == pytest.approx(0.04 * want, rel=1e-5)
    token_mean, _, _, _, _ = run_loss(cfg(**kw, kl_loss_reduction="token_mean"), step)
    assert float(token_mean - without) == pytest.approx(0.04 * float(per_seq.sum()) / x.total_tokens, rel=1e-5)
    assert stats["ppo/kl_sum"] == pytest.approx(float(per_seq.sum()), rel=1e-6)


def test_entropy_bonus_subtracts_coef_times_the_reduced_entropy(step):
    loss0, _, _, _, x = run_loss(cfg(), step)
    loss, _, _, ent_grad, _ = run_loss(cfg(entropy_coef=0.01), step)
    h = x.entropy.detach()
    assert float(loss0 - loss) == pytest.approx(0.01 * float((h * x.mask).sum()) / x.total_tokens, rel=1e-5)
    torch.testing.assert_close(ent_grad, -0.01 * x.mask.float() / x.total_tokens)  # gradients flow through H


def test_top_entropy_mask_keeps_the_minibatch_quantile_and_the_denominators(step):
    batch, rows, _ = step
    c = cfg(top_entropy_fraction=0.25)
    loss, stats, grad, _, x = run_loss(c, step)
    h = rows.entropy[rows.mask]
    q = torch.quantile(h, 0.75)
    keep = x.token_scale
    assert torch.equal(keep, (x.entropy.detach() >= q) & x.mask)
    assert stats["ppo/top_entropy_kept_count"] == int(keep.sum()) == pytest.approx(0.25 * h.numel(), abs=1)
    _, _, ppo_grad, _, _ = run_loss(cfg(), step)
    assert float(grad[x.mask & ~keep].abs().max()) == 0.0
    # The kept tokens' gradient is PPO's: the denominators still count every trained token (TRL).
    torch.testing.assert_close(grad[keep], ppo_grad[keep], rtol=1e-6, atol=1e-9)


def test_whole_minibatch_selection_is_the_same_in_any_micro_batch_split(step):
    """Micro-batches read the minibatch's selection: their losses add up to the one-micro-batch loss,
    which per-micro-batch quantiles (TRL within one process) would not give."""
    batch, rows, logp0 = step
    c = cfg(top_entropy_fraction=0.3, policy_loss="kl_cov", kl_cov__ratio=0.05)
    whole, _, _, _, _ = run_loss(c, step)
    adv = build_advantage_fn(c, max_new_tokens=32)(batch, rows).rows
    selected = build_token_selection(c, seed=0)(rows, adv, np.arange(batch.num_seqs), step=3, minibatch=0)
    gen = batch.gen_lens()
    totals = (float(gen.sum()), float((gen > 0).sum()))
    parts, differs = [], False
    for seqs in ([0, 5, 7], [1, 2, 3, 4], [6, 8, 9, 10, 11]):
        mb = build_microbatch(batch, seqs, packed=False, device=CPU)
        x = LossInputs.for_microbatch(mb, logp0[seqs, : mb.max_len], rows.entropy[seqs, : mb.max_len], rows, adv,
                                      selected, totals=totals, version=3)
        parts.append(float(build_ppo_loss_fn(c, loss_norm_constant=C)(x)[0]))
        assert torch.equal(x.token_scale, selected["token_scale"][seqs, : mb.max_len])
        differs |= not torch.equal(algo.top_entropy_mask(x.entropy, x.mask, 0.3), x.token_scale)
    assert sum(parts) == pytest.approx(float(whole), rel=1e-5)
    assert differs  # a micro-batch's own quantile would have selected other tokens


@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_sequence_is_weight_multiplies_each_sequence(step, mode):
    c = cfg(seq_is__enabled=True, seq_is__mode=mode, seq_is__cap=1.5, seq_is__agg="product", use_decoupled_loss=False)
    loss, stats, _, _, x = run_loss(c, step)
    old, behav, m = x.old_logp.double(), x.behav_logp.double(), x.mask
    token_loss, _ = algo.policy_loss(x.logp.detach(), x.old_logp, x.advantages, m)
    want, changed = torch.zeros_like(token_loss), 0
    for i in range(m.shape[0]):  # naive: one weight per sequence
        w = math.exp(float(((old[i] - behav[i]) * m[i]).sum()))
        if w > 1.5:
            changed += 1
            w = 1.5 if mode == "truncate" else 0.0
        want[i] = token_loss[i] * w
    assert changed > 0
    total = algo.reduce_loss(want, m, "token_mean", total_tokens=x.total_tokens)
    assert float(loss) == pytest.approx(float(total), rel=1e-5)
    assert stats["seq_is/capped_count"] == changed and stats["seq_is/n_seqs"] == m.shape[0]


def test_loglinear_proximal_log_probs_come_from_the_versions(step):
    """AReaL's approximation with the trainer's weight version as v_θ: fresh tokens (v ≥ v_θ − 1)
    keep the behaviour log-prob; a token two versions old is halfway to the current one."""
    batch, rows, logp0 = step
    versions = torch.full(rows.mask.shape, 3, dtype=torch.int32)
    versions[:6] = 1  # version 1 at v_θ = 3: α = (2 − 1)/(3 − 1) = 1/2
    versions[6:9] = 2  # α = 0
    loglinear = StepRows(mask=rows.mask, behav_logp=rows.behav_logp, versions=versions)
    mb = build_microbatch(batch, list(range(12)), packed=True, device=CPU)
    logp = logp0[:, : mb.max_len]
    x = LossInputs.for_microbatch(mb, logp, None, loglinear, rows.mask.float(), {}, totals=(1.0, 1.0), version=3)
    m = x.mask
    want = torch.where(versions[:, : mb.max_len] == 1, (x.behav_logp + logp) / 2, x.behav_logp)
    torch.testing.assert_close(x.old_logp[m], want[m])
    assert not x.old_logp.requires_grad
    recomputed = LossInputs.for_microbatch(mb, logp, None, rows, rows.mask.float(), {}, totals=(1.0, 1.0), version=3)
    assert torch.equal(recomputed.old_logp, rows.prox_logp[:, : mb.max_len])


def test_proximal_log_probs_from_the_updates_forward_only_where_nothing_reads_them_earlier(step):
    """With one optimizer step the proximal log-probs are the update forward's, detached (no pass);
    with several minibatches, or where the KL in the reward or a covariance selection reads them
    before the update, the pass runs."""
    batch, rows, logp0 = step
    assert prox_logp_in_update(cfg())
    for off in (dict(prox_logp_in_update=False), dict(ppo_n_minibatches=2), dict(kl_ctl=0.1, kl_in_reward=True),
                dict(policy_loss="clip_cov"), dict(policy_loss="kl_cov")):
        assert not prox_logp_in_update(cfg(**off)), off
    fused = PPOActor(cfg(), None, None, seed=0).step_rows(None, batch)  # no engine: no pass may run
    assert fused.prox_in_update and fused.prox_logp is None
    with pytest.raises(ValueError, match="update's own forward"):
        fused.old_logp
    mb = build_microbatch(batch, list(range(12)), packed=True, device=CPU)
    logp = logp0[:, : mb.max_len].clone().requires_grad_()
    x = LossInputs.for_microbatch(mb, logp, None, fused, rows.mask.float(), {}, totals=(1.0, 1.0), version=3)
    assert torch.equal(x.old_logp, logp.detach()) and not x.old_logp.requires_grad
    assert torch.equal(x.behav_logp, rows.behav_logp[:, : mb.max_len])


# ------------------------------------------------------------------------------------------ advantages


def kept_inputs(step, c):
    batch, rows, _ = step
    return (torch.as_tensor(batch.rewards), torch.as_tensor(batch.group_ids), rows.mask, rows.values.double())


def test_reinforce_pp_and_baseline_are_whitened_returns(step):
    batch, rows, _ = step
    r, g, m, _ = kept_inputs(step, None)
    got = build_advantage_fn(cfg(adv_estimator="reinforce_pp", gamma=0.9), max_new_tokens=32)(batch, rows)
    want = algo.reinforce_pp_advantages(algo.outcome_token_rewards(r, m), m, gamma=0.9, eps=1e-6)
    torch.testing.assert_close(got.rows, want.float(), rtol=1e-5, atol=1e-6)
    base = build_advantage_fn(cfg(adv_estimator="reinforce_pp_baseline"), max_new_tokens=32)(batch, rows)
    torch.testing.assert_close(base.rows, algo.reinforce_pp_baseline_advantages(r, g, m, eps=1e-6).float(),
                               rtol=1e-5, atol=1e-6)
    normalized = build_advantage_fn(cfg(), max_new_tokens=32)(batch, rows)
    assert float((got.rows - normalized.rows).abs().max()) > 0.1


def test_kl_in_reward_enters_the_returns_as_token_rewards(step):
    batch, rows, _ = step
    r, g, m, _ = kept_inputs(step, None)
    kl = algo.kl_estimate(rows.prox_logp.double(), rows.ref_logp.double(), "k1")
    c = cfg(adv_estimator="reinforce_pp", kl_ctl=0.5, kl_in_reward=True)
    got = build_advantage_fn(c, max_new_tokens=32)(batch, rows, kl=kl)
    tok = algo.outcome_token_rewards(r, m) - 0.5 * torch.where(m, kl, 0.0)
    torch.testing.assert_close(got.rows, algo.reinforce_pp_advantages(tok, m, eps=1e-6).float(), rtol=1e-5, atol=1e-6)
    assert got.stats["reward/kl_penalty_mean"] == pytest.approx(0.5 * float((kl * m).sum(1).mean()), rel=1e-6)


@pytest.mark.parametrize("name", ["passk", "gpg"])
def test_group_estimators_put_their_sequence_advantage_on_every_token(step, name):
    batch, rows, _ = step
    rewards = np.asarray([1.0, 0.0, 0.5, 0.0, 1, 1, 1, 1, 0.2, 0.9, 0.4, 0.1])  # one all-equal group
    b2 = type(batch)(**{**batch.__dict__, "rewards": rewards})
    c = cfg(adv_estimator=name, passk_norm_by_std=False, gpg_f_norm=2.0)
    got = build_advantage_fn(c, max_new_tokens=32)(b2, rows)
    r, g = torch.as_tensor(rewards), torch.as_tensor(batch.group_ids)
    seq = algo.passk_advantages(r, g, norm_by_std=False) if name == "passk" else algo.gpg_advantages(r, g, f_norm=2.0)
    torch.testing.assert_close(got.rows, torch.where(rows.mask, seq[:, None], 0.0).float())
    if name == "passk":  # best answer's margin over the second, others 0
        assert got.rows[0][rows.mask[0]].unique().tolist() == [0.5] and float(got.rows[1:8].abs().sum()) == 0
    else:  # α = 12 / (12 − 4) for the all-equal group, f_norm 2
        assert float(got.rows[1][rows.mask[1]][0]) == pytest.approx(-0.375 * 1.5 / 2.0)


def test_gae_whitens_its_advantages_and_returns_the_critics_targets(step):
    batch, rows, _ = step
    r, g, m, v = kept_inputs(step, None)
    c = cfg(adv_estimator="gae", gamma=0.95, gae_lambda=0.9)
    got = build_advantage_fn(c, max_new_tokens=32)(batch, rows)
    adv, ret = algo.gae(algo.outcome_token_rewards(r, m), v, m, gamma=0.95, lam=0.9)
    zeros = torch.zeros(len(r), dtype=torch.long)
    white = algo.normalize(adv, zeros, mean_level="batch", std_level="batch", mask=m, eps=1e-6)
    torch.testing.assert_close(got.rows, white.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.returns, ret.float(), rtol=1e-6, atol=1e-6)
    rows_without = StepRows(mask=rows.mask, behav_logp=rows.behav_logp)
    with pytest.raises(ValueError, match="critic"):
        build_advantage_fn(c, max_new_tokens=32)(batch, rows_without)


def test_rollout_filter_keeps_ragens_groups_and_scales_the_advantages(step):
    batch, rows, _ = step
    rewards = np.asarray([1.0, 0.0, 0.0, 0.0, 1, 0, 1, 0, 0.3, 0.3, 0.3, 0.3])  # stds 0.5, 0.577, 0
    b2 = type(batch)(**{**batch.__dict__, "rewards": rewards})
    c = cfg(rollout_filter__enabled=True, rollout_filter__strategy="top_k_abs", rollout_filter__value=1.0,
            rollout_filter__loss_scaling="sqrt")
    got = build_advantage_fn(c, max_new_tokens=32)(b2, rows)
    assert got.keep.tolist() == [False] * 4 + [True] * 4 + [False] * 4  # the group of largest std
    plain = build_advantage_fn(cfg(), max_new_tokens=32)(b2.select(range(4, 8)), StepRows.of(b2.select(range(4, 8))))
    torch.testing.assert_close(got.rows[4:8, : plain.rows.shape[1]], plain.rows * math.sqrt(1 / 3))
    assert float(got.rows[~got.keep].abs().sum()) == 0
    assert got.stats["filter/kept_groups"] == 1 and got.stats["filter/loss_scale"] == pytest.approx(math.sqrt(1 / 3))
    # RAGEN's default, top_p 0.9 linear over the stds: 0.577 + 0.5 ≥ 0.9·1.077 − 0.01 keeps two groups.
    top_p = build_advantage_fn(cfg(rollout_filter__enabled=True, rollout_filter__value=0.9), max_new_tokens=32)(b2, rows)
    assert top_p.keep.tolist() == [True] * 8 + [False] * 4
    # The ratio form still works: ⌊0.34·3⌋ = 1 group.
    ratio = build_advantage_fn(cfg(group_filter__top_k_ratio=0.34), max_new_tokens=32)(b2, rows)
    assert ratio.keep.tolist() == got.keep.tolist()
