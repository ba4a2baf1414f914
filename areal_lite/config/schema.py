"""The typed configuration schema: one dataclass per group, help text on every field.

Names follow AReaL where AReaL has one (`actor.adv_norm.mean_level`, `rollout.max_head_offpolicyness`,
`gconfig.n_samples`, ...). Every value has one home: quantities derived from others (the sampling
temperature the trainer uses, the default Dr.GRPO length constant, the tokenizer path) are computed
by the `resolved_*` helpers below, not duplicated in YAML.

Choices are declared in field metadata (`choices`) and checked by `areal_lite.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from areal_lite.config.placement import GpuPlacement, place_gpus

# Option sets. The algorithm library validates the same names; these mirror it for the config layer
# (the config layer may not import the algorithm layer's torch code at CLI start-up).
NORM_LEVELS = ("group", "batch", "none")
LOSS_REDUCTIONS = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "token_sum",
    "sequence_mean",
)
KL_ESTIMATORS = ("k1", "k2", "k3")


def _f(default: Any = None, help: str = "", choices: tuple | None = None, factory: Any = None):
    """A dataclass field with help text (and optional choices) in its metadata."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Cluster and placement
# ---------------------------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    fileroot: str = _f("./runs", "Root of run directories: {fileroot}/{experiment_name}/{trial_name}/.")
    n_nodes: int = _f(1, "Number of nodes the run may use.")
    n_gpus_per_node: int = _f(0, "GPUs per node (0 on CPU-only machines).")
    n_cpus_per_node: int = _f(0, "CPU cores per node available to the run (0: detect on the launch host).")
    bind_host: str = _f(
        "127.0.0.1",
        "Interface that sockets and HTTP servers bind to. Loopback unless the placement spans hosts; "
        "any other value turns on message authentication with a per-run secret.",
    )


@dataclass
class InferenceAllocation:
    backend: str = _f("embedded", "Inference server: areal_lite's embedded engine or SGLang.", ("embedded", "sglang"))
    num_servers: int = _f(1, "Number of inference servers.")
    tp_size: int = _f(1, "Tensor-parallel size of each server (devices per server on GPU).")


@dataclass
class RolloutAllocation:
    num_workers: int = _f(1, "Number of rollout worker processes.")


@dataclass
class TrainerAllocation:
    nnodes: int = _f(1, "Nodes the trainer spans.")
    nproc_per_node: int = _f(1, "Trainer ranks per node (devices per node on GPU; gloo processes on CPU).")


@dataclass
class AllocationConfig:
    device: str = _f("cpu", "Device type of the run.", ("cpu", "cuda"))
    colocate: bool = _f(
        False,
        "GPU only: servers run on the trainer's GPUs (num_servers x tp_size = trainer ranks), e.g. one GPU "
        "shared by one server and the trainer. Off: servers and trainer get GPUs of their own.",
    )
    inference: InferenceAllocation = _f(factory=InferenceAllocation, help="Inference servers.")
    rollout: RolloutAllocation = _f(factory=RolloutAllocation, help="Rollout workers.")
    trainer: TrainerAllocation = _f(factory=TrainerAllocation, help="Trainer (torchrun) layout.")


# ---------------------------------------------------------------------------------------------
# Data, generation, rollout
# ---------------------------------------------------------------------------------------------


@dataclass
class DatasetConfig:
    path: str = _f("", "Local .jsonl/.parquet file or directory, a Hugging Face hub id, or 'synthetic:arith'.")
    split: str = _f("train", "Split to read (file name stem inside a directory, or the hub split).")
    batch_size: int = _f(8, "Prompts (groups) per training step.")
    shuffle: bool = _f(True, "Shuffle prompt order each epoch (seeded).")
    max_prompt_len: int = _f(256, "Longest prompt in tokens; longer records are handled by `invalid_records`.")
    prompt_template: str = _f("plain", "Prompt template: 'plain', 'chat', or a format string with {question}.")
    system_prompt: str = _f("", "System prompt for the chat template (empty: none).")
    invalid_records: str = _f(
        "skip", "Records with missing fields, empty or over-long prompts: skip (counted) or error.", ("skip", "error")
    )
    max_records: int = _f(0, "Use at most this many records (0: all).")
    synthetic: Dict[str, Any] = _f(factory=dict, help="Options of a synthetic dataset (see areal_lite.data).")


