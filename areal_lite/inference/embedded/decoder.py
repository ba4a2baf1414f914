"""The engine's own forward for Llama-family decoders, reading and writing the slot KV cache directly.

Why not the model's own forward? At the sizes this engine serves on CPU, a decode step of the
transformers forward spends as much time around the matmuls as in them: its attention repeats
K/V per query head, its CPU SDPA kernel is slow for one query per row, and each layer costs dozens of
small Python-dispatched ops (docs/benchmarks.md, "Embedded engine vs model.generate", has the
profile). This module computes the same math on the model's own parameters, read at every call (so
weight updates apply at once):
- prefill is packed: the linear layers see only real prompt tokens [N, hidden]; attention runs over
  the rows padded to the longest one (causal, so padding never reaches a real token);
- decode attends with two batched matmuls over the cache slice per key/value head group (no copies
  of K/V per query head) and one additive mask per step shared by every layer.

Supported: pre-norm decoders whose layers are RMSNorm → attention (q/k/v/o projections, optional
biases, optional per-head q/k RMSNorm, rotary positions from the model's own rotary module) →
RMSNorm → gated SiLU MLP, i.e. the model types in `MODEL_TYPES`. `unsupported_reason` says why any
other model runs through its own forward instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from areal_lite.inference.embedded.kv_cache import SlotKVCache

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_LAYER_PARTS = (
    "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


def unsupported_reason(model) -> str | None:
    """None when `Decoder` computes this model's forward exactly; otherwise why not (one line)."""
    cfg = model.config
    if cfg.model_type not in MODEL_TYPES:
        return f"model type {cfg.model_type!r} is not one of {MODEL_TYPES}"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {getattr(cfg, 'hidden_act', None)!r} (the decoder computes SiLU)"
    if getattr(cfg, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embeddings"
    inner = getattr(model, "model", None)
    for part in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, part):
            return f"no model.{part}"
    if not hasattr(model, "lm_head"):
        return "no lm_head"
    for layer in inner.layers:
        for path in _LAYER_PARTS:
            obj = layer
            for name in path.split("."):
                obj = getattr(obj, name, None)
            if obj is None:
                return f"decoder layer without {path}"
    return None


def rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """RMSNorm as the transformers modules compute it: float32 statistics, the product in x's dtype."""
    shape = (x.shape[-1],)
    if x.dtype == torch.float32:
        return F.rms_norm(x, shape, norm.weight, norm.variance_epsilon)
    return norm.weight * F.rms_norm(x.float(), shape, None, norm.variance_epsilon).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [N, heads, D] (the rotate-half convention), cos/signed_sin [N, 1, D].

    rotate_half(x) * sin == roll(x, D/2) * signed_sin, with sin's first half negated (`rope_tables`).
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def add_linear(h: torch.Tensor, x: torch.Tensor, linear: torch.nn.Module) -> torch.Tensor:
    """h + linear(x), as the matmul's starting value when the layer has no bias (h, x 2-D)."""
    if linear.bias is None:
        return torch.addmm(h, x, linear.weight.t())
    return h + F.linear(x, linear.weight, linear.bias)


