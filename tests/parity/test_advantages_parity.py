"""Advantage normalisation and estimators against the peers' released functions (tests/parity/peers.py).

Each test runs the peer's own code and ours on the same random float64 inputs (singletons,
all-equal groups, unequal groups, ragged and masked rows) and asserts the equality, or the
difference, that docs/algorithms.md states. Peer versions: peers.VERSIONS.
"""

from __future__ import annotations

import itertools
import types
from collections import defaultdict

import numpy as np
import pytest
import torch

from areal_lite.algo import (
    discounted_returns,
    gae,
    gpg_advantages,
    normalize,
    passk_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
)

F64 = torch.float64
TOL = dict(rtol=1e-6, atol=1e-6)
CORE = "verl/trainer/ppo/core_algos.py"


def rewards_in_groups(seed: int, sizes: list[int], binary: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards for groups of the given sizes; group 1 is all-equal when it has ≥ 2 members."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for k, n in enumerate(sizes):
        x = torch.randint(0, 2, (n,), generator=g).to(F64) if binary else torch.randn(n, generator=g, dtype=F64)
        parts.append(torch.full((n,), 1.0, dtype=F64) if k == 1 else x)
    gids = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)])
    return torch.cat(parts), gids


def ragged_mask(seed: int, B: int, T: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    return torch.arange(T)[None, :] < lengths[:, None]


# ------------------------------------------------------------------------------------------ AReaL


@pytest.fixture(scope="module")
def areal_norm(peer_factory):
    return peer_factory("areal").function("areal/utils/data.py", "Normalization")


def _areal(norm_cls, x, mask, *, mean, std, loo, unbiased, group_size, eps):
    cfg = types.SimpleNamespace(mean_level=mean, mean_leave1out=loo, std_level=std, std_unbiased=unbiased,
                                group_size=group_size, eps=eps)
    return norm_cls(cfg)(x, mask).to(F64)


LEVELS = list(itertools.product(["group", "batch", None], ["group", "batch", None]))


@pytest.mark.parametrize("mean,std", LEVELS)
def test_areal_normalization_every_level_combination(areal_norm, mean, std):
    """AReaL's Normalization == normalize for every level pair, leave-one-out and variance (groups of 4,
    one all-equal), per sequence and per masked token."""
    r, gids = rewards_in_groups(0, [4, 4, 4, 4], binary=True)
    tokens = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    mask = ragged_mask(2, 16, 6)
    for loo, unbiased in itertools.product([False, True], [False, True]):
        kw = dict(mean_level=mean, std_level=std, leave_one_out=loo, unbiased=unbiased, eps=1e-5)
        theirs = _areal(areal_norm, r[:, None], None, mean=mean, std=std, loo=loo, unbiased=unbiased,
                        group_size=4, eps=1e-5)[:, 0]
        torch.testing.assert_close(normalize(r, gids, **kw), theirs, **TOL)
        theirs = _areal(areal_norm, tokens, mask.to(F64), mean=mean, std=std, loo=loo, unbiased=unbiased,
                        group_size=4, eps=1e-5)
        torch.testing.assert_close(normalize(tokens, gids, mask=mask, **kw), theirs, **TOL)


def test_areal_issue15_values_and_singletons(areal_norm):
    r = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=F64)[:, None]
    ours = normalize(r[:, 0], torch.tensor([0, 0, 1, 1]), mean_level="none", std_level="group", eps=1e-5)
    theirs = _areal(areal_norm, r, None, mean=None, std="group", loo=False, unbiased=True, group_size=2, eps=1e-5)
    torch.testing.assert_close(ours, theirs[:, 0], **TOL)
    assert theirs[:, 0].tolist() == pytest.approx([0.707102, 0.707102, 0.0, 0.99999], abs=1e-6)
    # group_size 1: group/group gives 0, leave-one-out gives x/(1 + eps), as ours does for singleton groups
    x = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=F64)
    for loo in (False, True):
        theirs = _areal(areal_norm, x[:, None], None, mean="group", std="group", loo=loo, unbiased=True,
                        group_size=1, eps=1e-5)[:, 0]
        ours = normalize(x, torch.arange(5), mean_level="group", std_level="group", leave_one_out=loo, eps=1e-5)
        torch.testing.assert_close(ours, theirs, **TOL)


