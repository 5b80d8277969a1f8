"""Cache the hidden states that enter the lowest adapted layer.

When LoRA adapts only the top layers (``LoraSettings(layers=[...])``), everything below them is
frozen: its output for a given example never changes during training. Those hidden states are
computed once, kept in memory, and every training step then runs only the adapted layers, forward
and backward. The cache is checked against the full model on one batch before it is used; when the
two disagree (an architecture that post-processes its embeddings, dropout in frozen layers), it is
switched off with a warning and training runs the plain way.

A chat template with a fixed system turn starts every example with the same tokens, and a causal
model's states over them are the same in every example. When all examples share such a prefix, it is
run once: the frozen layers keep its keys and values and each example's states start after it, and
each training step runs the prefix through the adapted layers once for the whole batch, whose rows
then attend to its keys and values instead of each computing their own copy.

    build:  prefix ──frozen layers──> prefix state + frozen K/V
            suffix_i (after the frozen K/V) ──frozen layers──> state_i
    step:   prefix state ──adapted layers, 1 row──> K/V ──expanded to the batch──┐
            state_i, ... ──adapted layers, B rows, attending to the prefix K/V──> last hidden
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..encoding import Encoded

#: A shared prefix shorter than this is not worth a separate pass.
MIN_SHARED_PREFIX = 8


class _Captured(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


class FrozenLayerCache:
    """Per-example hidden states at the input of decoder layer ``first``, and a forward from there."""

    def __init__(self, model: Any, first: int, *, share_prefix: bool = True) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.first = first
        self.depth = len(self.decoder.layers)
        self.share_prefix = share_prefix
        self.states: list[torch.Tensor] = []  # each example's states after the shared prefix
        self.prefix = 0  # tokens every cached example starts with
        self._prefix_state = torch.empty(0)  # [1, prefix, hidden] at the input of layer ``first``
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # the frozen layers' K/V over the prefix

    @torch.no_grad()
    def build(self, examples: Sequence[Encoded], device: torch.device, batch_size: int = 16) -> None:
        """Run the frozen layers once over every example (stopping at layer ``first``)."""
        from .batching import length_sorted_batches, right_padded

        self.prefix = shared_prefix_length([e.input_ids for e in examples]) if self.share_prefix else 0
        if self.prefix and not self._run_prefix(examples[0].input_ids, device):
            self.prefix = 0
        self.states = [torch.empty(0)] * len(examples)
        for idx in length_sorted_batches([len(e.input_ids) for e in examples], batch_size):
            rows = [examples[i].input_ids[self.prefix:] for i in idx]
            ids, mask = right_padded(rows, 0).to(device), right_padded([[1] * len(r) for r in rows], 0).to(device)
            hidden = self._frozen_pass(ids, mask, self._frozen_prefix(len(idx)) if self.prefix else None)
            for row, i in enumerate(idx):
                self.states[i] = hidden[row, :len(examples[i].input_ids) - self.prefix].to("cpu")

    def batch_hidden(self, indices: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
        """The cached states of ``indices`` (after the shared prefix), right-padded with zeros to ``width``."""
        first = self.states[indices[0]]
        out = torch.zeros((len(indices), width, first.shape[-1]), dtype=first.dtype)
        for row, i in enumerate(indices):
            out[row, :len(self.states[i])] = self.states[i]
        return out.to(device)

    def last_hidden(self, indices: Sequence[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The last hidden state for ``batch``, whose rows are the cached examples ``indices``."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = self.batch_hidden(indices, ids.shape[1] - self.prefix, ids.device)
        return self._after_prefix(hidden, mask) if self.prefix else self.forward(hidden, mask)

    def _after_prefix(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state of the prefix followed by each row of ``hidden``: the prefix runs through the
        adapted layers once, then every row runs after its keys and values (``mask`` covers both)."""
        rows, device = hidden.shape[0], hidden.device
        with self._adapted_layers_only():
            kv = Cache(layers=[DynamicLayer() for _ in range(self.depth)])
            prefix_out = self.decoder(inputs_embeds=self._prefix_state.to(device, hidden.dtype),
                                      position_ids=torch.arange(self.prefix, device=device)[None],
                                      cache=kv, use_cache=True).last_hidden_state
            adapted = [_filled(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
                       for layer in kv.layers[self.first:]]
            # the frozen layers do not run here; their prefix K/V tell the model how long the past is
            past = Cache(layers=self._frozen_prefix(rows).layers + adapted)
            positions = torch.arange(self.prefix, mask.shape[1], device=device)[None]
            out = self.decoder(inputs_embeds=hidden, attention_mask=mask, position_ids=positions, cache=past,
                               use_cache=True).last_hidden_state
        return torch.cat([prefix_out.expand(rows, -1, -1), out], dim=1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state, running only layers ``first`` and up on the cached input (no shared prefix)."""
        with self._adapted_layers_only():
            return self.decoder(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).last_hidden_state

    @torch.no_grad()
    def agrees_with_full_model(self, indices: Sequence[int], batch: dict[str, torch.Tensor]) -> bool:
        """True when the cached path reproduces the full model's output on this batch (in eval mode)."""
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            return self._agrees(indices, batch)
        finally:
            self.decoder.train(was_training)

    def _agrees(self, indices: Sequence[int], batch: dict[str, torch.Tensor]) -> bool:
        full = self.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            use_cache=False).last_hidden_state
        cached = self.last_hidden(indices, batch)
        mask = batch["attention_mask"].bool()
        ok = torch.allclose(full[mask], cached[mask], rtol=1e-3, atol=1e-3)
        if not ok:
            warnings.warn("the frozen-layer cache does not reproduce this model's outputs; training without it",
                          stacklevel=2)
        return ok

    def _run_prefix(self, example: Sequence[int], device: torch.device) -> bool:
        """Keep the prefix's state and frozen K/V; False (nothing kept) when a row continued from them does not
        match the same row run whole, as with a transformers version whose models take no ``cache``."""
        ids = torch.tensor([list(example)], device=device)
        try:
            kv = Cache(layers=[DynamicLayer() for _ in range(self.first)])
            self._prefix_state = self._frozen_pass(ids[:, :self.prefix], None, kv).to("cpu")
            self._prefix_kv = [(layer.keys, layer.values) for layer in kv.layers]
            rest = ids[:, self.prefix:]
            continued = self._frozen_pass(rest, torch.ones_like(rest), self._frozen_prefix(1))
        except Exception:  # any failure of this shortcut means running every row whole, as without it
            continued = None
        if continued is None or not torch.allclose(self._frozen_pass(ids, None, None)[:, self.prefix:], continued,
                                                   rtol=1e-4, atol=1e-4):
            self._prefix_state, self._prefix_kv = torch.empty(0), []
            return False
        return True

    def _frozen_pass(self, ids: torch.Tensor, mask: torch.Tensor | None, kv: Cache | None) -> torch.Tensor:
        """The states entering layer ``first`` for ``ids`` (after the K/V in ``kv``, which the pass extends)."""
        past = kv.get_seq_length() if kv is not None else 0
        if mask is not None and past:
            mask = torch.cat([mask.new_ones(mask.shape[0], past), mask], dim=1)
        positions = torch.arange(past, past + ids.shape[1], device=ids.device)[None]
        hook = self.decoder.layers[self.first].register_forward_pre_hook(_capture, with_kwargs=True)
        try:
            self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions, cache=kv, use_cache=kv is not None)
        except _Captured as captured:
            return captured.hidden
        finally:
            hook.remove()
        raise RuntimeError(f"decoder layer {self.first} was never reached")

    def _frozen_prefix(self, rows: int) -> Cache:
        """The frozen layers' prefix K/V for ``rows`` rows (views, not copies)."""
        return Cache(layers=[_filled(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                             for k, v in self._prefix_kv])

    @contextlib.contextmanager
    def _adapted_layers_only(self) -> Iterator[None]:
        """The decoder runs layers ``first`` and up (each keeps its index into a cache)."""
        layers = self.decoder.layers
        self.decoder.layers = torch.nn.ModuleList(list(layers)[self.first:])
        try:
            yield
        finally:
            self.decoder.layers = layers


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """The tokens every sequence starts with, leaving at least one after them; 0 when under MIN_SHARED_PREFIX."""
    if not sequences:
        return 0
    first, limit = sequences[0], min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def _filled(keys: torch.Tensor, values: torch.Tensor) -> DynamicLayer:
    """A cache layer holding these keys and values as they are."""
    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer


def _capture(module: Any, args: tuple, kwargs: dict) -> None:
    raise _Captured(args[0] if args else kwargs["hidden_states"])
