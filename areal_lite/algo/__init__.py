"""The algorithm library: pure torch functions with one written formula each (docs/algorithms.md).

Imports nothing else from areal_lite. Functions take tensors and return new tensors (plus a stats
dict where the caller logs or aggregates something); functions that communicate take the
torch.distributed process group as an explicit `group` argument.
"""

from areal_lite.algo.entropy_shaping import entropy_shaped_advantages, grpo_s_rewards, gtpo_token_rewards
from areal_lite.algo.groups import group_index, group_std
from areal_lite.algo.logprob import DEFAULT_CHUNK_SIZE, logprobs_and_entropy, logprobs_and_entropy_naive
from areal_lite.algo.loss import (
    aggregate_stats,
    kl_estimate,
    kl_reward_to_go,
    loss_counts,
    policy_loss,
    reduce_loss,
)
from areal_lite.algo.normalize import normalize
from areal_lite.algo.options import (
    ADV_WEIGHTINGS,
    BEHAV_WEIGHT_MODES,
    ENTROPY_SHAPING_MODES,
    KL_ESTIMATORS,
    LOSS_REDUCTION_ALIASES,
    LOSS_REDUCTIONS,
    NORM_LEVELS,
    RATIO_LEVELS,
    parse_loss_reduction,
    parse_option,
)
from areal_lite.algo.rewards import (
    drop_all_equal_groups,
    overlong_penalty,
    shape_rewards,
    soft_reweight,
    soft_reweight_weights,
    top_k_groups_by_std,
)

__all__ = [
    "ADV_WEIGHTINGS",
    "BEHAV_WEIGHT_MODES",
    "DEFAULT_CHUNK_SIZE",
    "ENTROPY_SHAPING_MODES",
    "KL_ESTIMATORS",
    "LOSS_REDUCTIONS",
    "LOSS_REDUCTION_ALIASES",
    "NORM_LEVELS",
    "RATIO_LEVELS",
    "aggregate_stats",
    "drop_all_equal_groups",
    "entropy_shaped_advantages",
    "group_index",
    "group_std",
    "grpo_s_rewards",
    "gtpo_token_rewards",
    "kl_estimate",
    "kl_reward_to_go",
    "logprobs_and_entropy",
    "logprobs_and_entropy_naive",
    "loss_counts",
    "normalize",
    "overlong_penalty",
    "parse_loss_reduction",
    "parse_option",
    "policy_loss",
    "reduce_loss",
    "shape_rewards",
    "soft_reweight",
    "soft_reweight_weights",
    "top_k_groups_by_std",
]