def test_areal_partial_group_is_divided_by_eps_ours_is_not(areal_norm):
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=F64)  # 5 rows, group_size 2: row 4 is a partial group
    theirs = _areal(areal_norm, r[:, None], None, mean="group", std="group", loo=False, unbiased=True,
                    group_size=2, eps=1e-5)[:, 0]
    ours = normalize(r, torch.tensor([0, 0, 1, 1, 2]), mean_level="group", std_level="group", eps=1e-5)
    torch.testing.assert_close(ours[:4], theirs[:4], **TOL)
    assert theirs[4].item() == pytest.approx(1e5) and ours[4].item() == 0.0


# ------------------------------------------------------------------------------------------ TRL


def _trl_advantages(peer, rewards, n, scale):
    ns = peer.load("trl/trainer/utils.py", "nanstd")
    self = types.SimpleNamespace(scale_rewards=scale, multi_objective_aggregation="sum_then_normalize",
                                 reward_weights=torch.ones(1, dtype=F64))
    out = peer.run_statement("trl/trainer/grpo_trainer.py", "GRPOTrainer._generate_and_score_completions",
                             'if self.multi_objective_aggregation == "sum_then_normalize"',
                             {"self": self, "rewards_per_func": rewards[:, None], "device": "cpu",
                              "unscorable_mask": torch.zeros_like(rewards, dtype=torch.bool),
                              "num_generations": n, "nanstd": ns["nanstd"]})
    return out["advantages"]


def test_trl_scale_rewards(peer_factory):
    trl = peer_factory("trl")
    r, gids = rewards_in_groups(4, [4, 4, 4], binary=False)
    kw = dict(mean_level="group", eps=1e-4)
    torch.testing.assert_close(normalize(r, gids, std_level="group", **kw), _trl_advantages(trl, r, 4, "group"), **TOL)
    torch.testing.assert_close(normalize(r, gids, std_level="none", **kw), _trl_advantages(trl, r, 4, "none"), **TOL)
    # scale_rewards="batch" divides by the std of the *raw* rewards; group/batch by the std of the
    # group-centred rewards: the two differ by exactly that ratio (up to eps).
    theirs = _trl_advantages(trl, r, 4, "batch")
    centred = normalize(r, gids, std_level="none", **kw)
    torch.testing.assert_close(theirs, centred / (r.std() + 1e-4), **TOL)
    ours = normalize(r, gids, std_level="batch", **kw)
    torch.testing.assert_close(ours, centred / (centred.std() + 1e-4), **TOL)
    assert (ours - theirs).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------ verl


def _verl(peer_factory):
    verl = peer_factory("verl")
    verl.load("verl/utils/torch_functional.py", "masked_sum", "masked_mean", "masked_var", "masked_whiten")
    verl.ns["verl_F"] = types.SimpleNamespace(**{k: verl.ns[k] for k in ("masked_sum", "masked_mean", "masked_var", "masked_whiten")})
    verl.ns["defaultdict"] = defaultdict
    return verl


def test_verl_grpo_rloo_and_singletons(peer_factory):
    verl = _verl(peer_factory)
    grpo = verl.function(CORE, "compute_grpo_outcome_advantage")
    rloo = verl.function(CORE, "compute_rloo_outcome_advantage")
    r, gids = rewards_in_groups(5, [4, 3, 1, 5], binary=True)  # unequal sizes, a singleton (group 2)
    mask = ragged_mask(6, r.numel(), 5)
    tok = torch.zeros(r.numel(), 5, dtype=F64)
    tok[:, 0] = r
    index = np.array([f"uid{g}" for g in gids.tolist()], dtype=object)
    multi = gids != 2
    for by_std, std_level in ((True, "group"), (False, "none")):
        theirs = grpo(tok.clone(), mask.to(F64), index, epsilon=1e-6, norm_adv_by_std_in_grpo=by_std)[0][:, 0]
        ours = normalize(r, gids, mean_level="group", std_level=std_level, eps=1e-6)
        torch.testing.assert_close(ours[multi], theirs[multi], **TOL)
        # singleton: verl uses μ = 0, σ = 1 (r/(1 + eps)); ours 0, or r/(1 + eps) with leave_one_out
        loo = normalize(r, gids, mean_level="group", std_level=std_level, leave_one_out=True, eps=1e-6)
        torch.testing.assert_close(loo[~multi], theirs[~multi], **TOL)
        assert ours[~multi].abs().max() == 0
    theirs = rloo(tok.clone(), mask.to(F64), index)[0][:, 0]
    ours = normalize(r, gids, mean_level="group", std_level="none", leave_one_out=True)
    torch.testing.assert_close(ours, theirs, **TOL)  # singleton: r in both


