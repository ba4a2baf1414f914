"""Variable-length attention for the trainer's packed micro-batches (`actor.attn_impl: varlen`).

transformers' `sdpa` path turns a packed row (position ids restarting at 0 for each sequence) into a
dense block-diagonal mask over the whole row, so attention costs the row's length squared and
rows are kept as short as the longest sequence, which leaves padding at their ends. `varlen`
splits every row where its position ids restart and runs causal SDPA on each sequence by itself:
no mask is built, each sequence attends only to its own tokens (masked blocks are never computed),
and because rows no longer need to be short, a micro-batch becomes one row without padding.

It is exact for every layout the trainer builds: a sequence starts wherever a position does not
continue the one before it (transformers' own rule for packed rows), and a padded row (positions
0..T-1, padding at its end) is one causal sequence whose padding no real token can see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from areal_lite.options import ATTN_IMPLS

VARLEN = "areal_varlen"  # the name registered in transformers' AttentionInterface


def resolve_attn_impl(name: str, device: torch.device) -> str:
    """The transformers attention implementation for `actor.attn_impl` on `device`.

    auto: varlen on CPU (measured faster there, docs/benchmarks.md "Packing"); sdpa on GPU, where a
    per-sequence loop costs kernel launches and a variable-length kernel (flash-attn) is the better tool.
    """
    if name not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {name!r}")
    if name == "auto":
        name = "varlen" if device.type == "cpu" else "sdpa"
    if name == "varlen":
        register_varlen()
        return VARLEN
    return "sdpa"


def register_varlen() -> None:
    """Make `VARLEN` a transformers attention implementation (idempotent; called at model load, not import)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)


def segments(position_ids: torch.Tensor, rows: int, length: int) -> list[tuple[int, int, int, int]]:
    """The sequences of `rows` rows of `length` tokens in row-major order, as (start, size, prefix,
    first position). A sequence starts wherever a position does not continue the one before it (and
    at every row's start). One whose first position p is above 0 continues a shared prompt: it sees
    the first p tokens of the last sequence of its row that started at 0, whose start is `prefix`
    (-1 for a sequence that starts at 0)."""
    n = rows * length
    pos = position_ids.expand(rows, length).reshape(-1)
    start = torch.ones(n, dtype=torch.bool, device=pos.device)
    start[1:] = pos[1:] != pos[:-1] + 1
    start[::length] = True
    bounds = torch.nonzero(start).reshape(-1).tolist() + [n]
    out, root, root_size = [], -1, 0
    for a, b, p in zip(bounds[:-1], bounds[1:], pos[bounds[:-1]].tolist()):
        if a % length == 0:
            root, root_size = -1, 0
        if p == 0:
            root, root_size = a, b - a
        elif root < 0 or p > root_size:
            raise ValueError(f"the sequence at flat position {a} starts at position {p}, but no sequence before it in "
                             f"its row starts at 0 with at least {p} tokens: position ids must restart at 0 for each "
                             "sequence, or continue the prompt of one before")
        out.append((a, b - a, -1 if p == 0 else root, p))
    return out


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, position_ids: torch.Tensor | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query `[R, H, L, D]`, key and value `[R, H_kv, L, D]`;
    returns `[R, L, H, D]`. `attention_mask` is ignored: no mask is built for this implementation
    (the causal structure comes from the position ids), and padding only ever sits at a row's end.
    A sequence that continues a shared prompt (`segments`) attends to the prompt, then causally to itself."""
    if kwargs.get("softcap") is not None:
        raise ValueError("actor.attn_impl=varlen does not support attention logit soft-capping; use sdpa")
    rows, heads, length, dim = query.shape
    segs = (segments(position_ids, rows, length) if position_ids is not None
            else [(r * length, length, -1, 0) for r in range(rows)])
    span = max(first + size for _, size, _, first in segs)
    if sliding_window is not None and span > sliding_window:
        raise ValueError(f"a sequence of {span} tokens exceeds the model's sliding window ({sliding_window}), which "
                         "actor.attn_impl=varlen does not apply; use sdpa")

    def flat(x: torch.Tensor) -> torch.Tensor:  # [R, h, L, D] -> [h, R·L, D] (a view for one row)
        return x[0] if rows == 1 else x.transpose(0, 1).reshape(x.shape[1], rows * length, dim)

    # NOTE: `split`, not slicing: its backward concatenates the pieces' gradients once, where each
    # slice's backward would fill a zero tensor of the whole row.
    qs, ks, vs = (flat(x).split([size for _, size, _, _ in segs], dim=1) for x in (query, key, value))
    piece = {start: i for i, (start, _, _, _) in enumerate(segs)}
    gqa = key.shape[1] != heads
    outs = []
    for q, k, v, (_, size, prefix, p) in zip(qs, ks, vs, segs):
        mask = None
        if prefix >= 0:  # keys: the prompt's p tokens, then its own; query j (position p + j) sees keys 0..p + j
            k = torch.cat([ks[piece[prefix]][:, :p], k], dim=1)
            v = torch.cat([vs[piece[prefix]][:, :p], v], dim=1)
            mask = torch.ones(size, p + size, dtype=torch.bool, device=q.device).tril(p)
        outs.append(F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, dropout_p=dropout,
                                                   is_causal=mask is None, scale=scaling, enable_gqa=gqa)[0])
    out = torch.cat(outs, dim=1)  # [H, R·L, D]
    return out.view(heads, rows, length, dim).permute(1, 2, 0, 3).contiguous(), None
