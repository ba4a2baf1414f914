"""The `actor` section: policy model, optimizer, and every algorithm option of the update.

Option names come from `areal_lite.options` (their one home, shared with the algorithm library).
Formulas and what other frameworks call each option: docs/algorithms.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from areal_lite.config.fields import setting
from areal_lite.options import (
    ADV_ESTIMATORS,
    ADV_WEIGHTINGS,
    ATTN_IMPLS,
    BEHAV_WEIGHT_MODES,
    ENTROPY_SHAPING_MODES,
    FILTER_LOSS_SCALINGS,
    FILTER_METRICS,
    FILTER_STRATEGIES,
    FILTER_TOP_P_MODES,
    FILTER_TYPES,
    KL_ESTIMATORS,
    LOSS_REDUCTIONS,
    NORM_LEVELS,
    POLICY_LOSSES,
    PROX_LOGP_METHODS,
    RATIO_LEVELS,
    SEQ_IS_AGGS,
    SEQ_IS_MODES,
    parse_loss_reduction,
)


@dataclass
class OptimizerConfig:
    lr: float = setting(1e-5, "Peak learning rate.", ge=0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    beta1: float = setting(0.9, "AdamW beta1.", ge=0, lt=1)
    beta2: float = setting(0.999, "AdamW beta2.", ge=0, lt=1)
    eps: float = setting(1e-8, "AdamW epsilon.", ge=0)
    lr_scheduler_type: str = setting("constant", "Learning-rate schedule after warmup.", ("constant", "cosine", "linear"))
    warmup_steps_proportion: float = setting(0.0, "Fraction of optimizer steps spent in linear warmup.", ge=0, lt=1)
    min_lr_ratio: float = setting(
        0.0, "Final learning rate of the cosine/linear schedules, as a fraction of lr.", ge=0, le=1
    )
    gradient_clipping: float = setting(1.0, "Global gradient-norm clip (0: off).", ge=0)


@dataclass
class MicroBatchSpec:
    max_tokens_per_mb: int = setting(4096, "Token budget of one micro-batch (sequences are packed up to it).", ge=1)
    packing: bool = setting(
        True, "Pack sequences side by side in rows (almost no padding); off: one padded row per sequence."
    )
    share_prompts: bool = setting(
        True, "With attn_impl varlen: a group's samples carry their shared prompt once per micro-batch (the prompt "
        "runs through the model once; every sample's log-probs are what it would get alone)."
    )
    max_row_tokens: int = setting(
        0,
        "Packed row length with attn_impl=sdpa: max(this, the micro-batch's longest sequence); max_tokens_per_mb: "
        "one row per micro-batch. Attention over a row costs its length squared. With varlen a micro-batch is one row.",
        ge=0,
    )


@dataclass
class AdvNormConfig:
    mean_level: str = setting("group", "Centre advantages by the mean of the group, of the batch, or not.", NORM_LEVELS)
    std_level: str = setting("group", "Scale advantages by the std of the group, of the batch, or not.", NORM_LEVELS)
    leave_one_out: bool = setting(False, "Mean of the other members of the set (RLOO).")
    unbiased: bool = setting(True, "Unbiased (n−1) standard deviation.")
    eps: float = setting(1e-6, "Added to the std before dividing.", ge=0)
    weighting: str = setting(
        "sequence",
        "sequence: normalise per-sequence rewards, then broadcast to tokens; token: normalise token advantages.",
        ADV_WEIGHTINGS,
    )


@dataclass
class OverlongPenaltyConfig:
    enabled: bool = setting(False, "DAPO overlong penalty on answers near the generation budget.")
    buffer_len: int = setting(64, "Length of the soft-penalty buffer before the budget, in tokens.", ge=1)
    penalty_factor: float = setting(1.0, "Penalty at the budget.", ge=0)


@dataclass
class GroupFilterConfig:
    top_k_ratio: float = setting(
        1.0, "Keep this fraction of a batch's groups, those with the largest reward std (RAGEN).", gt=0, le=1
    )
    soft_reweight: bool = setting(False, "Dr.GRPO+ soft reweighting: scale a group's advantages by σ_g / max σ.")


@dataclass
class EntropyShapingConfig:
    mode: str = setting("none", "GTPO/GRPO-S entropy-weighted reward shaping.", ENTROPY_SHAPING_MODES)
    beta: float = setting(0.1, "Strength of the entropy weighting.", ge=0)


@dataclass
class CispoConfig:
    eps_low: Optional[float] = setting(None, "Lower clip: sg(clip(r, 1 − eps_low, ·)); null: no lower bound.", ge=0, le=1)
    eps_high: float = setting(0.28, "Upper clip: sg(clip(r, ·, 1 + eps_high)).", ge=0)


@dataclass
class SapoConfig:
    tau_pos: float = setting(1.0, "Temperature τ of the soft gate for positive advantages.", gt=0)
    tau_neg: float = setting(1.05, "Temperature τ of the soft gate for negative advantages.", gt=0)


@dataclass
class GmpoConfig:
    eps_low: float = setting(0.4, "Lower clip of the log-ratio Δ (clip(Δ, −eps_low, eps_high)).", gt=0)
    eps_high: float = setting(0.4, "Upper clip of the log-ratio Δ.", gt=0)


@dataclass
class ClipCovConfig:
    ratio: float = setting(2e-4, "Share of the unclipped tokens in the covariance band whose loss is dropped.", gt=0, le=1)
    cov_lb: float = setting(1.0, "Lower bound of the covariance band (A − Ā)(logp − l̄).")
    cov_ub: float = setting(5.0, "Upper bound of the covariance band.")


@dataclass
class KlCovConfig:
    ratio: float = setting(2e-4, "Share of tokens (largest covariance) that get the KL penalty.", gt=0, le=1)
    kl_coef: float = setting(1.0, "Coefficient of |logp − old_logp| on those tokens.", ge=0)


@dataclass
class SeqISConfig:
    enabled: bool = setting(False, "Multiply the per-token loss by a sequence-level importance weight π_prox/π_behav.")
    agg: str = setting("product", "Sequence weight: product of token ratios, or their geometric mean.", SEQ_IS_AGGS)
    mode: str = setting("truncate", "Above `cap`: truncate the weight (TIS), or drop the sequence (mask).", SEQ_IS_MODES)
    cap: float = setting(2.0, "Upper bound of the weight.", gt=0)
    lower: Optional[float] = setting(None, "mask mode: sequences with a weight below this are dropped; null: none.", ge=0)


@dataclass
class RolloutFilterConfig:
    enabled: bool = setting(False, "RAGEN rollout filtering: keep only the groups whose score passes `strategy`.")
    strategy: str = setting("top_p", "How groups are selected by score (docs/algorithms.md).", FILTER_STRATEGIES)
    value: float = setting(1.0, "The strategy's threshold: p for top_p/min_p, a fraction for top_k, a count for top_k_abs.", gt=0)
    filter_type: str = setting("largest", "Keep the groups of largest or smallest score.", FILTER_TYPES)
    metric: str = setting("reward_std", "Score of a group.", FILTER_METRICS)
    include_zero: bool = setting(True, "Groups with score 0 are candidates too.")
    top_p_mode: str = setting("linear", "top_p over the scores themselves (linear) or their softmax.", FILTER_TOP_P_MODES)
    selection_eps: float = setting(0.01, "Tolerance of the linear top_p sum.", ge=0)
    loss_scaling: str = setting(
        "none", "Scale the advantages after filtering by 1, the kept-group ratio, or its square root.", FILTER_LOSS_SCALINGS
    )


@dataclass
class CriticConfig:
    path: str = setting(
        "", "Initial weights of the value model: a causal LM directory whose backbone gets a new scalar value "
        "head (AutoModelForTokenClassification, 1 label); empty: actor.path."
    )
    optimizer: OptimizerConfig = setting(factory=OptimizerConfig, help="AdamW and its schedule for the value model.")
    value_clip: Optional[float] = setting(
        0.5, "PPO's clipped value loss: new values clipped to ±value_clip around the old ones; null: unclipped.", gt=0
    )


@dataclass
class ActorConfig:
    path: str = setting("", "Model directory (any transformers causal LM). Built first when `prepare` says so.")
    dtype: str = setting(
        "float32",
        "Master parameters and optimizer state. On GPU forward/backward compute in bf16 either way (FSDP mixed "
        "precision); float32 keeps updates of lr ~1e-6 that bfloat16 parameters would round away.",
        ("float32", "bfloat16"),
    )
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass.")
    attn_impl: str = setting(
        "auto",
        "Attention of the trainer's forward. varlen: causal attention per packed sequence and one row per "
        "micro-batch (no padding, no mask); sdpa: transformers' SDPA with a block-diagonal mask over rows as "
        "long as the longest sequence; auto: varlen on CPU, sdpa on GPU.",
        ATTN_IMPLS,
    )
    optimizer: OptimizerConfig = setting(factory=OptimizerConfig, help="AdamW and its schedule.")
    mb_spec: MicroBatchSpec = setting(factory=MicroBatchSpec, help="Micro-batch packing.")
    ppo_n_minibatches: int = setting(1, "Optimizer steps per training step (the batch is split into this many).", ge=1)
    # Policy loss
    policy_loss: str = setting("ppo", "Policy loss form (docs/algorithms.md, 'More policy losses').", POLICY_LOSSES)
    eps_clip: float = setting(0.2, "PPO clip range (lower, and upper unless eps_clip_higher is set).", gt=0)
    eps_clip_higher: Optional[float] = setting(None, "Upper clip range (DAPO clip-higher); null: eps_clip.", gt=0)
    c_clip: Optional[float] = setting(None, "Dual-clip constant (> 1) for negative advantages; null: off.", gt=1)
    ratio_level: str = setting("token", "Importance ratio per token (PPO) or per sequence (GSPO).", RATIO_LEVELS)
    cispo: CispoConfig = setting(factory=CispoConfig, help="CISPO (policy_loss=cispo).")
    sapo: SapoConfig = setting(factory=SapoConfig, help="SAPO (policy_loss=sapo).")
    gmpo: GmpoConfig = setting(factory=GmpoConfig, help="GMPO (policy_loss=gmpo).")
    clip_cov: ClipCovConfig = setting(factory=ClipCovConfig, help="Clip-Cov (policy_loss=clip_cov).")
    kl_cov: KlCovConfig = setting(factory=KlCovConfig, help="KL-Cov (policy_loss=kl_cov).")
    entropy_coef: float = setting(0.0, "Entropy bonus: −entropy_coef·H is added to each token's loss (0: off).", ge=0)
    top_entropy_fraction: float = setting(
        1.0, "Train only on the valid tokens in this top fraction of entropy (1: all tokens).", gt=0, le=1
    )
    # Decoupled PPO and off-policy corrections
    use_decoupled_loss: bool = setting(
        True, "Decoupled PPO: recompute proximal log-probs and weight by π_prox/π_behav (AReaL)."
    )
    recompute_logprob: bool = setting(True, "Recompute log-probs with the current weights before the update.")
    prox_logp_method: str = setting(
        "recompute", "Proximal log-probs: a forward pass, or AReaL's log-linear approximation.", PROX_LOGP_METHODS
    )
    prox_logp_in_update: bool = setting(
        True, "With one optimizer step per training step (ppo_n_minibatches=1), take the recomputed proximal "
        "log-probs from the update's own forward (detached) instead of a separate no-grad pass: the same weights, "
        "so the same values up to float rounding (verl's on-policy shortcut). Ignored where the step needs them "
        "before the update (kl_in_reward, clip_cov, kl_cov) or runs the pass anyway for entropies."
    )
    behav_weight_cap: Optional[float] = setting(5.0, "Cap on the behaviour weight π_prox/π_behav; null: none.", gt=0)
    behav_weight_mode: str = setting(
        "mask", "Over the cap: zero the token (mask) or clamp the weight.", BEHAV_WEIGHT_MODES
    )
    seq_is: SeqISConfig = setting(factory=SeqISConfig, help="Sequence-level importance weights.")
    # KL
    kl_ctl: float = setting(0.0, "KL coefficient (0: no reference model is loaded).", ge=0)
    kl_estimator: str = setting("k1", "KL estimator.", KL_ESTIMATORS)
    kl_in_reward: bool = setting(
        False, "Subtract kl_ctl·KL from token rewards (PPO-RLHF) instead of adding a loss term."
    )
    kl_clamp: Optional[float] = setting(10.0, "Symmetric clamp of the KL estimate; null: none.", gt=0)
    kl_loss_reduction: Optional[str] = setting(
        None, "How the KL loss term is reduced; null: as actor.loss_reduction.", LOSS_REDUCTIONS,
        parse=parse_loss_reduction,
    )
    # Loss reduction
    loss_reduction: str = setting(
        "token_mean", "How per-token losses become one number (docs/algorithms.md).", LOSS_REDUCTIONS,
        parse=parse_loss_reduction,
    )
    loss_norm_constant: Optional[float] = setting(
        None, "Constant C of seq_mean_token_sum_norm; null: gconfig.max_new_tokens (the generation budget).", gt=0
    )
    # Rewards and advantages
    reward_bias: float = setting(0.0, "Added to the outcome reward before scaling.")
    reward_scaling: float = setting(
        1.0, "Multiplies the biased outcome reward.", check=lambda v: "must not be 0 (every reward would vanish)"
        if v == 0 else None
    )
    reward_clip: float = setting(20.0, "Symmetric clip of the shaped reward.", gt=0)
    mask_truncated_reward: bool = setting(False, "Give reward 0 to answers cut off by the generation budget.")
    overlong_penalty: OverlongPenaltyConfig = setting(factory=OverlongPenaltyConfig, help="DAPO overlong penalty.")
    adv_estimator: str = setting(
        "normalize", "Advantage estimator: group/batch normalisation (adv_norm) or another estimator.", ADV_ESTIMATORS
    )
    adv_norm: AdvNormConfig = setting(factory=AdvNormConfig, help="Advantage normalisation (adv_estimator=normalize).")
    gamma: float = setting(1.0, "Discount γ of token returns (reinforce_pp, gae).", ge=0, le=1)
    gae_lambda: float = setting(1.0, "GAE λ (adv_estimator=gae).", ge=0, le=1)
    critic: CriticConfig = setting(factory=CriticConfig, help="The value model trained beside the policy (adv_estimator=gae).")
    passk_norm_by_std: bool = setting(True, "passk: divide the best answer's margin by the group's std.")
    gpg_f_norm: float = setting(1.0, "gpg: the normaliser f_norm of the advantages.", gt=0)
    group_filter: GroupFilterConfig = setting(factory=GroupFilterConfig, help="Group filtering and reweighting.")
    rollout_filter: RolloutFilterConfig = setting(factory=RolloutFilterConfig, help="RAGEN rollout filtering.")
    entropy_shaping: EntropyShapingConfig = setting(factory=EntropyShapingConfig, help="GTPO/GRPO-S entropy shaping.")
    # Weight sync
    weight_update_mode: str = setting("disk", "How new weights reach the servers.", ("disk", "distributed"))
