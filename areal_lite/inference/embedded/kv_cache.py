"""A slot KV cache: one row of every layer's K/V buffer per running request.

The engine keeps the running requests packed in slots 0..B-1, so a batched decode reads one
contiguous slice. Two users: the engine's own decoder (`decoder.py`) writes and reads the buffers
of `layer(i, ...)` directly; a model the decoder does not support runs its own forward with this
cache standing in for transformers' Cache: before each forward the engine sets where the step's
new keys go (`set_step`), and the model's attention layers call `update(k, v, layer_idx)`, which
writes those keys and returns the slice to attend over. The attention mask is passed explicitly
(a 4-D boolean mask per layer type), so the model never asks the cache for lengths.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    """K/V buffers [slots, kv_heads, length, head_dim] per layer, grown on demand."""

    def __init__(self, num_layers: int, max_slots: int, max_length: int, *, device: torch.device | str = "cpu",
                 align: int = 64):
        self.num_layers = num_layers
        self.max_slots = max_slots
        self.max_length = max_length
        self.device = torch.device(device)
        self.align = align
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length_capacity = 0
        # The current step (set by `set_step`).
        self._w_slot = self._w_pos = self._w_row = self._w_col = None
        self._r_start = self._r_end = self._r_len = 0

    # ------------------------------------------------------------------ engine side

    def reserve(self, length: int) -> None:
        """Make room for `length` positions per slot: at least a quarter more, in multiples of
        `align`, capped at max_length.

        Small steps keep the capacity close to the longest running sequence: decode attention
        reads positions [0, L) of every slot, and the less unused capacity lies between slots, the
        faster that read streams (a capacity of 2L slowed the 25M benchmark model's decode
        attention by ~25% over one of L). Each growth copies the cache once.
        """
        if length <= self.length_capacity:
            return
        cap = max(length, self.length_capacity * 5 // 4)
        self.length_capacity = min(-(-cap // self.align) * self.align, self.max_length)
        assert self.length_capacity >= length, (length, self.max_length)

    def set_step(
        self,
        *,
        write_slots: torch.Tensor,
        write_positions: torch.Tensor,
        source_rows: torch.Tensor,
        source_cols: torch.Tensor,
        read_start: int,
        read_end: int,
        read_length: int,
    ) -> None:
        """Where this forward's keys go and what it attends over.

        Token (source_rows[i], source_cols[i]) of the step's [B, T] input is written to slot
        write_slots[i] at position write_positions[i]; attention reads slots [read_start, read_end)
        over positions [0, read_length).
        """
        self._w_slot, self._w_pos = write_slots, write_positions
        self._w_row, self._w_col = source_rows, source_cols
        self._r_start, self._r_end, self._r_len = read_start, read_end, read_length

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (packing after a finish)."""
        for buf in (*self.keys, *self.values):
            if buf is not None:
                buf[dst, :, :length] = buf[src, :, :length]

    def clear(self) -> None:
        """Drop every buffer (flush_cache, or a model whose shapes changed)."""
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        self.length_capacity = 0

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (*self.keys, *self.values) if b is not None)

    # ------------------------------------------------------------------ model side (transformers Cache API)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Called by each attention layer: key_states/value_states [B, kv_heads, T, head_dim]."""
        keys, values = self.layer(layer_idx, key_states.shape[1], key_states.shape[3], key_states)
        keys[self._w_slot, :, self._w_pos] = key_states[self._w_row, :, self._w_col]  # [N, H, D]
        values[self._w_slot, :, self._w_pos] = value_states[self._w_row, :, self._w_col]
        return (
            keys[self._r_start : self._r_end, :, : self._r_len],
            values[self._r_start : self._r_end, :, : self._r_len],
        )

    def layer(self, layer_idx: int, heads: int, dim: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer_idx`'s K and V buffers [slots, heads, capacity, dim] in like's dtype, (re)allocated
        on first use and after `reserve` grew the capacity (the old positions are kept)."""
        keys = self.keys[layer_idx]
        if keys is None or keys.shape[2] < self.length_capacity:
            shape = (self.max_slots, heads, self.length_capacity, dim)
            new_k = torch.zeros(shape, dtype=like.dtype, device=like.device)
            new_v = torch.zeros(shape, dtype=like.dtype, device=like.device)
            if keys is not None:
                old = keys.shape[2]
                new_k[:, :, :old] = keys
                new_v[:, :, :old] = self.values[layer_idx]
            self.keys[layer_idx], self.values[layer_idx] = new_k, new_v
        return self.keys[layer_idx], self.values[layer_idx]

    # Cache-protocol queries some models make; masks and positions are always explicit here.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._r_len

    @property
    def is_compileable(self) -> bool:
        return False
