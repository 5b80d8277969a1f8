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


def completion_loss(model: Any, batch: dict[str, torch.Tensor], *, prompt_loss_weight: float = 0.0,
                    hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over trained positions, and the number of those positions.

    With ``prompt_loss_weight > 0`` the prompt's real tokens are also predicted, each weighted by it
    (labels are unchanged: this is an extra, down-weighted language-modelling term). ``hidden`` is
    the decoder's last hidden state when the caller computed it (see frozen_cache.py).
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    if prompt_loss_weight > 0:
        select = keep | batch["attention_mask"][:, 1:].bool()
        targets = torch.where(keep, labels, batch["input_ids"][:, 1:])[select]
        weights = torch.where(keep, 1.0, prompt_loss_weight)[select]
    else:
        select, targets, weights = keep, labels[keep], None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hidden is not None or supports_selective_head(base):
        if hidden is None:
            hidden = base.get_decoder()(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][select])
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][select]
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    return (losses * weights).sum() if weights is not None else losses.sum(), n
