"""The embedded inference engine: continuous batching over a transformers causal LM.

Why not transformers' own continuous batching (`generation/continuous_batching`, 5.x)? Measured
against our needs it lacks: per-request greedy vs. sampling (`do_sample` is one flag per manager),
log-probs under the untruncated temperature-scaled distribution (it reports the log of the
post-top-p/top-k probabilities), abort that returns partial output, and pause/continue around a
weight swap; its paged cache is sized for GPUs. So we keep the model's own forward and add only
what is missing: a slot KV cache (`kv_cache.py`), a batch scheduler (`batcher.py`, token-granular
joins and leaves, batched prefill and decode) and batched sampling (`sampling.py`).

One thread owns the model and the cache: the engine thread. Everything else talks to it through
a queue: `submit` (a generation) and control operations (abort, pause, continue, weight updates),
which run between steps in arrival order. The engine thread sleeps on a condition when idle.

Weights change only between steps, and (unless the engine is paused in place or by retraction)
only when no request is running: a weight update waits for the running requests to finish, or
aborts them when asked to, and admits nothing new meanwhile. So a response's tokens all come from
one weight version, except under `in_place`/`retract` pauses, where per-span versions are
reported (as SGLang does).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from areal_lite.inference.embedded.batcher import Batcher, GenerationOutput, SamplingSpec, Request
from areal_lite.inference.embedded.weights import (
    WeightLoadError,
    apply_named_tensors,
    read_state_dict,
    receive_named_tensors,
    safetensors_files,
)

logger = logging.getLogger("areal_lite.engine")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PAUSE_MODES = ("abort", "retract", "in_place")


@dataclass
class EngineConfig:
    """How to build an engine (the server's command-line flags map onto these)."""

    model_path: str
    dtype: str = "auto"  # auto: the checkpoint's dtype (float32 when it names none)
    device: str = "cpu"
    context_length: int | None = None  # longest prompt + output; None: the model's max positions
    max_running_requests: int = 64  # slots decoded together
    max_prefill_tokens: int = 8192  # padded prompt tokens admitted per step (at least one request)
    random_seed: int = 0
    skip_tokenizer_init: bool = False
    weight_version: str = "default"
    debug_step_delay_s: float = 0.0  # testing only: sleep after every step (a slow server)
    use_decoder: bool = True  # the engine's own forward for Llama-family models (False: always the model's)


@dataclass(eq=False)
class _Op:
    fn: Callable[[], Any]
    future: concurrent.futures.Future
    needs_idle: bool = False  # wait until no request runs (weight changes)
    abort_first: bool = False


class EngineError(RuntimeError):
    """The engine cannot serve (stopped, or its thread died)."""


def resolve_dtype(name: str, model_config) -> torch.dtype:
    """The torch dtype for a --dtype value; auto: the checkpoint's dtype, float32 when it names none."""
    if name != "auto":
        return DTYPES[name]
    configured = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    if isinstance(configured, str):
        configured = DTYPES.get(configured)
    return configured if isinstance(configured, torch.dtype) else torch.float32


def load_model(path: str, dtype: str, device: str, seed: int):
    """An HF causal LM from a directory; a directory with a config but no weights is initialised
    from the config (seeded, without touching the global RNG)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    torch_dtype = resolve_dtype(dtype, config)
    if safetensors_files(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """Token ids that end a request unless ignore_eos: generation config, model config, tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


class Engine:
    """Continuous-batching generation over one model; thread-safe entry points, one engine thread."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.model = load_model(config.model_path, config.dtype, config.device, config.random_seed)
        self.model_path = config.model_path
        mcfg = self.model.config
        self.vocab_size = int(mcfg.vocab_size)
        max_pos = getattr(mcfg, "max_position_embeddings", None) or 4096
        self.context_length = int(config.context_length or max_pos)
        self._check_attention_layout(mcfg)
        self.tokenizer = None
        if not config.skip_tokenizer_init:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(config.model_path)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.counters = {
            "busy_time_s": 0.0,
            "paused_time_s": 0.0,
            "generated_tokens": 0,
            "prompt_tokens": 0,
            "num_finished_reqs": 0,
            "num_aborted_reqs": 0,
            "num_steps": 0,
            "num_weight_updates": 0,
            "max_running_reqs": 0,  # the most requests ever decoded in one step
        }
        self.batch = Batcher(
            self.model,
            device=self.device,
            context_length=self.context_length,
            max_running_requests=config.max_running_requests,
            max_prefill_tokens=config.max_prefill_tokens,
            generator=torch.Generator(device=self.device).manual_seed(config.random_seed),
            counters=self.counters,
            weight_version=config.weight_version,
            use_decoder=config.use_decoder,
        )
        self._ops: collections.deque[_Op] = collections.deque()
        self._rids: set[str] = set()  # requests submitted and not yet delivered
        self._inbox: list[Request | _Op] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._fatal: BaseException | None = None
        self.paused: str | None = None  # the pause mode, while paused
        self.groups: dict[str, Any] = {}  # weight-update process groups by name
        self.started_at = time.monotonic()
        self._paused_since: float | None = None

    @property
    def weight_version(self) -> str:
        return self.batch.weight_version

    def _check_attention_layout(self, mcfg) -> None:
        # The engine passes one full causal mask to every layer; a sliding window shorter than the
        # context would be silently ignored, so such models are refused rather than served wrong.
        window = getattr(mcfg, "sliding_window", None)
        layer_types = getattr(mcfg, "layer_types", None)
        if layer_types is not None:
            sliding = "sliding_attention" in layer_types
        else:  # no per-layer types: Mistral-style configs slide on every layer when a window is set
            sliding = getattr(mcfg, "use_sliding_window", True)
        if sliding and window is not None and window < self.context_length:
            raise ValueError(
                f"model uses sliding-window attention ({window} < context length {self.context_length}); "
                "serve it with --context-length <= the window or with SGLang"
            )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; requests still in flight come back aborted."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        for name in list(self.groups):
            self.destroy_weights_update_group(name)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # ------------------------------------------------------------------ thread-safe API

    def submit(self, rid: str, input_ids: list[int], spec: SamplingSpec, callback: Callable[[GenerationOutput], None]) -> None:
        """Queue a generation; `callback(output)` runs on the engine thread when it ends.

        Raises ValueError for a request id already in flight, EngineError when stopped.
        """
        stop_ids = frozenset() if spec.ignore_eos else (spec.stop_token_ids | self.eos_ids)
        req = Request(rid, list(input_ids), spec, callback, time.monotonic(), stop_ids)
        with self._cond:
            if not self.alive:
                raise EngineError(f"engine is not running: {self._fatal!r}" if self._fatal else "engine is not running")
            if rid in self._rids:
                raise ValueError(f"duplicate request id {rid!r}")
            self._rids.add(rid)
            self._inbox.append(req)
            self._cond.notify()

    def _submit_op(self, fn: Callable[[], Any], *, needs_idle: bool = False, abort_first: bool = False) -> concurrent.futures.Future:
        op = _Op(fn, concurrent.futures.Future(), needs_idle, abort_first)
        with self._cond:
            if not self.alive:
                op.future.set_exception(EngineError("engine is not running"))
                return op.future
            self._inbox.append(op)
            self._cond.notify()
        return op.future

    def abort(self, rid: str | None = None, *, abort_all: bool = False) -> concurrent.futures.Future:
        """Abort one request (or all): it returns at once with its partial output."""
        if abort_all:
            return self._submit_op(lambda: self.batch.abort_all("Aborted by request"))
        return self._submit_op(lambda: self.batch.abort_rid(rid))

    def pause(self, mode: str = "abort") -> concurrent.futures.Future:
        """Stop generating until `resume`. abort: in-flight requests return now with their partial
        output; retract: they go back to the queue (KV dropped) and continue after resume;
        in_place: they stay in their slots. Requests submitted while paused wait."""
        if mode not in PAUSE_MODES:
            raise ValueError(f"unsupported pause mode {mode!r}; expected one of {PAUSE_MODES}")
        return self._submit_op(lambda: self._pause(mode))

    def resume(self) -> concurrent.futures.Future:
        return self._submit_op(self._resume)

    def flush_cache(self) -> concurrent.futures.Future:
        """Drop KV buffers (there is no prefix cache to flush); refused while requests hold slots."""
        return self._submit_op(self._flush)

    def update_weights_from_disk(self, model_path: str, *, weight_version: str | None = None, abort_all_requests: bool = False) -> concurrent.futures.Future:
        """Load an HF safetensors directory into the served model (between steps, no request running)."""

        def load() -> int:
            n = apply_named_tensors(self.model, read_state_dict(model_path).items(), require_all=True)
            self.model_path = model_path
            self._after_weight_change(weight_version)
            return n

        return self._submit_op(load, needs_idle=True, abort_first=abort_all_requests)

    def update_weights_from_distributed(
        self,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        *,
        group_name: str,
        weight_version: str | None = None,
        abort_all_requests: bool = False,
        flattened: bool = False,
    ) -> concurrent.futures.Future:
        """Receive one bucket broadcast by group rank 0 and load it (see `weights.receive_named_tensors`)."""

        def receive() -> int:
            group = self.groups.get(group_name)
            if group is None:
                raise WeightLoadError(f"no weight update group {group_name!r}; call /init_weights_update_group first")
            named = receive_named_tensors(names, dtypes, shapes, group, device=self.device, flattened=flattened)
            n = apply_named_tensors(self.model, named)
            self._after_weight_change(weight_version)
            return n

        return self._submit_op(receive, needs_idle=True, abort_first=abort_all_requests)

    def update_weight_version(self, version: str, *, abort_all_requests: bool = True) -> concurrent.futures.Future:
        return self._submit_op(lambda: self._after_weight_change(version, count=False), needs_idle=True, abort_first=abort_all_requests)

    def init_weights_update_group(self, *, master_address: str, master_port: int, rank_offset: int, world_size: int, group_name: str, backend: str, timeout_s: float = 300.0) -> None:
        """Join trainer rank 0's broadcast group as rank `rank_offset` (blocks until all have joined).

        Runs on the caller's thread, not the engine thread, so generation goes on meanwhile.
        """
        from areal_lite.utils.distributed import init_custom_process_group

        if group_name in self.groups:
            raise ValueError(f"weight update group {group_name!r} already exists")
        self.groups[group_name] = init_custom_process_group(
            backend=backend,
            master_address=master_address,
            master_port=master_port,
            rank=rank_offset,
            world_size=world_size,
            group_name=group_name,
            timeout_s=timeout_s,
        )

    def destroy_weights_update_group(self, group_name: str) -> bool:
        from areal_lite.utils.distributed import destroy_custom_process_group

        group = self.groups.pop(group_name, None)
        if group is None:
            return False
        destroy_custom_process_group(group)
        return True

    def stats(self) -> dict[str, Any]:
        """Cheap counters (read without locking: each value is written by one thread)."""
        now = time.monotonic()
        paused_time = self.counters["paused_time_s"] + (now - self._paused_since if self._paused_since else 0.0)
        return {
            **self.counters,
            "paused_time_s": paused_time,
            "uptime_s": now - self.started_at,
            "num_running_reqs": len(self.batch.running),
            "num_waiting_reqs": len(self.batch.waiting) + sum(isinstance(m, Request) for m in self._inbox),
            "paused": self.paused is not None,
            "pause_mode": self.paused,
            "weight_version": self.weight_version,
            "kv_cache_bytes": self.batch.cache.nbytes(),
        }

    # ------------------------------------------------------------------ engine thread

    def _can_step(self) -> bool:
        if self.paused is not None:
            return False
        return bool(self.batch.running) or (bool(self.batch.waiting) and not self._ops)

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        while not (self._inbox or self._stopping or self._can_step() or self._ops_ready()):
                            self._cond.wait()
                        inbox, self._inbox = self._inbox, []
                        if self._stopping:
                            break
                    # NOTE: in arrival order, so a pause or abort never touches a request that came after it.
                    for item in inbox:
                        if isinstance(item, Request):
                            self.batch.waiting.append(item)
                        else:
                            self._ops.append(item)
                            self._run_ops()
                    self._run_ops()
                    if self._can_step():
                        self._step()
                    self._deliver()
        except BaseException as e:  # the thread must not die silently: fail everything in flight
            logger.exception("engine thread failed")
            self._fatal = e
        finally:
            with self._cond:
                self._stopping = True
                leftover, self._inbox = self._inbox, []
            for item in leftover:
                if isinstance(item, Request):
                    self.batch.waiting.append(item)
                else:
                    item.future.set_exception(EngineError("engine stopped"))
            for op in self._ops:
                op.future.set_exception(EngineError("engine stopped"))
            self._ops.clear()
            self.batch.abort_all("Engine stopped", status_code=503)
            self._deliver()

    def _ops_ready(self) -> bool:
        if not self._ops:
            return False
        op = self._ops[0]
        return op.abort_first or not op.needs_idle or not self.batch.running or self.paused is not None

    def _run_ops(self) -> None:
        while self._ops:
            op = self._ops[0]
            if op.abort_first:
                self.batch.abort_all("Abort before weight update")
                op.abort_first = False
            if op.needs_idle and self.batch.running and self.paused is None:
                return  # NOTE: admission stops while an op waits, so the running set drains.
            self._ops.popleft()
            try:
                op.future.set_result(op.fn())
            except Exception as e:  # reported to the caller; the engine keeps serving
                op.future.set_exception(e)
            self._deliver()

    def _after_weight_change(self, version: str | None, *, count: bool = True) -> None:
        if version is not None:
            self.batch.set_weight_version(version)
        if count:
            self.counters["num_weight_updates"] += 1

    def _pause(self, mode: str) -> None:
        if self.paused is None:
            self._paused_since = time.monotonic()
        self.paused = mode
        if mode == "abort":
            self.batch.abort_all("Abort for pause_generation")
        elif mode == "retract":
            self.batch.retract_all()

    def _resume(self) -> None:
        if self._paused_since is not None:
            self.counters["paused_time_s"] += time.monotonic() - self._paused_since
            self._paused_since = None
        self.paused = None

    def _flush(self) -> bool:
        if self.batch.running:
            raise RuntimeError("cannot flush the cache while requests are running")
        self.batch.cache.clear()
        return True

    def _step(self) -> None:
        t0 = time.perf_counter()
        self.batch.step(admit=not self._ops)
        self.counters["busy_time_s"] += time.perf_counter() - t0
        self.counters["num_steps"] += 1
        if self.config.debug_step_delay_s > 0:
            time.sleep(self.config.debug_step_delay_s)

    def _deliver(self) -> None:
        if not self.batch.finished:
            return
        deliveries, self.batch.finished = self.batch.finished, []
        with self._cond:
            for req, _ in deliveries:
                self._rids.discard(req.rid)
        for req, out in deliveries:
            try:
                req.callback(out)
            except Exception:  # a broken callback must not take the engine down
                logger.exception("delivery callback for %s failed", req.rid)
