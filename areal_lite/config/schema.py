"""The typed configuration schema: one dataclass per section, help text and rules on every field.

Names follow AReaL where AReaL has one (`actor.adv_norm.mean_level`, `rollout.max_head_offpolicyness`,
`gconfig.n_samples`, ...). Every value has one home: quantities derived from others (the sampling
temperature the trainer uses, the default Dr.GRPO length constant, the tokenizer path) are computed
by the `resolved_*` helpers below, not duplicated in YAML.

Each field's rules (choices, range, finiteness, a one-field check) live in its metadata
(`areal_lite.config.fields.setting`) and are checked generically; rules that involve several keys
are in `areal_lite.config.validate`. The `actor` section is in `areal_lite.config.actor`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from areal_lite.config.actor import (  # noqa: F401  (re-exported: the schema's public names)
    ActorConfig,
    AdvNormConfig,
    CispoConfig,
    ClipCovConfig,
    EntropyShapingConfig,
    GmpoConfig,
    GroupFilterConfig,
    KlCovConfig,
    MicroBatchSpec,
    OptimizerConfig,
    OverlongPenaltyConfig,
    RolloutFilterConfig,
    SapoConfig,
    SeqISConfig,
)
from areal_lite.config.fields import group_class, iter_fields, setting  # noqa: F401
from areal_lite.config.placement import GpuPlacement, place_gpus

MAX_SEED = 2**32 - 1  # numpy and CUDA generators take 32-bit seeds
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def check_plain_name(value: str) -> str | None:
    """Why `value` cannot be one directory name (None when it can)."""
    if not value:
        return "must not be empty"
    if "/" in value or value in (".", ".."):
        return f"{value!r} must be a plain name (no '/')"
    return None


def check_host(value: str) -> str | None:
    """Why `value` is neither an IP address nor a host name (None when it is one)."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if len(value) > 253 or not _HOSTNAME.match(value) or re.fullmatch(r"[\d.]+", value):
        return f"{value!r} is neither an IP address nor a host name (e.g. 127.0.0.1, 0.0.0.0, node01)"
    return None


def _check_extra_datasets(sets: dict) -> str | None:
    """Why evaluator.extra_datasets is unusable (None when it is fine): plain names, non-empty paths."""
    for name, path in sets.items():
        why = check_plain_name(str(name))
        if why:
            return f"set name {why}"
        if not isinstance(path, str) or not path:
            return f"set {name!r}: the path must be a non-empty string"
    return None


# ---------------------------------------------------------------------------------------------
# Cluster and placement
# ---------------------------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    fileroot: str = setting("./runs", "Root of run directories: {fileroot}/{experiment_name}/{trial_name}/.")
    n_nodes: int = setting(1, "Number of nodes the run may use.", ge=1)
    n_gpus_per_node: int = setting(0, "GPUs per node (0 on CPU-only machines).", ge=0)
    n_cpus_per_node: int = setting(
        0, "CPU cores per node available to the run (0: detect on the launch host).", ge=0
    )
    bind_host: str = setting(
        "127.0.0.1",
        "Interface that sockets and HTTP servers bind to. Loopback unless the placement spans hosts; "
        "any other value turns on message authentication with a per-run secret.",
        check=check_host,
    )


@dataclass
class InferenceAllocation:
    backend: str = setting("embedded", "Inference server: areal_lite's embedded engine or SGLang.", ("embedded", "sglang"))
    num_servers: int = setting(1, "Number of inference servers.", ge=1)
    tp_size: int = setting(1, "Tensor-parallel size of each server (devices per server on GPU).", ge=1)


@dataclass
class RolloutAllocation:
    num_workers: int = setting(1, "Number of rollout worker processes.", ge=1)


@dataclass
class TrainerAllocation:
    nnodes: int = setting(1, "Nodes the trainer spans.", ge=1)
    nproc_per_node: int = setting(1, "Trainer ranks per node (devices per node on GPU; gloo processes on CPU).", ge=1)


