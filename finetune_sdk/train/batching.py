"""Length-grouped batches with dynamic padding: little padding, no fixed 512-token rows.

Indices are shuffled per epoch (seeded), cut into pools of many batches, sorted by length inside each
pool and batched, so neighbours have similar lengths; the batch order is shuffled again.
"""

from __future__ import annotations

import random
from typing import Sequence

from ..encoding import IGNORE_INDEX, Encoded

POOL_BATCHES = 32


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch; the same seed and epoch give the same list."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def right_padded(rows: Sequence[Sequence[int]], fill: int) -> "torch.Tensor":  # noqa: F821
    """The rows as one [rows, longest row] tensor, right-padded with ``fill``."""
    import torch

    out = torch.full((len(rows), max(len(r) for r in rows)), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """Right-pad to the longest example; padding gets attention 0 and label -100 (never trained)."""
    return {"input_ids": right_padded([e.input_ids for e in examples], pad_id),
            "attention_mask": right_padded([[1] * len(e.input_ids) for e in examples], 0),
            "labels": right_padded([e.labels for e in examples], IGNORE_INDEX)}


def padding_efficiency(examples: Sequence[Encoded], batches: Sequence[Sequence[int]]) -> float:
    """Real (non-pad) tokens / all tokens in the padded batches."""
    real = sum(len(examples[i].input_ids) for b in batches for i in b)
    total = sum(len(b) * max(len(examples[i].input_ids) for i in b) for b in batches)
    return real / total if total else 1.0


def length_sorted_batches(lengths: Sequence[int], batch_size: int = 16) -> list[list[int]]:
    """Indices sorted by length and cut into batches: how the no-grad passes (evaluation, the frozen-layer
    cache) walk their examples, so neighbours pad little."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def sorted_padded_tokens(lengths: Sequence[int], batch_size: int = 16) -> int:
    """Tokens with padding in ``length_sorted_batches``: what a no-grad pass over these lengths computes."""
    return sum(len(b) * max(lengths[i] for i in b) for b in length_sorted_batches(lengths, batch_size))