@dataclass
class GenerationConfig:
    n_samples: int = _f(4, "Answers sampled per prompt (the group size).")
    max_new_tokens: int = _f(256, "Generation budget per answer, in tokens.")
    min_new_tokens: int = _f(0, "Minimum tokens before a stop token may end an answer.")
    temperature: float = _f(1.0, "Sampling temperature (0: greedy). The trainer scores with the same temperature.")
    top_p: float = _f(1.0, "Nucleus sampling threshold.")
    top_k: int = _f(-1, "Top-k sampling (-1: off).")
    stop_token_ids: List[int] = _f(factory=list, help="Extra stop token ids (the tokenizer's eos always stops).")


@dataclass
class RolloutConfig:
    max_head_offpolicyness: int = _f(
        2, "Staleness bound η: no trained trajectory's oldest token is more than η versions behind (0 = synchronous)."
    )
    max_concurrent_rollouts: int = _f(0, "Groups generating at once across all workers (0: batch_size × (η + 1)).")
    request_timeout: float = _f(600.0, "Seconds before one generation request to a server times out.")
    request_retries: int = _f(3, "Retries of a failed generation request (another server when one exists).")
    reward_timeout: float = _f(15.0, "Seconds a reward function may run.")
    reward_workers: int = _f(1, "Processes in each worker's reward pool.")
    reward_failure_policy: str = _f(
        "zero", "A reward that raises, times out or is not a number: score 0, or drop the group.", ("zero", "drop_group")
    )
    dynamic_filter: str = _f(
        "none",
        "Filter at admission (frees capacity, keeps the batch size): drop groups whose rewards are all equal (DAPO).",
        ("none", "drop_all_equal"),
    )
    heartbeat_s: float = _f(1.0, "Worker heartbeat period in seconds.")
    worker_timeout_s: float = _f(10.0, "A worker silent this long is declared dead and its prompts are re-issued.")


