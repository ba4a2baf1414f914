"""Option names of the algorithms (and of the trainer's attention), and their parsing: the one home of these names.

A leaf module (it imports nothing): the algorithm functions (`areal_lite.algo`, torch) validate
their arguments against these tuples and the config schema (`areal_lite.config`, no torch, so the
CLI starts fast) offers them as choices, so the two can never disagree. Hyphen spellings
(`seq-mean-token-mean`, as verl writes them) are accepted everywhere and mean the same as the
underscore spelling.
"""

from __future__ import annotations

NORM_LEVELS = ("group", "batch", "none")
LOSS_REDUCTIONS = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "token_sum",
    "sequence_mean",  # alias of seq_mean_token_mean (SkyRL's name)
)
LOSS_REDUCTION_ALIASES = {"sequence_mean": "seq_mean_token_mean"}
KL_ESTIMATORS = ("k1", "k2", "k3")
BEHAV_WEIGHT_MODES = ("mask", "clamp")
RATIO_LEVELS = ("token", "sequence")
ADV_WEIGHTINGS = ("sequence", "token")
ENTROPY_SHAPING_MODES = ("none", "token", "sequence")
# Policy loss forms (algo.loss.policy_loss is "ppo"; the others live in algo.policy_losses).
POLICY_LOSSES = ("ppo", "cispo", "sapo", "gmpo", "reinforce", "clip_cov", "kl_cov")
# Advantage estimators: "normalize" is group/batch normalisation (algo.normalize); the rest in algo.advantages.
ADV_ESTIMATORS = ("normalize", "reinforce_pp", "reinforce_pp_baseline", "remax", "passk", "gpg", "gae")
# Sequence-level importance weights (algo.offpolicy.sequence_is_weights).
SEQ_IS_AGGS = ("product", "geometric")
SEQ_IS_MODES = ("truncate", "mask")
# Proximal log-probs: recomputed by a forward pass, or AReaL's log-linear approximation.
PROX_LOGP_METHODS = ("recompute", "loglinear")
# The trainer's attention over packed micro-batches (trainer.attention): auto is varlen on CPU, sdpa on GPU.
ATTN_IMPLS = ("auto", "sdpa", "varlen")
# RAGEN rollout filtering (algo.group_filter).
FILTER_STRATEGIES = ("top_p", "top_k", "top_k_abs", "min_p")
FILTER_TYPES = ("largest", "smallest")
FILTER_METRICS = ("reward_std", "reward_mean", "reward_sum", "length")
FILTER_TOP_P_MODES = ("linear", "softmax")
FILTER_LOSS_SCALINGS = ("none", "linear", "sqrt")


def parse_option(value: object, choices: tuple[str, ...], name: str) -> str:
    """Canonical (underscore, lower-case) spelling of `value`, or ValueError naming the choices.

    `None` is accepted for `NORM_LEVELS` as a synonym of "none" (AReaL writes `std_level: null`).
    """
    if value is None and "none" in choices:
        return "none"
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        if key in choices:
            return key
    raise ValueError(f"invalid {name}={value!r}; valid choices: {', '.join(choices)} (hyphens also accepted)")


def parse_loss_reduction(mode: object) -> str:
    """Canonical loss-reduction name; `sequence_mean` resolves to `seq_mean_token_mean`."""
    key = parse_option(mode, LOSS_REDUCTIONS, "loss_reduction")
    return LOSS_REDUCTION_ALIASES.get(key, key)
