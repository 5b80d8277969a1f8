"""Cache the hidden states that enter the lowest adapted layer.

When LoRA adapts only the top layers (``LoraSettings(layers=[...])``), everything below them is
frozen: its output for a given example never changes during training. Those hidden states are
computed once, kept in memory, and every training step then runs only the adapted layers, forward
and backward. The cache is checked against the full model on one batch before it is used; when the
two disagree (an architecture that post-processes its embeddings, dropout in frozen layers), it is
switched off with a warning and training runs the plain way.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from ..encoding import Encoded


class _Captured(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


class FrozenLayerCache:
    """Per-example hidden states at the input of decoder layer ``first``, and a forward from there."""

    def __init__(self, model: Any, first: int) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.first = first
        self.states: list[torch.Tensor] = []

    @torch.no_grad()
    def build(self, examples: Sequence[Encoded], device: torch.device, batch_size: int = 16) -> None:
        """Run the frozen layers once over every example (stopping at layer ``first``)."""
        from .batching import collate, length_sorted_batches

        self.states = [torch.empty(0)] * len(examples)
        hook = self.decoder.layers[self.first].register_forward_pre_hook(_capture, with_kwargs=True)
        try:
            for idx in length_sorted_batches([len(e.input_ids) for e in examples], batch_size):
                batch = collate([examples[i] for i in idx], pad_id=0)
                try:
                    self.decoder(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                                 use_cache=False)
                except _Captured as captured:
                    for row, i in enumerate(idx):
                        self.states[i] = captured.hidden[row, :len(examples[i].input_ids)].to("cpu")
        finally:
            hook.remove()

    def batch_hidden(self, indices: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
        """The cached states of ``indices``, right-padded with zeros to ``width``."""
        first = self.states[indices[0]]
        out = torch.zeros((len(indices), width, first.shape[-1]), dtype=first.dtype)
        for row, i in enumerate(indices):
            out[row, :len(self.states[i])] = self.states[i]
        return out.to(device)

    def last_hidden(self, indices: Sequence[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The last hidden state for ``batch``, whose rows are the cached examples ``indices``."""
        ids = batch["input_ids"]
        return self.forward(self.batch_hidden(indices, ids.shape[1], ids.device), batch["attention_mask"])

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state, running only layers ``first`` and up on the cached input."""
        layers = self.decoder.layers
        self.decoder.layers = torch.nn.ModuleList(list(layers)[self.first:])
        try:
            return self.decoder(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).last_hidden_state
        finally:
            self.decoder.layers = layers

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


def _capture(module: Any, args: tuple, kwargs: dict) -> None:
    raise _Captured(args[0] if args else kwargs["hidden_states"])