def test_verl_reinforce_pp_baseline_remax_passk_gpg(peer_factory):
    verl = _verl(peer_factory)
    r, gids = rewards_in_groups(7, [4, 4, 3], binary=False)
    B, T = r.numel(), 6
    mask = ragged_mask(8, B, T)
    tok = torch.zeros(B, T, dtype=F64)
    tok[:, 0] = r
    index = np.array(gids.tolist())
    theirs = verl.function(CORE, "compute_reinforce_plus_plus_baseline_outcome_advantage")(tok.clone(), mask.to(F64), index)[0]
    ours = reinforce_pp_baseline_advantages(r, gids, mask, eps=0.0)
    torch.testing.assert_close(ours, theirs, **TOL)
    # ReMax with per-token rewards and a greedy baseline
    tok_r = torch.randn(B, T, generator=torch.Generator().manual_seed(9), dtype=F64)
    base = torch.randn(B, generator=torch.Generator().manual_seed(10), dtype=F64)
    theirs = verl.function(CORE, "compute_remax_outcome_advantage")(tok_r, base, mask.to(F64))[0]
    torch.testing.assert_close(remax_advantages(tok_r, base, mask), theirs, **TOL)
    # pass@k, with and without std scaling
    passk = verl.function(CORE, "compute_grpo_passk_outcome_advantage")
    for by_std in (True, False):
        theirs = passk(tok.clone(), mask.to(F64), index, config={"norm_adv_by_std_in_grpo": by_std})[0][:, 0]
        torch.testing.assert_close(passk_advantages(r, gids, norm_by_std=by_std), theirs, **TOL)
    # GPG: verl's α = B / #(non-zero rewards); ours B / #(sequences of groups with spread). With every
    # reward non-zero and no all-equal group both are 1.
    gpg = verl.function(CORE, "compute_gpg_outcome_advantage")
    r2 = r + 10.0
    r2[4:8] = torch.tensor([11.0, 12.0, 13.0, 14.0], dtype=F64)
    tok[:, 0] = r2
    torch.testing.assert_close(gpg_advantages(r2, gids), gpg(tok.clone(), mask.to(F64), index)[0][:, 0], **TOL)
    binary = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0], dtype=F64)  # group 1 all-equal
    tok[:, 0] = binary
    theirs = gpg(tok.clone(), mask.to(F64), index)[0][:, 0]  # 6 non-zero rewards: α = 11/6
    torch.testing.assert_close(theirs, 11 / 6 * normalize(binary, gids, mean_level="group", std_level="none"), **TOL)
    torch.testing.assert_close(gpg_advantages(binary, gids), 11 / 7 * normalize(binary, gids, mean_level="group", std_level="none"), **TOL)


def test_verl_reinforce_pp_and_gae(peer_factory):
    verl = _verl(peer_factory)
    B, T = 6, 7
    mask = ragged_mask(11, B, T)
    mask[2, 1:3] = False  # an observation span inside a row
    tok_r = torch.randn(B, T, generator=torch.Generator().manual_seed(12), dtype=F64)
    cfg = types.SimpleNamespace(gamma=0.9)
    adv, ret = verl.function(CORE, "compute_reinforce_plus_plus_outcome_advantage")(tok_r, mask.to(F64), config=cfg)
    torch.testing.assert_close(discounted_returns(tok_r, mask, 0.9), ret, **TOL)
    torch.testing.assert_close(reinforce_pp_advantages(tok_r, mask, gamma=0.9), adv, **TOL)
    values = torch.randn(B, T, generator=torch.Generator().manual_seed(13), dtype=F64)
    adv, ret = verl.function(CORE, "compute_gae_advantage_return")(tok_r, values, mask.to(F64), 0.95, 0.9)
    ours_adv, ours_ret = gae(tok_r, values, mask, gamma=0.95, lam=0.9)
    torch.testing.assert_close(ours_ret, torch.where(mask, ret, 0.0), **TOL)
    whitened = normalize(ours_adv, torch.zeros(B, dtype=torch.long), mean_level="batch", std_level="batch", mask=mask, eps=0.0)
    torch.testing.assert_close(whitened, torch.where(mask, adv, 0.0), **TOL)