@dataclass
class AllocationConfig:
    device: str = setting("cpu", "Device type of the run.", ("cpu", "cuda"))
    colocate: bool = setting(
        False,
        "GPU only: servers run on the trainer's GPUs (num_servers x tp_size = trainer ranks), e.g. one GPU "
        "shared by one server and the trainer. Off: servers and trainer get GPUs of their own.",
    )
    inference: InferenceAllocation = setting(factory=InferenceAllocation, help="Inference servers.")
    rollout: RolloutAllocation = setting(factory=RolloutAllocation, help="Rollout workers.")
    trainer: TrainerAllocation = setting(factory=TrainerAllocation, help="Trainer (torchrun) layout.")


# ---------------------------------------------------------------------------------------------
# Data, generation, rollout
# ---------------------------------------------------------------------------------------------


@dataclass
class DatasetConfig:
    path: str = setting("", "Local .jsonl/.parquet file or directory, a Hugging Face hub id, or 'synthetic:arith'.")
    split: str = setting("train", "Split to read (file name stem inside a directory, or the hub split).")
    batch_size: int = setting(8, "Prompts (groups) per training step.", ge=1)
    shuffle: bool = setting(True, "Shuffle prompt order each epoch (seeded).")
    max_prompt_len: int = setting(
        256, "Longest prompt in tokens; longer records are handled by `invalid_records`.", ge=1
    )
    prompt_template: str = setting("plain", "Prompt template: 'plain', 'chat', or a format string with {question}.")
    system_prompt: str = setting("", "System prompt for the chat template (empty: none).")
    invalid_records: str = setting(
        "skip", "Records with missing fields, empty or over-long prompts: skip (counted) or error.", ("skip", "error")
    )
    max_records: int = setting(0, "Use at most this many records (0: all).", ge=0)
    synthetic: Dict[str, Any] = setting(factory=dict, help="Options of a synthetic dataset (see areal_lite.data).")


@dataclass
class GenerationConfig:
    n_samples: int = setting(4, "Answers sampled per prompt (the group size).", ge=1)
    max_new_tokens: int = setting(256, "Generation budget per answer, in tokens.", ge=1)
    min_new_tokens: int = setting(0, "Minimum tokens before a stop token may end an answer.", ge=0)
    temperature: float = setting(
        1.0, "Sampling temperature (0: greedy). The trainer scores with the same temperature.", ge=0
    )
    top_p: float = setting(1.0, "Nucleus sampling threshold.", gt=0, le=1)
    top_k: int = setting(-1, "Top-k sampling (-1: off).", ge=1, allow=(-1,))
    stop_token_ids: List[int] = setting(
        factory=list, help="Extra stop token ids (the tokenizer's eos always stops); each inside the vocabulary.", ge=0
    )


@dataclass
class RolloutConfig:
    max_head_offpolicyness: int = setting(
        2, "Staleness bound η: no trained trajectory's oldest token is more than η versions behind (0 = synchronous).",
        ge=0,
    )
    max_concurrent_rollouts: int = setting(
        0, "Groups generating at once across all workers (0: batch_size × (η + 1)).", ge=0
    )
    request_timeout: float = setting(600.0, "Seconds before one generation request to a server times out.", gt=0)
    request_retries: int = setting(
        3, "Retries of a failed generation request (another server when one exists).", ge=0
    )
    reward_timeout: float = setting(15.0, "Seconds a reward function may run.", gt=0)
    reward_workers: int = setting(1, "Processes in each worker's reward pool.", ge=1)
    reward_failure_policy: str = setting(
        "zero", "A reward that raises, times out or is not a number: score 0, or drop the group.", ("zero", "drop_group")
    )
    dynamic_filter: str = setting(
        "none",
        "Filter at admission (frees capacity, keeps the batch size): drop groups whose rewards are all equal (DAPO).",
        ("none", "drop_all_equal"),
    )
    heartbeat_s: float = setting(1.0, "Worker heartbeat period in seconds.", gt=0)
    worker_timeout_s: float = setting(
        10.0, "A worker silent this long is declared dead and its prompts are re-issued.", gt=0
    )


# ---------------------------------------------------------------------------------------------
# Trainer: actor, optimizer, algorithm
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Servers, launcher, bookkeeping
# ---------------------------------------------------------------------------------------------


@dataclass
class ServerConfig:
    context_length: int = setting(1024, "Longest prompt + answer a server accepts, in tokens.", ge=1)
    max_running_requests: int = setting(64, "Requests decoded together (continuous batching).", ge=1)
    dtype: str = setting(
        "auto",
        "Serving dtype: what servers run in and what weight syncs and saved checkpoints carry (auto: bfloat16 "
        "on GPU, float32 on CPU).",
        ("auto", "float32", "bfloat16", "float16"),
    )
    startup_timeout: float = setting(300.0, "Seconds to wait for a server's /health.", gt=0)
    debug_step_delay_s: float = setting(
        0.0, "Testing only: the embedded engine sleeps this long after every decode step, i.e. per generated "
        "token (a slow server, for staleness tests); 0: off.",
        ge=0,
    )


@dataclass
class SGLangConfig:
    mem_fraction_static: Optional[float] = setting(
        None,
        "SGLang --mem-fraction-static; null: 0.8, or 0.4 when colocated with the trainer (allocation.colocate).",
        gt=0,
        lt=1,
    )
    context_length: Optional[int] = setting(None, "SGLang --context-length; null: server.context_length.", ge=1)
    attention_backend: Optional[str] = setting(None, "SGLang --attention-backend (null: SGLang's default).")
    chunked_prefill_size: Optional[int] = setting(
        None, "SGLang --chunked-prefill-size (-1: no chunking).", ge=1, allow=(-1,)
    )
    max_running_requests: Optional[int] = setting(None, "SGLang --max-running-requests; null: server value.", ge=1)
    disable_radix_cache: bool = setting(True, "Stale-weight KV must not be reused across weight versions.")
    extra_args: List[str] = setting(factory=list, help="Further `sglang.launch_server` arguments, passed verbatim.")


@dataclass
class SlurmConfig:
    partition: str = setting("", "Partition (empty: the cluster default).")
    account: str = setting("", "Account (empty: none).")
    time_limit: str = setting("", "Job time limit, Slurm syntax (empty: partition default).")
    container_type: str = setting("none", "Wrap each step in a container.", ("none", "apptainer", "singularity"))
    container_image: str = setting("", "Container image when container_type is not none.")
    container_mounts: List[str] = setting(factory=list, help="Bind mounts for the container (src:dst).")
    srun_extra_args: List[str] = setting(factory=list, help="Extra srun arguments for every step.")
    sbatch_extra_args: List[str] = setting(
        factory=list, help="Extra #SBATCH options for the job, e.g. ['--qos=high', '--constraint=h100']."
    )
    poll_interval_s: float = setting(2.0, "Seconds between job-state checks.", gt=0)


@dataclass
class RayConfig:
    address: str = setting("", "Ray cluster address to join (empty: start a local cluster).")
    num_cpus: int = setting(0, "CPUs of a local Ray cluster (0: the machine's cores).", ge=0)


@dataclass
class LauncherConfig:
    env: Dict[str, str] = setting(factory=dict, help="Extra environment variables for every process.")
    torch_threads: int = setting(0, "Torch threads per process (0: cores divided among the processes).", ge=0)
    elastic_threads: bool = setting(
        True, "CPU, one trainer rank, torch_threads 0: the trainer takes every core of its node while no rollout "
        "is in flight and its share while one is (decided before each micro-batch).")
    slurm: SlurmConfig = setting(factory=SlurmConfig, help="Slurm launcher.")
    ray: RayConfig = setting(factory=RayConfig, help="Ray launcher.")


@dataclass
class SaverConfig:
    freq_steps: int = setting(0, "Save an HF checkpoint every N steps (0: off).", ge=0)
    freq_secs: float = setting(0.0, "Save an HF checkpoint every N seconds (0: off).", ge=0)
    save_final: bool = setting(True, "Save an HF checkpoint at the end of training.")


@dataclass
class RecoverConfig:
    mode: str = setting("disabled", "Resume from the run's recover checkpoint.", ("disabled", "auto", "resume"))
    retries: int = setting(3, "Restarts of a failed process before the launcher gives up.", ge=0)
    freq_steps: int = setting(0, "Write a recover checkpoint every N steps (0: off unless freq_secs).", ge=0)
    freq_secs: float = setting(0.0, "Write a recover checkpoint every N seconds (0: off).", ge=0)


@dataclass
class EvaluatorConfig:
    freq_steps: int = setting(0, "Evaluate on valid_dataset every N steps (0: off).", ge=0)
    n_samples: int = setting(1, "Samples per held-out prompt (pass@k with k = n_samples).", ge=1)
    temperature: float = setting(0.0, "Evaluation temperature (0: greedy).", ge=0)
    max_prompts: int = setting(0, "Evaluate on at most this many held-out prompts (0: all).", ge=0)
    extra_datasets: Dict[str, str] = setting(
        factory=dict, check=lambda sets: _check_extra_datasets(sets),
        help="More held-out sets, name: path (read with valid_dataset's other options), each evaluated with "
        "valid_dataset and logged as eval/<name>/accuracy, ...",
    )


@dataclass
class WandbConfig:
    mode: str = setting("disabled", "wandb mode.", ("disabled", "offline", "online"))
    project: str = setting("areal_lite", "wandb project.")
    entity: str = setting("", "wandb entity (empty: default).")
    name: str = setting("", "Run name (empty: experiment/trial).")


@dataclass
class StatsLoggerConfig:
    console: bool = setting(True, "Print a progress line per step.")
    wandb: WandbConfig = setting(factory=WandbConfig, help="Weights & Biases logging.")
    tensorboard: bool = setting(False, "Write TensorBoard event files to {run dir}/tensorboard (needs `tensorboard`).")


@dataclass
class TinyModelConfig:
    hidden_size: int = setting(64, "Hidden size.", ge=1)
    num_hidden_layers: int = setting(2, "Layers.", ge=1)
    num_attention_heads: int = setting(4, "Attention heads.", ge=1)
    num_key_value_heads: int = setting(2, "Key/value heads.", ge=1)
    intermediate_size: int = setting(128, "MLP width.", ge=1)
    max_position_embeddings: int = setting(1024, "Context length of the model.", ge=1)
    seed: int = setting(0, "Initialisation seed.", ge=0, le=MAX_SEED)


@dataclass
class SFTWarmStartConfig:
    enabled: bool = setting(False, "Warm-start the tiny model by SFT before RL.")
    dataset: str = setting("synthetic:arith", "SFT data (same forms as train_dataset.path).")
    num_examples: int = setting(2000, "Training examples.", ge=1)
    epochs: int = setting(1, "Passes over the SFT data.", ge=1)
    batch_size: int = setting(32, "Examples per optimizer step.", ge=1)
    lr: float = setting(3e-3, "Learning rate.", ge=0)
    answer_only_fraction: float = setting(
        0.0,
        "Share of warm-start examples whose target is only the final '#### <answer>' line, as in answer-only "
        "data (drawn with prepare.sft.seed). The model then often answers without working; RL can unlearn that.",
        ge=0,
        le=1,
    )
    seed: int = setting(
        1,
        "Seed of the warm start (example order, answer-only draw, initial RNG state). Not the run's seed: every "
        "run of a recipe starts from the same warm model, and `seed` varies the RL run.",
        ge=0,
        le=MAX_SEED,
    )


@dataclass
class PrepareConfig:
    model: str = setting("none", "Build the model at actor.path when it is missing: a tiny Qwen2 model.", ("none", "tiny"))
    tiny: TinyModelConfig = setting(factory=TinyModelConfig, help="Shape of the tiny model.")
    sft: SFTWarmStartConfig = setting(factory=SFTWarmStartConfig, help="SFT warm start of the tiny model.")


