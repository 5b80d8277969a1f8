"""Completion-only loss that runs the output head on trained positions only, fused with cross-entropy.

The prompt is most of every example, and the head (hidden x vocab) is a large share of a small
model's compute; projecting only the positions whose next token is trained skips that work. The
head and the cross-entropy run together in chunks of positions (Liger's kernel on CUDA when it is
installed), so the logits of a 150k-token vocabulary are never held for a whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..encoding import IGNORE_INDEX
from .packing import decoder_inputs, next_token_is_real

LOGITS_PER_CHUNK = 2**26  # positions x vocab held at once (256 MB in fp32)


def supports_selective_head(model: Any) -> bool:
    """False for architectures that post-process logits (soft-capping, scaling) inside forward()."""
    config = getattr(model, "config", None)
    return not any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))


def completion_loss(model: Any, batch: dict[str, Any], *, prompt_loss_weight: float = 0.0,
                    hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over trained positions, and the number of those positions.

    ``batch`` is padded (``attention_mask``) or packed (see packing.py). With
    ``prompt_loss_weight > 0`` the prompt's real tokens are also predicted, each weighted by it
    (labels are unchanged: this is an extra, down-weighted language-modelling term). ``hidden`` is
    the decoder's last hidden state when the caller computed it (see frozen_cache.py).
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    if prompt_loss_weight > 0:
        select = keep | next_token_is_real(batch)
        targets = torch.where(keep, labels, batch["input_ids"][:, 1:])[select]
        weights = torch.where(keep, 1.0, prompt_loss_weight)[select]
    else:
        select, targets, weights = keep, labels[keep], None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hidden is not None or supports_selective_head(base):
        if hidden is None:
            hidden = base.get_decoder()(**decoder_inputs(batch)).last_hidden_state
        return linear_cross_entropy(hidden[:, :-1][select], base.get_output_embeddings(), targets, weights), n
    logits = model(**decoder_inputs(batch)).logits[:, :-1][select]
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    return (losses * weights).sum() if weights is not None else losses.sum(), n


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over rows of (weighted) cross-entropy of ``head(hidden)``, without keeping all the logits."""
    weight, bias = head.weight, getattr(head, "bias", None)
    plain = bias is not None or type(head) is not torch.nn.Linear or not torch.is_grad_enabled()
    if plain:  # biased or adapted heads, and evaluation: the plain way
        losses = F.cross_entropy(head(hidden).float(), targets, reduction="none")
        return (losses * weights).sum() if weights is not None else losses.sum()
    liger = _liger() if hidden.is_cuda and weights is None else None
    if liger is not None:
        out = liger(input=hidden, weight=weight, target=targets, reduction="sum")
        return out[0] if isinstance(out, tuple) else out  # some versions also return the z-loss
    chunk = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, weights, chunk)


class _LinearCrossEntropy(torch.autograd.Function):
    """Head + cross-entropy per chunk of rows; gradients are computed in the forward pass and kept."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                weights: torch.Tensor | None, chunk: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            losses = lse - logits.gather(1, t[:, None]).squeeze(1)
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(len(t), device=t.device), t] -= 1
            if weights is not None:
                w = weights[start:start + chunk]
                losses, grad = losses * w, grad.mul_(w[:, None])
            total += losses.sum()
            grad = grad.to(h.dtype)
            grad_hidden[start:start + chunk] = grad @ weight
            if grad_weight is not None:
                grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_total.to(grad_hidden.dtype)
        return (grad_hidden * scale,
                (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None,
                None, None, None)


def _liger():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy
