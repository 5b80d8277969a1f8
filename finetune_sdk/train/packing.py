"""Padding-free micro-batches: examples laid end to end in one row, up to a token budget.

A packed row carries ``position_ids`` that restart at 0 for every example and the cumulative
example lengths (``cu_seq_lens``), so attention never crosses an example boundary (see
attention.py) and the loss never predicts one example's first token from the previous one.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..encoding import Encoded


def split_by_budget(indices: Sequence[int], lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """Micro-batches of ``indices`` whose lengths sum to at most ``budget`` (first fit, longest first).

    ``None`` keeps everything in one micro-batch; an example longer than the budget gets its own.
    """
    if budget is None:
        return [list(indices)]
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: -lengths[i]):
        slot = next((b for b, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            bins.append([i])
            room.append(budget - lengths[i])
        else:
            bins[slot].append(i)
            room[slot] -= lengths[i]
    return bins


def collate_packed(examples: Sequence[Encoded]) -> dict[str, Any]:
    """One row holding every example: ids, labels, restarting positions and cumulative lengths."""
    import torch

    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    positions = [p for e in examples for p in range(len(e.input_ids))]
    bounds = [0]
    for e in examples:
        bounds.append(bounds[-1] + len(e.input_ids))
    cu = torch.tensor(bounds, dtype=torch.int32)
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]), "cu_seq_lens": cu,
            "max_length": max(len(e.input_ids) for e in examples)}


def is_packed(batch: dict[str, Any]) -> bool:
    return "cu_seq_lens" in batch


def decoder_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the decoder's forward: a padding mask, or packed positions and lengths."""
    if not is_packed(batch):
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    cu, longest = batch["cu_seq_lens"], batch["max_length"]
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def next_token_is_real(batch: dict[str, Any]) -> Any:
    """Bool (rows, width-1): position t's next token belongs to the same example (not pad, not a new one)."""
    if is_packed(batch):
        return batch["position_ids"][:, 1:] != 0
    return batch["attention_mask"][:, 1:].bool()


def real_tokens(batch: dict[str, Any]) -> int:
    return batch["input_ids"].numel() if is_packed(batch) else int(batch["attention_mask"].sum())