# ---------------------------------------------------------------------------------------------
# Trainer: actor, optimizer, algorithm
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    lr: float = _f(1e-5, "Peak learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    beta1: float = _f(0.9, "AdamW beta1.")
    beta2: float = _f(0.999, "AdamW beta2.")
    eps: float = _f(1e-8, "AdamW epsilon.")
    lr_scheduler_type: str = _f("constant", "Learning-rate schedule after warmup.", ("constant", "cosine", "linear"))
    warmup_steps_proportion: float = _f(0.0, "Fraction of optimizer steps spent in linear warmup.")
    min_lr_ratio: float = _f(0.0, "Final learning rate of the cosine/linear schedules, as a fraction of lr.")
    gradient_clipping: float = _f(1.0, "Global gradient-norm clip (0: off).")


@dataclass
class MicroBatchSpec:
    max_tokens_per_mb: int = _f(4096, "Token budget of one micro-batch (sequences are packed up to it).")
    packing: bool = _f(True, "Pack sequences side by side in rows (almost no padding); off: one padded row per sequence.")
    max_row_tokens: int = _f(
        0,
        "Packed row length: max(this, the micro-batch's longest sequence); max_tokens_per_mb: one row per "
        "micro-batch. Attention over a row costs its length squared unless a variable-length kernel is used.",
    )


@dataclass
class AdvNormConfig:
    mean_level: str = _f("group", "Centre advantages by the mean of the group, of the batch, or not.", NORM_LEVELS)
    std_level: str = _f("group", "Scale advantages by the std of the group, of the batch, or not.", NORM_LEVELS)
    leave_one_out: bool = _f(False, "Mean of the other members of the set (RLOO).")
    unbiased: bool = _f(True, "Unbiased (n−1) standard deviation.")
    eps: float = _f(1e-6, "Added to the std before dividing.")
    weighting: str = _f(
        "sequence",
        "sequence: normalise per-sequence rewards, then broadcast to tokens; token: normalise token advantages.",
        ("sequence", "token"),
    )


@dataclass
class OverlongPenaltyConfig:
    enabled: bool = _f(False, "DAPO overlong penalty on answers near the generation budget.")
    buffer_len: int = _f(64, "Length of the soft-penalty buffer before the budget, in tokens.")
    penalty_factor: float = _f(1.0, "Penalty at the budget.")


@dataclass
class GroupFilterConfig:
    top_k_ratio: float = _f(1.0, "Keep this fraction of a batch's groups, those with the largest reward std (RAGEN).")
    soft_reweight: bool = _f(False, "Dr.GRPO+ soft reweighting: scale a group's advantages by σ_g / max σ.")


@dataclass
class EntropyShapingConfig:
    mode: str = _f("none", "GTPO/GRPO-S entropy-weighted reward shaping.", ("none", "token", "sequence"))
    beta: float = _f(0.1, "Strength of the entropy weighting.")


@dataclass
class ActorConfig:
    path: str = _f("", "Model directory (any transformers causal LM). Built first when `prepare` says so.")
    dtype: str = _f(
        "float32",
        "Master parameters and optimizer state. On GPU forward/backward compute in bf16 either way (FSDP mixed "
        "precision); float32 keeps updates of lr ~1e-6 that bfloat16 parameters would round away.",
        ("float32", "bfloat16"),
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass.")
    optimizer: OptimizerConfig = _f(factory=OptimizerConfig, help="AdamW and its schedule.")
    mb_spec: MicroBatchSpec = _f(factory=MicroBatchSpec, help="Micro-batch packing.")
    ppo_n_minibatches: int = _f(1, "Optimizer steps per training step (the batch is split into this many).")
    # PPO / decoupled PPO
    eps_clip: float = _f(0.2, "PPO clip range (lower, and upper unless eps_clip_higher is set).")
    eps_clip_higher: Optional[float] = _f(None, "Upper clip range (DAPO clip-higher); null: eps_clip.")
    c_clip: Optional[float] = _f(None, "Dual-clip constant (> 1) for negative advantages; null: off.")
    ratio_level: str = _f("token", "Importance ratio per token (PPO) or per sequence (GSPO).", ("token", "sequence"))
    use_decoupled_loss: bool = _f(
        True, "Decoupled PPO: recompute proximal log-probs and weight by π_prox/π_behav (AReaL)."
    )
    recompute_logprob: bool = _f(True, "Recompute log-probs with the current weights before the update.")
    behav_weight_cap: Optional[float] = _f(5.0, "Cap on the behaviour weight π_prox/π_behav; null: none.")
    behav_weight_mode: str = _f("mask", "Over the cap: zero the token (mask) or clamp the weight.", ("mask", "clamp"))
    # KL
    kl_ctl: float = _f(0.0, "KL coefficient (0: no reference model is loaded).")
    kl_estimator: str = _f("k1", "KL estimator.", KL_ESTIMATORS)
    kl_in_reward: bool = _f(False, "Subtract kl_ctl·KL from token rewards (PPO-RLHF) instead of adding a loss term.")
    kl_clamp: Optional[float] = _f(10.0, "Symmetric clamp of the KL estimate; null: none.")
    # Loss reduction
    loss_reduction: str = _f(
        "token_mean", "How per-token losses become one number (docs/algorithms.md).", LOSS_REDUCTIONS
    )
    loss_norm_constant: Optional[float] = _f(
        None, "Constant C of seq_mean_token_sum_norm; null: gconfig.max_new_tokens (the generation budget)."
    )
    # Rewards and advantages
    reward_bias: float = _f(0.0, "Added to the outcome reward before scaling.")
    reward_scaling: float = _f(1.0, "Multiplies the biased outcome reward.")
    reward_clip: float = _f(20.0, "Symmetric clip of the shaped reward.")
    mask_truncated_reward: bool = _f(False, "Give reward 0 to answers cut off by the generation budget.")
    overlong_penalty: OverlongPenaltyConfig = _f(factory=OverlongPenaltyConfig, help="DAPO overlong penalty.")
    adv_norm: AdvNormConfig = _f(factory=AdvNormConfig, help="Advantage normalisation.")
    group_filter: GroupFilterConfig = _f(factory=GroupFilterConfig, help="Group filtering and reweighting.")
    entropy_shaping: EntropyShapingConfig = _f(factory=EntropyShapingConfig, help="GTPO/GRPO-S entropy shaping.")
    # Weight sync
    weight_update_mode: str = _f(
        "disk", "How new weights reach the servers.", ("disk", "distributed")
    )


# ---------------------------------------------------------------------------------------------
# Servers, launcher, bookkeeping
# ---------------------------------------------------------------------------------------------


@dataclass
class ServerConfig:
    context_length: int = _f(1024, "Longest prompt + answer a server accepts, in tokens.")
    max_running_requests: int = _f(64, "Requests decoded together (continuous batching).")
    dtype: str = _f(
        "auto",
        "Serving dtype: what servers run in and what weight syncs and saved checkpoints carry (auto: bfloat16 "
        "on GPU, float32 on CPU).",
        ("auto", "float32", "bfloat16", "float16"),
    )
    startup_timeout: float = _f(300.0, "Seconds to wait for a server's /health.")
    debug_step_delay_s: float = _f(
        0.0, "Testing only: the embedded engine sleeps this long after every decode step, i.e. per generated "
        "token (a slow server, for staleness tests); 0: off."
    )


@dataclass
class SGLangConfig:
    mem_fraction_static: Optional[float] = _f(
        None, "SGLang --mem-fraction-static; null: 0.8, or 0.4 when colocated with the trainer (allocation.colocate)."
    )
    context_length: Optional[int] = _f(None, "SGLang --context-length; null: server.context_length.")
    attention_backend: Optional[str] = _f(None, "SGLang --attention-backend (null: SGLang's default).")
    chunked_prefill_size: Optional[int] = _f(None, "SGLang --chunked-prefill-size.")
    max_running_requests: Optional[int] = _f(None, "SGLang --max-running-requests; null: server value.")
    disable_radix_cache: bool = _f(True, "Stale-weight KV must not be reused across weight versions.")
    extra_args: List[str] = _f(factory=list, help="Further `sglang.launch_server` arguments, passed verbatim.")


@dataclass
class SlurmConfig:
    partition: str = _f("", "Partition (empty: the cluster default).")
    account: str = _f("", "Account (empty: none).")
    time_limit: str = _f("", "Job time limit, Slurm syntax (empty: partition default).")
    container_type: str = _f("none", "Wrap each step in a container.", ("none", "apptainer", "singularity"))
    container_image: str = _f("", "Container image when container_type is not none.")
    container_mounts: List[str] = _f(factory=list, help="Bind mounts for the container (src:dst).")
    srun_extra_args: List[str] = _f(factory=list, help="Extra srun arguments for every step.")
    sbatch_extra_args: List[str] = _f(
        factory=list, help="Extra #SBATCH options for the job, e.g. ['--qos=high', '--constraint=h100']."
    )
    poll_interval_s: float = _f(2.0, "Seconds between job-state checks.")


@dataclass
class RayConfig:
    address: str = _f("", "Ray cluster address to join (empty: start a local cluster).")
    num_cpus: int = _f(0, "CPUs of a local Ray cluster (0: the machine's cores).")


@dataclass
class LauncherConfig:
    env: Dict[str, str] = _f(factory=dict, help="Extra environment variables for every process.")
    torch_threads: int = _f(0, "Torch threads per process (0: cores divided among the processes).")
    slurm: SlurmConfig = _f(factory=SlurmConfig, help="Slurm launcher.")
    ray: RayConfig = _f(factory=RayConfig, help="Ray launcher.")


@dataclass
class SaverConfig:
    freq_steps: int = _f(0, "Save an HF checkpoint every N steps (0: off).")
    freq_secs: float = _f(0.0, "Save an HF checkpoint every N seconds (0: off).")
    save_final: bool = _f(True, "Save an HF checkpoint at the end of training.")


@dataclass
class RecoverConfig:
    mode: str = _f("disabled", "Resume from the run's recover checkpoint.", ("disabled", "auto", "resume"))
    retries: int = _f(3, "Restarts of a failed process before the launcher gives up.")
    freq_steps: int = _f(0, "Write a recover checkpoint every N steps (0: off unless freq_secs).")
    freq_secs: float = _f(0.0, "Write a recover checkpoint every N seconds (0: off).")


@dataclass
class EvaluatorConfig:
    freq_steps: int = _f(0, "Evaluate on valid_dataset every N steps (0: off).")
    n_samples: int = _f(1, "Samples per held-out prompt (pass@k with k = n_samples).")
    temperature: float = _f(0.0, "Evaluation temperature (0: greedy).")
    max_prompts: int = _f(0, "Evaluate on at most this many held-out prompts (0: all).")


@dataclass
class WandbConfig:
    mode: str = _f("disabled", "wandb mode.", ("disabled", "offline", "online"))
    project: str = _f("areal_lite", "wandb project.")
    entity: str = _f("", "wandb entity (empty: default).")
    name: str = _f("", "Run name (empty: experiment/trial).")


@dataclass
class StatsLoggerConfig:
    console: bool = _f(True, "Print a progress line per step.")
    wandb: WandbConfig = _f(factory=WandbConfig, help="Weights & Biases logging.")


@dataclass
class TinyModelConfig:
    hidden_size: int = _f(64, "Hidden size.")
    num_hidden_layers: int = _f(2, "Layers.")
    num_attention_heads: int = _f(4, "Attention heads.")
    num_key_value_heads: int = _f(2, "Key/value heads.")
    intermediate_size: int = _f(128, "MLP width.")
    max_position_embeddings: int = _f(1024, "Context length of the model.")
    seed: int = _f(0, "Initialisation seed.")


@dataclass
class SFTWarmStartConfig:
    enabled: bool = _f(False, "Warm-start the tiny model by SFT before RL.")
    dataset: str = _f("synthetic:arith", "SFT data (same forms as train_dataset.path).")
    num_examples: int = _f(2000, "Training examples.")
    epochs: int = _f(1, "Passes over the SFT data.")
    batch_size: int = _f(32, "Examples per optimizer step.")
    lr: float = _f(3e-3, "Learning rate.")
    answer_only_fraction: float = _f(
        0.0,
        "Share of warm-start examples whose target is only the final '#### <answer>' line, as in answer-only "
        "data (drawn with the seed). The model then often answers without working; RL can unlearn that.",
    )


@dataclass
class PrepareConfig:
    model: str = _f("none", "Build the model at actor.path when it is missing: a tiny Qwen2 model.", ("none", "tiny"))
    tiny: TinyModelConfig = _f(factory=TinyModelConfig, help="Shape of the tiny model.")
    sft: SFTWarmStartConfig = _f(factory=SFTWarmStartConfig, help="SFT warm start of the tiny model.")


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


@dataclass
class ExperimentConfig:
    experiment_name: str = _f("areal_lite", "Experiment name (a directory under cluster.fileroot).")
    trial_name: str = _f("trial0", "Trial name (a directory under the experiment).")
    seed: int = _f(1, "Seed for data order, sampling and initialisation.")
    total_train_epochs: int = _f(1, "Passes over the training prompts.")
    total_train_steps: Optional[int] = _f(None, "Stop after this many steps (null: run the epochs).")
    tokenizer_path: str = _f("", "Tokenizer directory (empty: actor.path).")
    cluster: ClusterConfig = _f(factory=ClusterConfig, help="Machines and run directory.")
    allocation: AllocationConfig = _f(factory=AllocationConfig, help="Placement of servers, workers and trainer.")
    train_dataset: DatasetConfig = _f(factory=DatasetConfig, help="Training prompts.")
    valid_dataset: DatasetConfig = _f(
        factory=lambda: DatasetConfig(split="test", shuffle=False), help="Held-out prompts for evaluation."
    )
    gconfig: GenerationConfig = _f(factory=GenerationConfig, help="Sampling.")
    rollout: RolloutConfig = _f(factory=RolloutConfig, help="Rollout workers and staleness control.")
    actor: ActorConfig = _f(factory=ActorConfig, help="Policy model, optimizer and PPO loss.")
    server: ServerConfig = _f(factory=ServerConfig, help="Inference servers (embedded engine).")
    sglang: SGLangConfig = _f(factory=SGLangConfig, help="SGLang server arguments (backend sglang).")
    launcher: LauncherConfig = _f(factory=LauncherConfig, help="Launchers.")
    saver: SaverConfig = _f(factory=SaverConfig, help="HF checkpoints for users.")
    recover: RecoverConfig = _f(factory=RecoverConfig, help="Recover checkpoints and restarts.")
    evaluator: EvaluatorConfig = _f(factory=EvaluatorConfig, help="Periodic held-out evaluation.")
    stats_logger: StatsLoggerConfig = _f(factory=StatsLoggerConfig, help="Metrics sinks.")
    prepare: PrepareConfig = _f(factory=PrepareConfig, help="Model preparation before the run (tiny models).")


# ---------------------------------------------------------------------------------------------
# Derived values (one home per value)
# ---------------------------------------------------------------------------------------------


def resolved_tokenizer_path(cfg: ExperimentConfig) -> str:
    return cfg.tokenizer_path or cfg.actor.path


def resolved_loss_norm_constant(cfg: ExperimentConfig) -> float:
    """Dr.GRPO's constant: the configured one, else the generation budget (as in the paper)."""
    c = cfg.actor.loss_norm_constant
    return float(c) if c is not None else float(cfg.gconfig.max_new_tokens)


def resolved_max_concurrent_rollouts(cfg: ExperimentConfig) -> int:
    if cfg.rollout.max_concurrent_rollouts > 0:
        return cfg.rollout.max_concurrent_rollouts
    return cfg.train_dataset.batch_size * (cfg.rollout.max_head_offpolicyness + 1)


def resolved_serving_dtype(cfg: ExperimentConfig) -> str:
    """The dtype servers run in and weights are sent and saved in: `server.dtype`, where `auto` is
    bfloat16 on GPU and float32 on CPU (where bf16 is emulated on most processors)."""
    if cfg.server.dtype != "auto":
        return cfg.server.dtype
    return "bfloat16" if cfg.allocation.device == "cuda" else "float32"


def resolved_mem_fraction(cfg: ExperimentConfig) -> float:
    """SGLang's share of its GPUs' memory: the configured one, else 0.8 (own GPUs) or 0.4 (colocated)."""
    if cfg.sglang.mem_fraction_static is not None:
        return float(cfg.sglang.mem_fraction_static)
    return 0.4 if cfg.allocation.colocate else 0.8


def gpu_placement(cfg: ExperimentConfig) -> GpuPlacement:
    """The GPUs of every server and trainer node (`areal_lite.config.placement`); PlacementError if none fits."""
    al, t = cfg.allocation, cfg.allocation.trainer
    return place_gpus(n_nodes=cfg.cluster.n_nodes, gpus_per_node=cfg.cluster.n_gpus_per_node,
                      num_servers=al.inference.num_servers,
                      tp_size=al.inference.tp_size if al.inference.backend == "sglang" else 1,
                      trainer_nnodes=t.nnodes, trainer_nproc=t.nproc_per_node, colocate=al.colocate)


def resolved_trainer_world_size(cfg: ExperimentConfig) -> int:
    t = cfg.allocation.trainer
    return t.nnodes * t.nproc_per_node


def run_dir(cfg: ExperimentConfig) -> str:
    import os

    return os.path.join(cfg.cluster.fileroot, cfg.experiment_name, cfg.trial_name)


def iter_fields(cls: type, prefix: str = ""):
    """Yield (dotted_key, dataclass Field, owning class) for every leaf and group of a schema class."""
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        yield key, f, cls
        sub = _dataclass_type(f)
        if sub is not None:
            yield from iter_fields(sub, key + ".")


def _dataclass_type(f) -> type | None:
    """The dataclass type of a group field (resolving string annotations of this module)."""
    t = f.type
    if isinstance(t, str):
        t = globals().get(t)
    return t if isinstance(t, type) and is_dataclass(t) else None
