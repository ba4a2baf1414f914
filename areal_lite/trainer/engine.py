"""The FSDP2 training engine: any transformers causal LM, sharded with `fully_shard`.

gloo on CPU, NCCL on GPU, AdamW with warmup and a constant, cosine or linear schedule, gradient
clipping, optional gradient checkpointing. The engine knows nothing about RL: `train_minibatch` takes
a loss callable, `forward_logp` returns per-token log-probs.

Dtypes: the master parameters and the optimizer state are `spec.dtype` (float32 by default); on GPU
forward and backward compute in bf16 (FSDP mixed precision, gradients reduced in fp32). Weights leave
the engine (`full_state_dict`, weight sync, HF checkpoints) in `spec.export_dtype`, the serving dtype.

All ranks must run the same number of forward/backward passes (FSDP all-gathers inside forward are
collectives); a rank with fewer micro-batches than another runs empty ones, whose loss is zero.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from areal_lite.algo import aggregate_stats, logprobs_and_entropy
from areal_lite.trainer.attention import VARLEN, resolve_attn_impl
from areal_lite.trainer.batch import (
    MicroBatch,
    SeqBatch,
    build_microbatch,
    build_shared_row,
    chunk_microbatches,
    pack_microbatches,
    pack_shared_microbatches,
)
from areal_lite.utils.distributed import TrainerDist
from areal_lite.utils.hf import save_hf_dir, torch_dtype

PROBE_TOKENS = 64  # real tokens the finiteness check runs through the updated model

logger = logging.getLogger("areal_lite.trainer.engine")

class TrainingDiverged(RuntimeError):
    """An update left the parameters, or the model's outputs, non-finite; the weights never left the
    trainer. Reported on one line and not retried (a restart would diverge the same way)."""

    exit_code = 2


LossFn = Callable[[torch.Tensor, torch.Tensor | None, MicroBatch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class EngineSpec:
    """What the engine needs from the actor config (one section, not the whole experiment)."""

    path: str
    dtype: str = "float32"
    export_dtype: str = ""  # dtype of weights sent to servers and saved for users ("": dtype)
    gradient_checkpointing: bool = False
    lr: float = 1e-5
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    lr_scheduler_type: str = "constant"
    warmup_steps_proportion: float = 0.0
    min_lr_ratio: float = 0.0
    gradient_clipping: float = 1.0
    max_tokens_per_mb: int = 4096
    packing: bool = True
    max_row_tokens: int = 0
    share_prompts: bool = True
    attn_impl: str = "auto"
    temperature: float = 1.0
    logp_chunk_size: int = 1024

    @classmethod
    def from_actor(cls, actor, temperature: float, export_dtype: str = "") -> "EngineSpec":
        o = actor.optimizer
        return cls(
            path=actor.path,
            dtype=actor.dtype,
            export_dtype=export_dtype,
            gradient_checkpointing=actor.gradient_checkpointing,
            lr=o.lr,
            weight_decay=o.weight_decay,
            beta1=o.beta1,
            beta2=o.beta2,
            eps=o.eps,
            lr_scheduler_type=o.lr_scheduler_type,
            warmup_steps_proportion=o.warmup_steps_proportion,
            min_lr_ratio=o.min_lr_ratio,
            gradient_clipping=o.gradient_clipping,
            max_tokens_per_mb=actor.mb_spec.max_tokens_per_mb,
            packing=actor.mb_spec.packing,
            max_row_tokens=actor.mb_spec.max_row_tokens,
            share_prompts=actor.mb_spec.share_prompts,
            attn_impl=actor.attn_impl,
            temperature=temperature,
        )


def lr_lambda(kind: str, total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step `s` (warmup, then the schedule)."""

    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if kind == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return min_ratio + (1 - min_ratio) * (1 - progress)  # linear

    return f


class FSDPEngine:
    def __init__(self, spec: EngineSpec, dist_ctx: TrainerDist, *, total_optimizer_steps: int):
        self.spec = spec
        self.dist = dist_ctx
        self.device = dist_ctx.device
        self.total_optimizer_steps = max(1, total_optimizer_steps)
        # The transformers attention implementation the model is loaded with (`actor.attn_impl`).
        self.attn_implementation = resolve_attn_impl(spec.attn_impl, self.device)
        self.rank = dist_ctx.rank
        self.world_size = dist_ctx.world_size
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.optimizer_steps = 0
        self.timings = {"fwd_bwd": 0.0, "optimizer": 0.0}  # cumulative seconds on this rank
        # Called before every micro-batch (run/threads.py sizes the CPU threads there).
        self.before_microbatch: Callable[[], None] | None = None

    # ------------------------------------------------------------------ set-up

    def initialize(self, *, with_optimizer: bool = True) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.spec.path, dtype=torch_dtype(self.spec.dtype),
                                                     attn_implementation=self.attn_implementation)
        model.config.use_cache = False
        if self.spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        kwargs: dict = {"mesh": self.dist.mesh}
        if self.device.type == "cuda":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        # NOTE: the model stays on CPU here: `fully_shard` moves one block at a time to the device and
        # keeps only this rank's shard there, so no rank ever holds the whole model on its GPU.
        for layer in _decoder_layers(model):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        self.model = model
        if with_optimizer:
            s = self.spec
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay
            )
            warmup = int(s.warmup_steps_proportion * self.total_optimizer_steps)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lr_lambda(s.lr_scheduler_type, self.total_optimizer_steps, warmup, s.min_lr_ratio)
            )

    # ------------------------------------------------------------------ layout

    @property
    def varlen(self) -> bool:
        return self.attn_implementation == VARLEN

    @property
    def shares_prompts(self) -> bool:
        """Micro-batches are single rows in which a group's sequences carry their prompt once (varlen only)."""
        return self.varlen and self.spec.packing and self.spec.share_prompts

    @property
    def row_tokens(self) -> int:
        """Packed row length: with varlen attention a row costs no more than its sequences, so a
        micro-batch is one row (no padding); with sdpa, `max_row_tokens`."""
        return self.spec.max_tokens_per_mb if self.varlen else self.spec.max_row_tokens

    def microbatches(self, batch: SeqBatch, shards: Sequence[Sequence[int]]) -> list[list[list[int]]]:
        """Micro-batch index lists for every rank (identical on all ranks), padded to equal counts."""
        lengths = [int(x) for x in batch.seqlens]
        layout = []
        for shard in shards:
            if self.shares_prompts:
                layout.append(pack_shared_microbatches(batch, shard, self.spec.max_tokens_per_mb))
            elif self.spec.packing:
                layout.append(pack_microbatches(lengths, shard, self.spec.max_tokens_per_mb))
            else:
                layout.append(chunk_microbatches(lengths, shard, self.spec.max_tokens_per_mb))
        n = max(len(mbs) for mbs in layout)
        return [mbs + [[] for _ in range(n - len(mbs))] for mbs in layout]

    # ------------------------------------------------------------------ passes

    def _forward(self, mb: MicroBatch, *, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the micro-batch's sequences as `[b, T_mb]` rows.

        Row r is sequence `mb.seq_index[r]`; column t holds log p(x_t | x_<t) under logits /
        temperature, 0 at t = 0 (no prediction; prompt tokens are never trained) and past the end.
        """
        assert self.model is not None
        kwargs = {} if mb.pred is None else {"logits_to_keep": mb.pred}  # logits at each token's predictor
        out = self.model(input_ids=mb.input_ids, position_ids=mb.position_ids, attention_mask=mb.attention_mask,
                         use_cache=False, **kwargs)
        if mb.pred is None:
            logits, labels = out.logits[:, :-1], mb.input_ids[:, 1:]  # [R, L-1]: position k predicts k + 1
        else:
            logits, labels = out.logits, mb.input_ids  # [1, L]: row k predicts token k
        lp, ent = logprobs_and_entropy(logits, labels, temperature=self.spec.temperature,
                                       chunk_size=self.spec.logp_chunk_size, with_entropy=with_entropy)
        return self._rows(mb, lp), (self._rows(mb, ent) if ent is not None else None)

    @staticmethod
    def _rows(mb: MicroBatch, values: torch.Tensor) -> torch.Tensor:
        """Model-layout values → `[b, T_mb]` sequence rows, 0 at each sequence's start: `[R, L-1]` shifted
        (position k's value is for token k + 1), or `[1, L]` per token of a row with `pred`."""
        if mb.pred is None:
            values = torch.cat([values.new_zeros(values.shape[0], 1), values], dim=1)
        flat = values.reshape(-1)[mb.flat].masked_fill(mb.col == 0, 0.0)  # [n]
        return flat.new_zeros(len(mb.seq_index) or 1, mb.max_len).index_put((mb.row, mb.col), flat)

    def _microbatch(self, batch: SeqBatch, seq_index: Sequence[int]) -> MicroBatch:
        if self.before_microbatch is not None:
            self.before_microbatch()
        if self.shares_prompts:
            return build_shared_row(batch, seq_index, device=self.device)
        return build_microbatch(batch, seq_index, packed=self.spec.packing, device=self.device,
                                row_tokens=self.row_tokens)

    def _dummy(self) -> MicroBatch:
        """A one-token micro-batch that keeps this rank in step with ranks that have more work."""
        empty = SeqBatch(
            input_ids=np.zeros(2, np.int64),
            loss_mask=np.zeros(2, bool),
            behav_logp=np.zeros(2, np.float32),
            versions=np.zeros(2, np.int32),
            seqlens=np.asarray([2]),
            prompt_lens=np.asarray([2]),
            rewards=np.zeros(1),
            group_ids=np.zeros(1, np.int64),
            truncated=np.zeros(1, bool),
            prompt_ids=[""],
        )
        return replace(build_microbatch(empty, [0], packed=True, device=self.device), dummy=True)

    @torch.no_grad()
    def forward_logp(self, batch: SeqBatch, my_mbs: Sequence[Sequence[int]], *, with_entropy: bool = False):
        """Log-probs of this rank's sequences as `[B, T]` rows of the whole batch (0 in other rows).

        With `with_entropy`, returns (log-probs, entropies of the next-token distribution), both
        `[B, T]` float32 on CPU, ready to be summed over ranks.
        """
        assert self.model is not None
        self.model.eval()
        shape = (batch.num_seqs, batch.max_len)
        out = torch.zeros(shape, dtype=torch.float32)
        ent_out = torch.zeros(shape, dtype=torch.float32) if with_entropy else None
        for seq_index in my_mbs:
            mb = self._microbatch(batch, seq_index) if seq_index else self._dummy()
            lp, ent = self._forward(mb, with_entropy=with_entropy and bool(seq_index))
            if not seq_index:
                continue
            out[seq_index, : mb.max_len] = lp.float().cpu()
            if ent_out is not None:
                ent_out[seq_index, : mb.max_len] = ent.float().cpu()
        return (out, ent_out) if with_entropy else out

    def train_minibatch(self, batch: SeqBatch, my_mbs: Sequence[Sequence[int]], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches of a minibatch.

        `loss_fn(logp, entropy, mb)` gets the micro-batch's `[b, T_mb]` rows and returns its share of
        the minibatch loss (already divided by the minibatch's global token/sequence counts) and a
        stats dict; the shares of all micro-batches and ranks add up to the minibatch loss. FSDP
        averages gradients over ranks, so each rank's loss is multiplied by the world size to make the
        update the gradient of that sum.
        """
        assert self.model is not None and self.optimizer is not None and self.scheduler is not None
        self.model.train()
        mb_stats: list[dict] = []
        n = len(my_mbs)
        t0 = time.perf_counter()
        probe = None  # real tokens for the finiteness check after the step
        for k, seq_index in enumerate(my_mbs):
            self.model.set_requires_gradient_sync(k == n - 1)
            mb = self._microbatch(batch, seq_index) if seq_index else self._dummy()
            if probe is None and not mb.dummy:
                probe = mb
            lp, ent = self._forward(mb, with_entropy=True)
            # A dummy's loss trains nothing but has the same statistics keys (zeros) on every rank.
            loss, stats = loss_fn(lp, ent, mb)
            mb_stats.append({**stats, "perf/real_tokens": 0.0 if mb.dummy else mb.num_real_tokens,
                             "perf/model_tokens": 0.0 if mb.dummy else mb.num_model_tokens,
                             "perf/padding_tokens": 0.0 if mb.dummy else mb.num_padding_tokens})
            (loss * self.world_size).backward()
        t1 = time.perf_counter()
        stats = aggregate_stats(mb_stats)
        grad_norm = self._clip_and_norm()
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self._check_finite(grad_norm, probe)
        else:
            logger.warning("non-finite gradient norm %s: optimizer step skipped", grad_norm)
            stats["train/skipped_steps"] = stats.get("train/skipped_steps", 0.0) + 1.0
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.optimizer_steps += 1
        self.timings["fwd_bwd"] += t1 - t0
        self.timings["optimizer"] += time.perf_counter() - t1
        stats["train/grad_norm"] = grad_norm
        stats["train/lr"] = float(self.scheduler.get_last_lr()[0])
        return stats

    @torch.no_grad()
    def _check_finite(self, grad_norm: float, trained: MicroBatch | None = None) -> None:
        """Collective: raise TrainingDiverged on every rank if the update left a parameter, or the
        logits of a probe, non-finite. Finite but huge weights (a huge learning rate) overflow only in
        the forward, which is why the probe runs: the first `PROBE_TOKENS` tokens of a trained row
        (real tokens: a two-token probe of one token id missed overflows that real data hit), else a
        dummy. Both checks cost one sync each."""
        assert self.model is not None
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters()]
        params_ok = torch.stack([torch.isfinite(t).all() for t in local if t.numel()]).all()
        probe = self._dummy() if trained is None else trained
        head = (slice(0, 1), slice(0, PROBE_TOKENS))  # the first row's first tokens (a dummy has 2)
        mask = probe.attention_mask[head] if probe.attention_mask is not None else None
        logits = self.model(input_ids=probe.input_ids[head], position_ids=probe.position_ids[head],
                            attention_mask=mask, use_cache=False).logits
        flags = torch.stack([~params_ok, ~torch.isfinite(logits).all()]).float().cpu()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.dist.cpu_group)
        if flags.any():
            what = "parameters" if flags[0] else "outputs (logits)"
            lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else float("nan")
            raise TrainingDiverged(
                f"training diverged at optimizer step {self.optimizer_steps + 1}: the model's {what} are not finite "
                f"after the update (lr {lr:.3g}, gradient norm {grad_norm:.3g}); the weights were not sent to "
                "the servers. Lower actor.optimizer.lr, or check the rewards and the loss scale")

    def _clip_and_norm(self) -> float:
        assert self.model is not None
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.spec.gradient_clipping if self.spec.gradient_clipping > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    # ------------------------------------------------------------------ weights out

    @property
    def export_dtype(self) -> torch.dtype:
        """The dtype weights leave the engine in (servers, HF checkpoints)."""
        return torch_dtype(self.spec.export_dtype or self.spec.dtype)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded CPU state dict in the export dtype on rank 0 (empty elsewhere). Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        assert self.model is not None
        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        dtype = self.export_dtype
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    def save_hf(self, path: str, *, tokenizer_path: str | None = None) -> None:
        """An HF checkpoint (config, safetensors, tokenizer) users can load with transformers. Collective."""
        state = self.full_state_dict()
        if self.rank == 0:
            assert self.model is not None
            save_hf_dir(self.model, state, path, dtype=self.export_dtype, tokenizer_path=tokenizer_path or self.spec.path)

    # ------------------------------------------------------------------ recover checkpoints

    def sharded_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        assert self.model is not None and self.optimizer is not None and self.scheduler is not None
        msd, osd = get_state_dict(self.model, self.optimizer)
        return {"model": msd, "optim": osd}

    def load_sharded_state(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        assert self.model is not None and self.optimizer is not None
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks of a transformers causal LM (FSDP units)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        layers = getattr(getattr(model, "transformer", None), "h", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return list(layers)
