"""The continuous batch: requests in KV slots, one prefill + one decode forward per step.

Owned by the engine thread (`engine.Engine`); nothing here is thread-safe. Each `step()` (1)
admits waiting requests into free slots and prefills them in one batch, sampling their first token,
then (2) decodes one token for every running request in one batched forward. Finished requests
leave their slot at once and the running set stays packed in slots 0..B-1, so attention reads one
contiguous slice, trimmed to the longest running sequence.

Two forwards: the engine's own decoder (`decoder.Decoder`: Llama-family models, packed prefill)
and, for any other model, its own HF forward over left-padded prompts with explicit position ids,
a 4-D boolean attention mask and the slot cache (`kv_cache.SlotKVCache`) standing in for
transformers' Cache. Both read and write the same cache.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from areal_lite.inference.embedded.decoder import Decoder, unsupported_reason
from areal_lite.inference.embedded.kv_cache import SlotKVCache
from areal_lite.inference.embedded.sampling import sample_next_tokens

GREEDY_EPS = 1e-6  # temperatures below this are greedy (SGLang's _SAMPLING_EPS)


@dataclass(frozen=True)
class SamplingSpec:
    """Validated per-request sampling parameters (names as SGLang's `SamplingParams`)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_new_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False


@dataclass
class GenerationOutput:
    """A finished (or aborted) request, as the engine hands it back."""

    rid: str
    output_ids: list[int]
    output_logprobs: list[float]
    finish_reason: dict[str, Any]
    prompt_tokens: int
    weight_version: str  # the version current when the request finished
    weight_versions: list[dict[str, Any]]  # spans {"version", "start", "end"} over output_ids
    num_retractions: int
    e2e_latency: float


@dataclass(eq=False)
class Request:
    """One generation in the batch: its prompt, output so far and KV slot (engine-thread state)."""

    rid: str
    prompt: list[int]
    spec: SamplingSpec
    callback: Callable[[GenerationOutput], None]
    arrival: float
    stop_ids: frozenset[int]  # stop_token_ids ∪ eos, empty under ignore_eos
    out_ids: list[int] = field(default_factory=list)
    out_logprobs: list[float] = field(default_factory=list)
    slot: int = -1
    cache_len: int = 0  # tokens of this request held in its KV slot
    spans: list[list[Any]] = field(default_factory=list)  # [version, start] per weight change
    num_retractions: int = 0
    # Derived from spec once (read for every request at every step).
    greedy: bool = field(init=False)
    filters: bool = field(init=False)  # samples from a top-p / top-k subset
    ban_stops_until: int = field(init=False)  # stop tokens may not be sampled before this many outputs

    def __post_init__(self):
        self.greedy = self.spec.temperature < GREEDY_EPS
        self.filters = not self.greedy and (self.spec.top_p < 1.0 or 0 < self.spec.top_k)
        self.ban_stops_until = self.spec.min_new_tokens if self.stop_ids else 0


class Batcher:
    """Running and waiting requests of one model, and the step that advances them."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: torch.device,
        context_length: int,
        max_running_requests: int,
        max_prefill_tokens: int,
        generator: torch.Generator,
        counters: dict[str, Any],
        weight_version: str,
        use_decoder: bool = True,
    ):
        self.model = model
        self.device = device
        self.context_length = context_length
        self.max_running_requests = max_running_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.generator = generator
        self.counters = counters
        # Where busy time goes (read by benchmarks through /get_server_info).
        for key in ("prefill_time_s", "decode_time_s", "queue_time_s", "num_admitted"):
            counters.setdefault(key, 0.0)
        self.weight_version = weight_version  # stamped on tokens as they are produced
        slots = max_running_requests
        self.cache = SlotKVCache(model.config.num_hidden_layers, slots, context_length, device=device)
        # The engine's own forward where it supports the model (`decoder.py`), else the model's.
        self.decoder = Decoder(model, self.cache) if use_decoder and unsupported_reason(model) is None else None
        dev = device
        # Indices for rows, positions and the packed tokens of one prefill (at most one request over budget).
        self._arange = torch.arange(max(slots, context_length, max_prefill_tokens) + 1, device=dev)
        self._zeros = torch.zeros(slots, dtype=torch.long, device=dev)
        # Per-slot decode state, packed like `running`.
        self._last = torch.zeros(slots, dtype=torch.long, device=dev)  # token fed at the next decode
        self._lens = torch.zeros(slots, dtype=torch.long, device=dev)  # = request.cache_len
        self._temp = torch.ones(slots, dtype=torch.float32, device=dev)
        self._greedy = torch.zeros(slots, dtype=torch.bool, device=dev)
        self._top_p = torch.ones(slots, dtype=torch.float32, device=dev)
        self._top_k = torch.full((slots,), -1, dtype=torch.long, device=dev)
        self._slot_tensors = (self._last, self._lens, self._temp, self._greedy, self._top_p, self._top_k)
        self.running: list[Request] = []  # index == slot
        self.waiting: collections.deque[Request] = collections.deque()
        self.finished: list[tuple[Request, GenerationOutput]] = []  # drained by the engine

    def step(self, *, admit: bool = True) -> None:
        """Prefill newly admitted requests (when `admit`), then decode one token for all running ones."""
        if admit and self.waiting and len(self.running) < self.max_running_requests:
            t0 = time.perf_counter()
            self._prefill(self._admit())
            self.counters["prefill_time_s"] += time.perf_counter() - t0
        if self.running:
            t0 = time.perf_counter()
            self._decode()
            self.counters["decode_time_s"] += time.perf_counter() - t0

    def retract_all(self) -> None:
        """Send running requests back to the queue front; their KV is dropped and recomputed later."""
        for req in reversed(self.running):
            req.slot, req.cache_len = -1, 0
            req.num_retractions += 1
            self.waiting.appendleft(req)
        self.running.clear()

    def set_weight_version(self, version: str) -> None:
        """New weights from now on: requests with output so far start a new version span."""
        if version == self.weight_version:
            return
        self.weight_version = version
        for req in (*self.running, *self.waiting):
            if not req.out_ids:
                continue
            if req.spans and req.spans[-1][1] == len(req.out_ids):
                req.spans[-1][0] = version  # no token came from the version in between
            else:
                req.spans.append([version, len(req.out_ids)])

    def _admit(self) -> list[Request]:
        free = self.max_running_requests - len(self.running)
        batch: list[Request] = []
        longest = 0
        while self.waiting and len(batch) < free:
            req = self.waiting[0]
            if req.spec.max_new_tokens - len(req.out_ids) <= 0:  # nothing to generate (max_new_tokens 0)
                self.waiting.popleft()
                self._finish(req, {"type": "length", "length": req.spec.max_new_tokens})
                continue
            n = len(req.prompt) + len(req.out_ids)
            # The padded batch costs rows x longest; stop before it passes the budget.
            if batch and (len(batch) + 1) * max(longest, n) > self.max_prefill_tokens:
                break
            longest = max(longest, n)
            batch.append(self.waiting.popleft())
        now = time.monotonic()
        self.counters["queue_time_s"] += sum(now - req.arrival for req in batch if not req.num_retractions)
        self.counters["num_admitted"] += sum(not req.num_retractions for req in batch)
        return batch

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One model forward over [B, T] inputs; returns the last position's logits [B, V]."""
        out = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def _prefill(self, batch: list[Request]) -> None:
        if not batch:
            return
        base, n = len(self.running), len(batch)
        seqs = [req.prompt + req.out_ids for req in batch]
        lens = [len(s) for s in seqs]
        self.cache.reserve(max(lens) + 1)
        if self.decoder is not None:
            logits = self._prefill_packed(seqs, lens, base)
        else:
            logits = self._prefill_padded(seqs, lens, base)
        for i, req in enumerate(batch):
            req.slot, req.cache_len = base + i, lens[i]
            if not req.spans:
                req.spans.append([self.weight_version, 0])
            self.running.append(req)
            self.counters["prompt_tokens"] += lens[i]
        self.counters["max_running_reqs"] = max(self.counters["max_running_reqs"], len(self.running))
        dev = self.device
        sl = slice(base, base + n)
        self._lens[sl] = torch.tensor(lens, dtype=torch.long, device=dev)
        self._temp[sl] = torch.tensor([1.0 if r.greedy else r.spec.temperature for r in batch], device=dev)
        self._greedy[sl] = torch.tensor([r.greedy for r in batch], device=dev)
        self._top_p[sl] = torch.tensor([r.spec.top_p for r in batch], device=dev)
        self._top_k[sl] = torch.tensor([r.spec.top_k for r in batch], dtype=torch.long, device=dev)
        self._sample_and_advance(batch, logits, sl)

    def _prefill_packed(self, seqs: list[list[int]], lens: list[int], base: int) -> torch.Tensor:
        """The engine's decoder over the prompts packed end to end; last-token logits [n, V]."""
        dev = self.device
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=dev)  # [N]
        counts = torch.tensor(lens, dtype=torch.long, device=dev)
        ends = counts.cumsum(0)  # [n]
        rows = torch.repeat_interleave(self._arange[: len(seqs)], counts)  # [N]
        positions = self._arange[: ids.shape[0]] - (ends - counts)[rows]  # [N]: 0.. within each row
        return self.decoder.prefill(ids, positions, rows, base, len(seqs), max(lens), ends - 1)

    def _prefill_padded(self, seqs: list[list[int]], lens: list[int], base: int) -> torch.Tensor:
        """The model's own forward over left-padded prompts; last-token logits [n, V]."""
        n, width, dev = len(seqs), max(lens), self.device
        # Left padding puts every row's last token at column width-1, where logits are kept.
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs], dtype=torch.long, device=dev)  # [n, T]
        offsets = torch.tensor([width - l for l in lens], dtype=torch.long, device=dev)  # [n]
        cols = self._arange[:width]
        positions = (cols.unsqueeze(0) - offsets.unsqueeze(1)).clamp_(min=0)  # [n, T]
        rows_w, cols_w = (cols.unsqueeze(0) >= offsets.unsqueeze(1)).nonzero(as_tuple=True)
        # Attention reads the cache (cache position j ↔ token j of the row); pad rows see position 0.
        mask = (cols.view(1, 1, width) <= positions.unsqueeze(2)).unsqueeze(1)  # [n, 1, T, T]
        self.cache.set_step(
            write_slots=rows_w + base,
            write_positions=positions[rows_w, cols_w],
            source_rows=rows_w,
            source_cols=cols_w,
            read_start=base,
            read_end=base + n,
            read_length=width,
        )
        return self._forward(ids, positions, mask)

    def _decode(self) -> None:
        running = self.running
        b = len(running)
        length = max(r.cache_len for r in running) + 1
        self.cache.reserve(length)
        if self.decoder is not None:
            logits = self.decoder.decode(self._last[:b], self._lens[:b], length)
        else:
            rows = self._arange[:b]
            positions = self._lens[:b].unsqueeze(1)  # [B, 1]: each row's next cache position
            mask = (self._arange[:length].unsqueeze(0) <= positions).view(b, 1, 1, length)
            self.cache.set_step(
                write_slots=rows,
                write_positions=self._lens[:b],
                source_rows=rows,
                source_cols=self._zeros[:b],
                read_start=0,
                read_end=b,
                read_length=length,
            )
            logits = self._forward(self._last[:b].unsqueeze(1), positions, mask)
        self._lens[:b] += 1
        for r in running:
            r.cache_len += 1
        self._sample_and_advance(list(running), logits, slice(0, b))

    def _sample_and_advance(self, reqs: list[Request], logits: torch.Tensor, sl: slice) -> None:
        """Sample one token for each of `reqs` (rows of `logits`, slots `sl`), then retire finished ones."""
        banned = None
        for i in [i for i, r in enumerate(reqs) if len(r.out_ids) < r.ban_stops_until]:
            if banned is None:
                banned = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            banned[i, list(reqs[i].stop_ids)] = True
        filtering = any([r.filters for r in reqs])
        tokens, logprobs = sample_next_tokens(
            logits,
            self._temp[sl],
            self._greedy[sl],
            top_p=self._top_p[sl] if filtering else None,
            top_k=self._top_k[sl] if filtering else None,
            banned=banned,
            all_greedy=all([r.greedy for r in reqs]),
            generator=self.generator,
        )
        self._last[sl] = tokens
        finished = []
        room = self.context_length - 1
        for r, tok, lp in zip(reqs, tokens.tolist(), logprobs.tolist()):
            out = r.out_ids
            out.append(tok)
            r.out_logprobs.append(lp)
            if tok in r.stop_ids and len(out) >= r.spec.min_new_tokens:
                finished.append((r, {"type": "stop", "matched": tok}))
            elif len(out) >= r.spec.max_new_tokens:
                finished.append((r, {"type": "length", "length": r.spec.max_new_tokens}))
            elif r.cache_len >= room:  # no room for the next token's KV
                finished.append((r, {"type": "length", "length": len(out)}))
        self.counters["generated_tokens"] += len(reqs)
        if finished:
            self._release([r for r, _ in finished])
            for r, reason in finished:
                self._finish(r, reason)

    def _release(self, reqs: list[Request]) -> None:
        """Free the slots of `reqs`, moving the last running request into each hole."""
        for req in sorted(reqs, key=lambda r: r.slot, reverse=True):
            last = len(self.running) - 1
            if req.slot != last:
                moved = self.running[last]
                self.cache.move_slot(last, req.slot, moved.cache_len)
                for t in self._slot_tensors:
                    t[req.slot] = t[last]
                moved.slot = req.slot
                self.running[req.slot] = moved
            self.running.pop()
            req.slot = -1

    def _finish(self, req: Request, reason: dict[str, Any]) -> None:
        n = len(req.out_ids)
        spans = req.spans or [[self.weight_version, 0]]
        versions = [
            {"version": v, "start": start, "end": spans[i + 1][1] if i + 1 < len(spans) else n}
            for i, (v, start) in enumerate(spans)
        ]
        out = GenerationOutput(
            rid=req.rid,
            output_ids=req.out_ids,
            output_logprobs=req.out_logprobs,
            finish_reason=reason,
            prompt_tokens=len(req.prompt),
            weight_version=self.weight_version,
            weight_versions=versions,
            num_retractions=req.num_retractions,
            e2e_latency=time.monotonic() - req.arrival,
        )
        key = "num_aborted_reqs" if reason["type"] == "abort" else "num_finished_reqs"
        self.counters[key] += 1
        self.finished.append((req, out))

    def abort_all(self, message: str, status_code: int | None = None) -> None:
        """Finish every running and waiting request now, with its partial output and an abort reason."""
        reason = {"type": "abort", "message": message, "status_code": status_code, "err_type": None}
        running, waiting = list(self.running), list(self.waiting)
        self._release(running)
        self.waiting.clear()
        for req in (*running, *waiting):
            self._finish(req, dict(reason))

    def abort_rid(self, rid: str | None) -> bool:
        """Abort one request by id; False when no such request is in flight."""
        reason = {"type": "abort", "message": "Aborted by request", "status_code": None, "err_type": None}
        for req in self.running:
            if req.rid == rid:
                self._release([req])
                self._finish(req, reason)
                return True
        for req in self.waiting:
            if req.rid == rid:
                self.waiting.remove(req)
                self._finish(req, reason)
                return True
        return False
