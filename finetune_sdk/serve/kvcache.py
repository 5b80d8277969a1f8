"""The continuous batch's KV cache: each layer's keys and values as a window onto larger buffers.

A plain ``DynamicCache`` concatenates every decode step's new column onto a fresh copy of the whole
layer, and dropping a finished row copies it again; with 32 rows of ~150 tokens that is hundreds of
megabytes allocated and copied per step, more than the step's arithmetic. Here the buffers keep spare
rows and columns, so a step writes one column in place, a finished row is overwritten by the rows
after it, and cutting padding columns only moves the window's start.

    buffer [row capacity, kv heads, column capacity, head dim]
            rows 0..n-1, columns start..end-1  ──>  keys / values the model attends over
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

SPARE_COLUMNS = 64  # columns added at the right when a layer grows: a reallocation every 64 decode steps at most
SPARE_ROWS = 8


class SlackLayer(DynamicLayer):
    """One layer's K/V for a batch of left-padded rows; grows by reallocating with spare room, never per step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self._k, self._v = keys.new_zeros(0, 0, 0, 0), values.new_zeros(0, 0, 0, 0)
        self.rows = self.start = self.end = 0
        self._reserve(keys.shape[0], 0, keys.shape[-2], like=keys)
        self._k[:keys.shape[0], :, :keys.shape[-2]] = keys
        self._v[:keys.shape[0], :, :keys.shape[-2]] = values
        self.rows, self.end = keys.shape[0], keys.shape[-2]
        self._expose()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the step's columns for every row (the model calls this once per layer per forward)."""
        n = key_states.shape[-2]
        self._reserve(self.rows, 0, n)
        self._k[:self.rows, :, self.end:self.end + n] = key_states
        self._v[:self.rows, :, self.end:self.end + n] = value_states
        self.end += n
        self._expose()
        return self.keys, self.values

    def append_row(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add one row ([1, heads, width, dim]) below the others, right-aligned; widen on the left if it is longer."""
        width = keys.shape[-2]
        wider = max(0, width - (self.end - self.start))
        self._reserve(self.rows + 1, wider, 0)
        if wider:
            self._k[:self.rows, :, self.start - wider:self.start] = 0  # stale columns from earlier cuts: padding now
            self._v[:self.rows, :, self.start - wider:self.start] = 0
            self.start -= wider
        row = self.rows
        self._k[row, :, self.start:self.end - width] = 0
        self._v[row, :, self.start:self.end - width] = 0
        self._k[row, :, self.end - width:self.end] = keys[0]
        self._v[row, :, self.end - width:self.end] = values[0]
        self.rows += 1
        self._expose()

    def keep(self, indices: list[int], cut: int) -> None:
        """Keep these rows (ascending), in place, and drop ``cut`` columns from the left."""
        for j, i in enumerate(indices):
            if i != j:
                self._k[j, :, self.start:self.end] = self._k[i, :, self.start:self.end]
                self._v[j, :, self.start:self.end] = self._v[i, :, self.start:self.end]
        self.rows = len(indices)
        self.start += cut
        self._expose()

    def _reserve(self, rows: int, left: int, right: int, like: torch.Tensor | None = None) -> None:
        """Make room for ``rows`` rows, ``left`` free columns before the window and ``right`` after it."""
        like = self._k if like is None else like
        if rows <= self._k.shape[0] and left <= self.start and self.end + right <= self._k.shape[-2]:
            return
        width = self.end - self.start
        shape = (max(rows, self._k.shape[0]) + SPARE_ROWS, like.shape[1], left + width + right + SPARE_COLUMNS,
                 like.shape[-1])
        k, v = like.new_zeros(shape), like.new_zeros(shape)
        if self.rows:
            k[:self.rows, :, left:left + width] = self._k[:self.rows, :, self.start:self.end]
            v[:self.rows, :, left:left + width] = self._v[:self.rows, :, self.start:self.end]
        self._k, self._v, self.start, self.end = k, v, left, left + width

    def _expose(self) -> None:
        self.keys = self._k[:self.rows, :, self.start:self.end]
        self.values = self._v[:self.rows, :, self.start:self.end]


def slack_cache(first_row: Cache) -> Cache:
    """A batch cache whose layers start as the prefilled cache of its first row."""
    return Cache(layers=[SlackLayer(layer.keys, layer.values) for layer in first_row.layers])