def softmax_float32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension computed in float32, returned in the scores' dtype."""
    if scores.dtype == torch.float32:
        return torch.softmax(scores, dim=-1)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model rotary module's cos/sin [1, N, D] as `rope` takes them: [N, 1, D], sin's first half negated."""
    n, d = cos.shape[1], cos.shape[2]
    sign = torch.ones(d, dtype=sin.dtype, device=sin.device)
    sign[: d // 2] = -1
    return cos.view(n, 1, d), (sin * sign).view(n, 1, d)


class FusedLinear:
    """Linear layers that read the same input, computed as one matmul.

    Their weights (and biases) are concatenated into one buffer and the modules' parameters are
    made views of it, so an in-place weight update (`weights.apply_named_tensors`, `load_state_dict`)
    lands in the buffer. A parameter rebound to other storage is noticed at the next call and the
    buffer is rebuilt from the parameters as they are then.
    """

    def __init__(self, linears: list[torch.nn.Module]):
        self.linears = linears
        self._fuse()

    def _params(self) -> list[torch.Tensor]:
        return [p for lin in self.linears for p in (lin.weight, lin.bias) if p is not None]

    def _fuse(self) -> None:
        weights = [lin.weight.detach() for lin in self.linears]
        self.weight = torch.cat(weights)  # [sum of outputs, in]
        self.bias = None
        if any(lin.bias is not None for lin in self.linears):
            self.bias = torch.cat([lin.bias.detach() if lin.bias is not None else w.new_zeros(w.shape[0])
                                   for lin, w in zip(self.linears, weights)])
        start = 0
        for lin in self.linears:
            end = start + lin.weight.shape[0]
            lin.weight.data = self.weight[start:end]
            if lin.bias is not None:
                lin.bias.data = self.bias[start:end]
            start = end
        self._ptrs = [p.data_ptr() for p in self._params()]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if [p.data_ptr() for p in self._params()] != self._ptrs:
            self._fuse()
        return F.linear(x, self.weight, self.bias)


class Decoder:
    """Prefill and decode steps of one Llama-family model over a `SlotKVCache`.

    NOTE: construction makes each layer's q/k/v and gate/up projection parameters views of one
    buffer per group (`FusedLinear`); the model computes exactly as before.
    """

    def __init__(self, model: torch.nn.Module, cache: SlotKVCache):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the engine's decoder cannot run this model: {reason}")
        self.model = model
        self.cache = cache
        inner = model.model
        self.layers = list(inner.layers)
        attn = self.layers[0].self_attn
        cfg = model.config
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.qk_norm = hasattr(attn, "q_norm")
        self.dtype = inner.embed_tokens.weight.dtype
        self.qkv = [FusedLinear([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj]) for l in self.layers]
        self.gate_up = [FusedLinear([l.mlp.gate_proj, l.mlp.up_proj]) for l in self.layers]
        self._arange = torch.arange(max(cache.max_slots, cache.max_length) + 1, device=cache.device)
        self._rope = self._rope_table()

    def _rope_table(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`rope_tables` for every position up to the cache length, from the model's rotary module.

        None for rotary types whose frequencies follow the sequence length (dynamic, longrope):
        those call the module at every step.
        """
        rotary = self.model.model.rotary_emb
        rope_type = getattr(rotary, "rope_type", "default")
        if not isinstance(rope_type, str) or "dynamic" in rope_type or rope_type == "longrope":
            return None
        like = self.model.model.embed_tokens.weight
        positions = self._arange[: self.cache.max_length].view(1, -1)
        return rope_tables(*rotary(like[:1].unsqueeze(0), positions))  # [max_length, 1, D] each

    # ------------------------------------------------------------------ steps

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, first_slot: int,
                num_rows: int, width: int, last: torch.Tensor) -> torch.Tensor:
        """Packed prompts into slots [first_slot, first_slot + num_rows); the logits [num_rows, V] at `last`.

        ids, positions, rows [N]: token i is at `positions[i]` of row `rows[i]`; `last` [num_rows]
        indexes each row's final token in the packed order; `width`: the longest row.
        """
        slots = rows + first_slot
        cached = slice(first_slot, first_slot + num_rows)

        def attend(layer_idx, q, k, v):  # q [N, Hq, D], k/v [N, Hkv, D] -> [N, Hq * D]
            keys, values = self.cache.layer(layer_idx, self.num_kv_heads, self.head_dim, k)
            keys[slots, :, positions] = k
            values[slots, :, positions] = v
            padded = q.new_zeros(num_rows, width, self.num_heads, self.head_dim)
            padded[rows, positions] = q
            out = F.scaled_dot_product_attention(
                padded.transpose(1, 2), keys[cached, :, :width], values[cached, :, :width],
                is_causal=True, scale=self.scaling, enable_gqa=True,
            )  # [n, Hq, T, D]
            return out.transpose(1, 2)[rows, positions].flatten(1)

        hidden = self._layers(ids, positions, attend)
        return self._logits(hidden[last])

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        """One token for each of slots [0, B): ids/positions [B]; attends over `length` positions; logits [B, V]."""
        b, hkv, d = ids.shape[0], self.num_kv_heads, self.head_dim
        rows = self._arange[:b]
        groups = self.num_heads // hkv
        # Position j of row r is visible when j <= positions[r]: one additive mask per step, laid out
        # as the scores [B * Hkv, G, L] so that it is the matmul's starting value in every layer.
        mask = torch.where(self._arange[:length] > positions.view(b, 1, 1, 1), float("-inf"), 0.0)  # [B, 1, 1, L]
        mask = mask.to(self.dtype).expand(b, hkv, groups, length).reshape(b * hkv, groups, length)

        def attend(layer_idx, q, k, v):
            keys, values = self.cache.layer(layer_idx, hkv, d, k)
            keys[rows, :, positions] = k
            values[rows, :, positions] = v
            q = q.reshape(b * hkv, groups, d)
            k_all = keys[:b, :, :length].reshape(b * hkv, length, d)  # a view: slots and heads merge
            scores = torch.baddbmm(mask, q, k_all.transpose(1, 2), alpha=self.scaling)  # [B*Hkv, G, L]
            v_all = values[:b, :, :length].reshape(b * hkv, length, d)
            return torch.bmm(softmax_float32(scores), v_all).view(b, -1)  # [B, Hq * D]

        return self._logits(self._layers(ids, positions, attend))

    # ------------------------------------------------------------------ the shared layer stack

    def _layers(self, ids: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """The decoder stack over tokens `ids` [N] at `positions` [N]; returns the final hidden states [N, H]."""
        inner = self.model.model
        h = inner.embed_tokens(ids)  # [N, H]
        n = h.shape[0]
        if self._rope is not None:
            cos, sin = self._rope[0][positions], self._rope[1][positions]  # [N, 1, D] each
        else:
            cos, sin = rope_tables(*inner.rotary_emb(h, positions.view(1, n)))
        hq, hkv = self.num_heads, self.num_kv_heads
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            x = rms_norm(h, layer.input_layernorm)
            qkv = self.qkv[i](x).view(n, hq + 2 * hkv, self.head_dim)
            if self.qk_norm:
                qk = torch.cat((rms_norm(qkv[:, :hq], a.q_norm), rms_norm(qkv[:, hq : hq + hkv], a.k_norm)), dim=1)
            else:
                qk = qkv[:, : hq + hkv]
            qk = rope(qk, cos, sin)  # [N, Hq + Hkv, D]
            out = attend(i, qk[:, :hq], qk[:, hq:], qkv[:, hq + hkv :])
            h = add_linear(h, out, a.o_proj)
            x = rms_norm(h, layer.post_attention_layernorm)
            gate, up = self.gate_up[i](x).chunk(2, dim=-1)
            h = add_linear(h, F.silu(gate) * up, layer.mlp.down_proj)
        return rms_norm(h, inner.norm)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        return F.linear(hidden, head.weight, head.bias)
