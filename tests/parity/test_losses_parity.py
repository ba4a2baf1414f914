"""Loss reductions, policy losses, KL estimators and off-policy weights against the peers' released
functions (tests/parity/peers.py): values and gradients, float64, on ragged masked rows."""

from __future__ import annotations

import types

import pytest
import torch

from areal_lite.algo import (
    cispo_loss,
    clip_cov_loss,
    gmpo_loss,
    kl_cov_loss,
    kl_estimate,
    policy_loss,
    prox_logp_loglinear,
    reduce_loss,
    reinforce_loss,
    sapo_loss,
    sequence_is_weights,
    top_entropy_mask,
)

F64 = torch.float64
TOL = dict(rtol=1e-6, atol=1e-6)
CORE = "verl/trainer/ppo/core_algos.py"
# Ragged rows, an all-masked row and a hole inside row 0.
MASK = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0],
                     [1, 1, 1, 0, 0, 0]], dtype=torch.bool)


def batch(seed: int, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(*MASK.shape, generator=g, dtype=F64) * 3
    logp = old + spread * torch.randn(*MASK.shape, generator=g, dtype=F64)
    adv = torch.randn(*MASK.shape, generator=g, dtype=F64)
    return logp, old, adv


def same_grad(ours_fn, theirs_fn, logp):
    """Values and d/dlogp of two scalar losses agree to 1e-6."""
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    va, vb = ours_fn(a), theirs_fn(b)
    torch.testing.assert_close(va, vb.to(F64), **TOL)
    va.backward()
    vb.backward()
    torch.testing.assert_close(a.grad, b.grad, **TOL)


class Cfg(dict):
    """verl's ActorConfig/DictConfig stand-in: attribute and .get access."""

    __getattr__ = dict.get


@pytest.fixture(scope="module")
def verl(peer_factory):
    v = peer_factory("verl")
    v.load("verl/utils/torch_functional.py", "masked_sum", "masked_mean")
    v.ns["verl_F"] = types.SimpleNamespace(masked_sum=v.ns["masked_sum"], masked_mean=v.ns["masked_mean"])
    v.ns["ActorConfig"] = Cfg
    v.ns["AlgoConfig"] = type("AlgoConfig", (), {})
    v.load(CORE, "agg_loss", "kl_penalty", "kl_penalty_forward")
    return v


def verl_cfg(**kw):
    cfg = Cfg(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, global_batch_info={})
    cfg.update(kw)
    cfg["policy_loss"] = Cfg(kw.get("policy_loss", {}))
    return cfg


# ------------------------------------------------------------------------------------------ reductions


@pytest.mark.parametrize("ours,theirs", [("token_mean", "token-mean"), ("seq_mean_token_mean", "seq-mean-token-mean"),
                                         ("seq_mean_token_sum", "seq-mean-token-sum"), ("token_sum", "token-sum")])
def test_verl_agg_loss(verl, ours, theirs):
    loss = torch.randn(*MASK.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = verl.ns["agg_loss"](loss, MASK.to(F64), theirs)
    torch.testing.assert_close(reduce_loss(loss, MASK, ours), want, **TOL)
    if ours == "seq_mean_token_sum":  # new verl sum-norm with loss_scale_factor = C
        want = verl.ns["agg_loss"](loss, MASK.to(F64), "seq-mean-token-sum-norm", loss_scale_factor=8)
        torch.testing.assert_close(reduce_loss(loss, MASK, "seq_mean_token_sum_norm", norm_constant=8), want, **TOL)


# ------------------------------------------------------------------------------------------ policy losses (verl)


def test_verl_vanilla_dual_clip_and_clip_higher(verl):
    fn = verl.function(CORE, "compute_policy_loss_vanilla")
    logp, old, adv = batch(1, spread=0.6)
    cfg = verl_cfg(clip_ratio_high=0.28, clip_ratio_c=3.0)
    same_grad(lambda x: reduce_loss(policy_loss(x, old, adv, MASK, eps_clip=0.2, eps_clip_higher=0.28, c_clip=3.0)[0], MASK, "token_mean"),
              lambda x: fn(old, x, adv, MASK.to(F64), "token-mean", cfg)[0], logp)


@pytest.mark.parametrize("name", ["cispo", "sapo", "gpg", "geo_mean", "kl_cov"])
def test_verl_policy_losses(verl, name):
    fn = verl.function(CORE, f"compute_policy_loss_{name}")
    logp, old, adv = batch(2, spread=0.5)
    m = MASK.to(F64)
    if name == "cispo":
        cfg = verl_cfg(clip_ratio_low=0.2, clip_ratio_high=0.28)
        ours = lambda x: reduce_loss(cispo_loss(x, old, adv, MASK, eps_low=0.2, eps_high=0.28)[0], MASK, "token_mean")
        theirs = lambda x: fn(old, x, adv, m, "token-mean", cfg)[0]
    elif name == "sapo":
        cfg = verl_cfg(tau_pos=1.0, tau_neg=1.05)
        ours = lambda x: reduce_loss(sapo_loss(x, old, adv, MASK, tau_pos=1.0, tau_neg=1.05)[0], MASK, "seq_mean_token_mean")
        theirs = lambda x: fn(old, x, adv, m, "seq-mean-token-mean", cfg)[0]
    elif name == "gpg":
        ours = lambda x: reduce_loss(reinforce_loss(x, adv, MASK)[0], MASK, "token_mean")
        theirs = lambda x: fn(old, x, adv, m, "token-mean", verl_cfg())[0]
    elif name == "geo_mean":
        cfg = verl_cfg(clip_ratio=0.4)
        # verl averages over all B rows (an all-masked row counts with loss 0); ours over rows with tokens
        B, S = MASK.shape[0], int(MASK.any(dim=1).sum())
        ours = lambda x: reduce_loss(gmpo_loss(x, old, adv, MASK, eps_low=0.4, eps_high=0.4)[0], MASK, "seq_mean_token_mean") * S / B
        theirs = lambda x: fn(old, x, adv, m, "token-mean", cfg)[0]
    else:
        cfg = verl_cfg(policy_loss={"kl_cov_ratio": 0.2, "ppo_kl_coef": 1.5})
        ours = lambda x: reduce_loss(kl_cov_loss(x, old, adv, MASK, ratio=0.2, kl_coef=1.5)[0], MASK, "token_mean")
        theirs = lambda x: fn(old, x, adv, m, "token-mean", cfg)[0]
    same_grad(ours, theirs, logp)


def test_verl_clip_cov_same_draw(verl):
    fn = verl.function(CORE, "compute_policy_loss_clip_cov")
    logp, old, adv = batch(3, spread=0.5)
    cfg = verl_cfg(policy_loss={"clip_cov_ratio": 0.2, "clip_cov_lb": -1.0, "clip_cov_ub": 1.0})

    def ours(x):
        torch.manual_seed(5)
        return reduce_loss(clip_cov_loss(x, old, adv, MASK, ratio=0.2, cov_lb=-1.0, cov_ub=1.0)[0], MASK, "token_mean")

    def theirs(x):
        torch.manual_seed(5)
        return fn(old, x, adv, MASK.to(F64), "token-mean", cfg)[0]

    same_grad(ours, theirs, logp)


# ------------------------------------------------------------------------------------------ KL


def test_kl_estimators_and_clamps(verl, peer_factory):
    g = torch.Generator().manual_seed(6)
    logp = -torch.rand(40, generator=g, dtype=F64) * 3
    ref = logp + 4 * torch.randn(40, generator=g, dtype=F64)  # |Δ| often beyond the clamps
    areal_kl = peer_factory("areal").function("areal/utils/data.py", "KLEstimator")
    orl = peer_factory("openrlhf").function("openrlhf/models/utils.py", "compute_approx_kl", KL_IS_WEIGHT_CLIP=2.0)
    for kind, verl_name in (("k1", "k1"), ("k2", "k2"), ("k3", "k3")):
        # AReaL and OpenRLHF 0.11.2 clamp every estimator to ±10
        torch.testing.assert_close(kl_estimate(logp, ref, kind, clamp=10.0), areal_kl(kind)(logp, ref).to(F64), **TOL)
        same_grad(lambda x: kl_estimate(x, ref, kind, clamp=10.0).sum(),
                  lambda x: orl(x, ref, kl_estimator=kind).sum(), logp)
        # verl clamps only k3 (and its input at ±20)
        theirs = lambda x: verl.ns["kl_penalty"](x, ref, verl_name).sum()
        same_grad(lambda x: kl_estimate(x, ref, kind, clamp=10.0 if kind == "k3" else None).sum(), theirs, logp)


def _trl_compute_loss(peer, logp, old, ref, adv, mask, *, loss_type, beta, **args):
    fn = peer.function("trl/trainer/grpo_trainer.py", "GRPOTrainer._compute_loss")
    peer.load("trl/trainer/utils.py", "nanmin", "nanmax")
    acc = types.SimpleNamespace(gather=lambda x: x.reshape(-1), reduce=lambda x, reduction: x, num_processes=1,
                                sync_gradients=True, gather_for_metrics=lambda x: x)
    self = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type=loss_type, epsilon_low=args.get("eps_low", 0.2), epsilon_high=args.get("eps_high", 0.2),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, sapo_temperature_pos=1.0,
                                   sapo_temperature_neg=1.05, steps_per_generation=1),
        use_vllm=False, model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, accelerator=acc, _metrics={"train": __import__("collections").defaultdict(list)},
        max_completion_length=mask.shape[1])
    inputs = {"prompt_ids": torch.zeros(mask.shape[0], 1, dtype=torch.long), "prompt_mask": torch.ones(mask.shape[0], 1),
              "completion_ids": torch.zeros(mask.shape, dtype=torch.long), "completion_mask": mask.to(F64),
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().to(F64)}
    return fn(self, None, inputs)


