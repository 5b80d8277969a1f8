"""Completion-only loss that runs the output head on trained positions only.

The prompt is most of every example, and the head (hidden x vocab) is a large share of a small
model's compute; projecting only the positions whose next token is trained skips that work and never
materialises the full logits tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..encoding import IGNORE_INDEX


def supports_selective_head(model: Any) -> bool:
    """False for architectures that post-process logits (soft-capping, scaling) inside forward()."""
    config = getattr(model, "config", None)
    return not any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))


def completion_loss(model: Any, batch: dict[str, torch.Tensor], *, reduction: str = "sum") -> tuple[torch.Tensor, int]:
    """Summed (or mean) next-token loss over trained positions, and the number of those positions."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if supports_selective_head(base):
        hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    loss = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
    return (loss if reduction == "sum" else loss / max(n, 1)), n