@dataclass
class EnvConfig:
    name: str = setting(
        "", "Text environment of a multi-turn agent task (areal_lite.envs); empty: the single-turn math task."
    )
    options: Dict[str, Any] = setting(factory=dict, help="Options of the environment (its constructor's arguments).")
    max_turns: int = setting(5, "Replies per episode.", ge=1)
    max_total_tokens: Optional[int] = setting(
        None, "Tokens per episode (prompt, replies, observations); null: server.context_length.", ge=1
    )
    format_penalty: float = setting(-0.1, "Added to the episode's reward for each reply in the wrong format.")
    system_prompt: str = setting("", "System message of every episode (empty: none).")
    template_kwargs: Dict[str, Any] = setting(
        factory=dict, help="Extra keyword arguments of the tokenizer's chat template (e.g. enable_thinking)."
    )
    num_seeds: int = setting(1000, "Training episodes are seeded seed_start, ..., seed_start + num_seeds - 1.", ge=1)
    seed_start: int = setting(0, "First training seed.", ge=0, le=MAX_SEED)
    eval_num_seeds: int = setting(100, "Held-out episodes (evaluation) are seeded eval_seed_start, ....", ge=1)
    eval_seed_start: int = setting(1_000_000, "First held-out seed (never a training seed).", ge=0, le=MAX_SEED)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


@dataclass
class ExperimentConfig:
    experiment_name: str = setting(
        "areal_lite", "Experiment name (a directory under cluster.fileroot).", check=check_plain_name
    )
    trial_name: str = setting("trial0", "Trial name (a directory under the experiment).", check=check_plain_name)
    seed: int = setting(1, "Seed for data order, sampling and initialisation.", ge=0, le=MAX_SEED)
    total_train_epochs: int = setting(1, "Passes over the training prompts.", ge=1)
    total_train_steps: Optional[int] = setting(None, "Stop after this many steps (null: run the epochs).", ge=1)
    tokenizer_path: str = setting("", "Tokenizer directory (empty: actor.path).")
    cluster: ClusterConfig = setting(factory=ClusterConfig, help="Machines and run directory.")
    allocation: AllocationConfig = setting(factory=AllocationConfig, help="Placement of servers, workers and trainer.")
    train_dataset: DatasetConfig = setting(factory=DatasetConfig, help="Training prompts.")
    valid_dataset: DatasetConfig = setting(
        factory=lambda: DatasetConfig(split="test", shuffle=False), help="Held-out prompts for evaluation."
    )
    gconfig: GenerationConfig = setting(factory=GenerationConfig, help="Sampling.")
    rollout: RolloutConfig = setting(factory=RolloutConfig, help="Rollout workers and staleness control.")
    actor: ActorConfig = setting(factory=ActorConfig, help="Policy model, optimizer and PPO loss.")
    server: ServerConfig = setting(factory=ServerConfig, help="Inference servers (embedded engine).")
    sglang: SGLangConfig = setting(factory=SGLangConfig, help="SGLang server arguments (backend sglang).")
    launcher: LauncherConfig = setting(factory=LauncherConfig, help="Launchers.")
    saver: SaverConfig = setting(factory=SaverConfig, help="HF checkpoints for users.")
    recover: RecoverConfig = setting(factory=RecoverConfig, help="Recover checkpoints and restarts.")
    evaluator: EvaluatorConfig = setting(factory=EvaluatorConfig, help="Periodic held-out evaluation.")
    stats_logger: StatsLoggerConfig = setting(factory=StatsLoggerConfig, help="Metrics sinks.")
    prepare: PrepareConfig = setting(factory=PrepareConfig, help="Model preparation before the run (tiny models).")
    env: EnvConfig = setting(factory=EnvConfig, help="Multi-turn agent environment (empty name: none).")


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
    return os.path.join(cfg.cluster.fileroot, cfg.experiment_name, cfg.trial_name)


def resolved_env_max_total_tokens(cfg: ExperimentConfig) -> int:
    """Token budget of one multi-turn episode: `env.max_total_tokens`, else the server's context length."""
    return cfg.env.max_total_tokens or cfg.server.context_length