@pytest.mark.parametrize("loss_type,reduction", [("grpo", "seq_mean_token_mean"), ("dr_grpo", "seq_mean_token_sum_norm"),
                                                 ("dapo", "token_mean"), ("bnpo", "token_mean")])
def test_trl_loss_types_with_kl_aggregated_like_the_policy_term(peer_factory, loss_type, reduction):
    """TRL adds β·k3 to the per-token loss before reducing: kl_estimate + reduce_loss with the policy
    loss's own reduction reproduce it (values and gradients); the token_mean KL of today does not."""
    trl = peer_factory("trl")
    m = MASK[[0, 1, 2, 4]]  # TRL divides dr_grpo by all rows: keep rows with tokens
    logp, old, _ = batch(7)
    logp, old = logp[[0, 1, 2, 4]], old[[0, 1, 2, 4]]
    ref = old + 0.2 * torch.randn(*m.shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    adv = torch.randn(m.shape[0], generator=torch.Generator().manual_seed(9), dtype=F64)
    beta, C = 0.04, m.shape[1]

    def ours(x, kl_reduction=reduction):
        pg = reduce_loss(policy_loss(x, old, adv, m)[0], m, reduction, norm_constant=C)
        return pg + beta * reduce_loss(kl_estimate(x, ref, "k3"), m, kl_reduction, norm_constant=C)

    same_grad(ours, lambda x: _trl_compute_loss(trl, x, old, ref, adv[:, None], m, loss_type=loss_type, beta=beta), logp)
    if reduction == "seq_mean_token_mean":
        theirs = _trl_compute_loss(trl, logp, old, ref, adv[:, None], m, loss_type=loss_type, beta=beta)
        assert abs(float(ours(logp, "token_mean")) - float(theirs)) > 1e-4


def test_trl_issue15_two_row_kl_value(peer_factory):
    """Two rows of 3 and 1 tokens, A = 0 so only the KL term counts: TRL's grpo gives β·mean_i(mean_t k3)."""
    trl = peer_factory("trl")
    m = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    logp = torch.tensor([[-1.0, -0.5, -2.0], [-0.1, 0.0, 0.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -0.5, -1.0], [-1.0, 0.0, 0.0]], dtype=F64)
    adv = torch.zeros(2, 1, dtype=F64)
    k3 = kl_estimate(logp, ref, "k3")
    theirs = float(_trl_compute_loss(trl, logp, logp.detach(), ref, adv, m, loss_type="grpo", beta=0.04))
    seq = 0.04 * float(reduce_loss(k3, m, "seq_mean_token_mean"))
    tok = 0.04 * float(reduce_loss(k3, m, "token_mean"))
    assert theirs == pytest.approx(seq, abs=1e-9) and abs(theirs - tok) > 1e-4
    # hand: k3 = e^{−Δ} − 1 + Δ: row 0 {0.106531, 0, 0.718282} → mean 0.274938; row 1 0.306570
    assert seq == pytest.approx(0.04 * (0.274938 + 0.306570) / 2, abs=1e-7)


def test_trl_cispo_sapo_and_top_entropy(peer_factory):
    trl = peer_factory("trl")
    logp, old, _ = batch(10, spread=0.5)
    adv = torch.randn(MASK.shape[0], generator=torch.Generator().manual_seed(11), dtype=F64)
    ref = old.clone()
    # TRL cispo bounds the ratio above only, at epsilon_high (an absolute ratio)
    same_grad(lambda x: reduce_loss(cispo_loss(x, old, adv, MASK, eps_low=None, eps_high=4.0)[0], MASK, "token_mean"),
              lambda x: _trl_compute_loss(trl, x, old, ref, adv[:, None], MASK, loss_type="cispo", beta=0.0, eps_high=5.0),
              logp)
    # TRL's grpo/sapo mean runs over every row, the all-masked one included: S = B
    same_grad(lambda x: reduce_loss(sapo_loss(x, old, adv, MASK)[0], MASK, "seq_mean_token_mean", total_seqs=MASK.shape[0]),
              lambda x: _trl_compute_loss(trl, x, old, ref, adv[:, None], MASK, loss_type="sapo", beta=0.0), logp)
    fn = trl.function("trl/trainer/grpo_trainer.py", "GRPOTrainer.get_high_entropy_mask")
    acc = types.SimpleNamespace(pad_across_processes=lambda x, dim, pad_index: x, gather=lambda x: x)
    h = torch.rand(*MASK.shape, generator=torch.Generator().manual_seed(12))  # float32, as TRL's entropies
    for q in (0.2, 0.5, 1.0):
        theirs = fn(types.SimpleNamespace(accelerator=acc), h, MASK.float(), 1 - q)
        assert top_entropy_mask(h, MASK, q).tolist() == theirs.tolist()


# ------------------------------------------------------------------------------------------ off-policy


def test_areal_loglinear_prox(peer_factory):
    areal = peer_factory("areal")
    fn = areal.function("areal/trainer/ppo/actor.py", "compute_prox_logp_approximations",
                        PROX_APPROX_METHOD_LOGLINEAR="loglinear", PROX_APPROX_METHODS_ALL=["loglinear"])
    logp, behav, _ = batch(13)
    versions = torch.randint(-1, 8, MASK.shape, generator=torch.Generator().manual_seed(14))
    for current in (3, 7, 8):
        theirs = fn(behav, logp, versions, current, method="loglinear")["loglinear"]
        torch.testing.assert_close(prox_logp_loglinear(behav, logp, versions, current), theirs, **TOL)


def test_verl_sequence_is_truncate_and_mask(peer_factory):
    verl = peer_factory("verl")
    verl.load("verl/utils/torch_functional.py", "masked_sum", "masked_mean")
    verl.ns["verl_F"] = types.SimpleNamespace(masked_sum=verl.ns["masked_sum"], masked_mean=verl.ns["masked_mean"])
    verl.load("verl/trainer/ppo/rollout_corr_helper.py", "_parse_rollout_is_threshold", "compute_is_metrics",
              SAFETY_BOUND=20.0)
    fn = verl.function("verl/trainer/ppo/rollout_corr_helper.py", "compute_rollout_correction_weights")
    old, behav, _ = batch(15, spread=0.1)
    m = MASK.to(F64)
    theirs, _ = fn(old - behav, m, rollout_is="sequence", rollout_is_threshold=2.0)
    torch.testing.assert_close(sequence_is_weights(old, behav, MASK, agg="product", cap=2.0)[0], theirs, **TOL)
    theirs, _ = fn(old - behav, m, rollout_is="sequence", rollout_is_threshold="0.5_2.0")
    ours = sequence_is_weights(old, behav, MASK, agg="product", mode="mask", cap=2.0, lower=0.5)[0]
    torch.testing.assert_close(ours, theirs, **TOL)


def test_verl_gspo_with_one_advantage_per_sequence(verl):
    fn = verl.function(CORE, "compute_policy_loss_gspo")
    logp, old, _ = batch(16, spread=0.2)
    adv = torch.randn(MASK.shape[0], generator=torch.Generator().manual_seed(17), dtype=F64)
    cfg = verl_cfg(clip_ratio_low=3e-4, clip_ratio_high=4e-4)
    tok_adv = adv[:, None].expand(MASK.shape)
    for lo, hi in ((3e-4, 4e-4), (0.5, 0.5)):
        cfg = verl_cfg(clip_ratio_low=lo, clip_ratio_high=hi)
        same_grad(lambda x: reduce_loss(policy_loss(x, old, adv, MASK, eps_clip=lo, eps_clip_higher=hi,
                                                    ratio_level="sequence")[0], MASK, "seq_mean_token_mean"),
                  lambda x: fn(old, x, tok_adv, MASK.to(F64), "seq-mean-token-mean", cfg)[0], logp)