# ------------------------------------------------------------------------------------------ OpenRLHF


def _openrlhf_shaping(peer, rewards, n, estimator):
    args = types.SimpleNamespace(algo=types.SimpleNamespace(advantage=types.SimpleNamespace(estimator=estimator)),
                                 rollout=types.SimpleNamespace(n_samples_per_prompt=n))
    out = peer.run_statement("openrlhf/trainer/ppo_utils/experience_maker.py",
                             "RemoteExperienceMaker.compute_advantages_and_returns",
                             'if args.algo.advantage.estimator == "rloo"', {"args": args, "rewards": rewards.reshape(-1, n)})
    return out["rewards"].reshape(-1)


def _openrlhf_whiten(peer, adv, mask):
    exp = types.SimpleNamespace(advantages=adv.clone(), action_mask=mask.to(F64))
    args = types.SimpleNamespace(algo=types.SimpleNamespace(advantage=types.SimpleNamespace(estimator="reinforce_baseline", no_std_norm=False)))
    peer.run_statement("openrlhf/trainer/ppo_utils/experience_maker.py",
                       "RemoteExperienceMaker.compute_advantages_and_returns",
                       'if args.algo.advantage.estimator in ["gae", "reinforce", "reinforce_baseline"]',
                       {"args": args, "experiences": [exp]})
    return exp.advantages


def test_openrlhf_estimators(peer_factory):
    orl = peer_factory("openrlhf")
    r, gids = rewards_in_groups(14, [4, 4, 4], binary=False)
    centred = normalize(r, gids, mean_level="group", std_level="none")
    torch.testing.assert_close(_openrlhf_shaping(orl, r, 4, "group_norm"),
                               normalize(r, gids, mean_level="group", std_level="group", eps=1e-9), **TOL)
    torch.testing.assert_close(_openrlhf_shaping(orl, r, 4, "dr_grpo"), centred, **TOL)
    torch.testing.assert_close(_openrlhf_shaping(orl, r, 4, "rloo"),
                               normalize(r, gids, mean_level="group", std_level="none", leave_one_out=True), **TOL)
    # reinforce_baseline: the group-centred reward on every token, then whitened with the biased variance
    torch.testing.assert_close(_openrlhf_shaping(orl, r, 4, "reinforce_baseline"), centred, **TOL)
    mask = ragged_mask(15, 12, 5)
    tokens = torch.where(mask, centred[:, None], 0.0)
    theirs = _openrlhf_whiten(orl, tokens, mask).to(F64)
    ours = reinforce_pp_baseline_advantages(r, gids, mask, unbiased=False)
    torch.testing.assert_close(ours, torch.where(mask, theirs, 0.0), **TOL)
    assert (ours - torch.where(mask, tokens, 0.0)).abs().max() > 1e-2  # not plain group/none


# ------------------------------------------------------------------------------------------ SkyRL, oat


def test_skyrl_grpo_and_oat(peer_factory):
    sky = peer_factory("skyrl")
    sky.ns["defaultdict"] = defaultdict
    grpo = sky.function("skyrl_train/utils/ppo_utils.py", "compute_grpo_outcome_advantage")
    r, gids = rewards_in_groups(16, [4, 3, 1], binary=True)
    tok = r[:, None].clone()
    index = np.array(gids.tolist())
    multi = gids != 2
    for by_std, std_level in ((True, "group"), (False, "none")):
        theirs = grpo(tok.clone(), torch.ones_like(tok), index, grpo_norm_by_std=by_std)[0][:, 0]
        ours = normalize(r, gids, mean_level="group", std_level=std_level, eps=1e-6)
        torch.testing.assert_close(ours[multi], theirs[multi].to(F64), **TOL)
        assert theirs[~multi].item() == pytest.approx(r[~multi].item() / (1 + 1e-6 if by_std else 1))
    oat = peer_factory("oat").function("oat/algorithms/ppo.py", "PPOLearner.compute_monte_carlo_advantages")
    r, gids = rewards_in_groups(17, [4, 4, 4], binary=True)
    for critic, std_level in (("grpo", "group"), ("drgrpo", "none")):
        self = types.SimpleNamespace(args=types.SimpleNamespace(num_samples=4, critic_type=critic))
        theirs = oat(self, r[:, None], None)
        torch.testing.assert_close(normalize(r, gids, mean_level="group", std_level=std_level, eps=1e-8), theirs, **TOL)
