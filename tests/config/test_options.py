"""Option names have one home (`areal_lite.options`): the schema offers exactly what the algorithms accept."""

from __future__ import annotations

import itertools

import pytest
import torch

import areal_lite.algo as algo
import areal_lite.options as options
from areal_lite.config.actor import ActorConfig, AdvNormConfig, RolloutFilterConfig, SeqISConfig
from areal_lite.config.fields import iter_fields


def _choices(cls: type, name: str) -> tuple:
    return next(f.metadata["choices"] for key, f, _ in iter_fields(cls) if key == name)


@pytest.mark.parametrize("cls,key,names", [
    (ActorConfig, "loss_reduction", "LOSS_REDUCTIONS"), (ActorConfig, "kl_loss_reduction", "LOSS_REDUCTIONS"),
    (ActorConfig, "kl_estimator", "KL_ESTIMATORS"), (ActorConfig, "policy_loss", "POLICY_LOSSES"),
    (ActorConfig, "adv_estimator", "ADV_ESTIMATORS"), (ActorConfig, "ratio_level", "RATIO_LEVELS"),
    (ActorConfig, "behav_weight_mode", "BEHAV_WEIGHT_MODES"), (ActorConfig, "prox_logp_method", "PROX_LOGP_METHODS"),
    (AdvNormConfig, "mean_level", "NORM_LEVELS"), (AdvNormConfig, "weighting", "ADV_WEIGHTINGS"),
    (SeqISConfig, "agg", "SEQ_IS_AGGS"), (SeqISConfig, "mode", "SEQ_IS_MODES"),
    (RolloutFilterConfig, "strategy", "FILTER_STRATEGIES"), (RolloutFilterConfig, "metric", "FILTER_METRICS"),
    (RolloutFilterConfig, "loss_scaling", "FILTER_LOSS_SCALINGS"),
])
def test_schema_choices_are_the_algorithm_names(cls, key, names):
    assert _choices(cls, key) == getattr(options, names) == getattr(algo, names)


def test_algo_options_is_the_same_module_content():
    import areal_lite.algo.options as algo_options

    for name in algo_options.__all__:
        assert getattr(algo_options, name) is getattr(options, name)


def test_every_schema_choice_runs_through_the_algorithms():
    loss, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    for mode in _choices(ActorConfig, "loss_reduction"):
        algo.reduce_loss(loss, mask, mode, norm_constant=4.0, total_tokens=2.0, total_seqs=1.0)
    values, gids = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])
    for mean, std in itertools.product(_choices(AdvNormConfig, "mean_level"), _choices(AdvNormConfig, "std_level")):
        algo.normalize(values, gids, mean_level=mean, std_level=std)
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    for kind in _choices(ActorConfig, "kl_estimator"):
        algo.kl_estimate(logp, ref, kind)
    for agg, mode in itertools.product(_choices(SeqISConfig, "agg"), _choices(SeqISConfig, "mode")):
        algo.sequence_is_weights(logp[None], ref[None], torch.ones(1, 2), agg=agg, mode=mode)
