"""Attention for packed rows: each example attends only to itself, without an O(tokens^2) mask.

Registered with transformers as ``finetune_sdk_varlen``. On CUDA (bf16/fp16) it calls PyTorch's
variable-length flash attention (``torch.nn.attention.varlen``); elsewhere it runs causal SDPA on each example's
slice. Padded batches (evaluation, the frozen-layer cache) fall through to transformers' SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "finetune_sdk_varlen"


def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention interface: (batch, heads, tokens, dim) in, (batch, tokens, heads, dim) out."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one row holding every example")
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _cuda_varlen() is not None:
        longest = int(kwargs["max_length_q"])
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (tokens, heads, dim)
        out = _cuda_varlen()(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0),
                             enable_gqa=key.shape[1] != query.shape[1])
        return out.unsqueeze(0), None
    bounds = cu.tolist()
    gqa = key.shape[1] != query.shape[1]
    pieces = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                             dropout_p=dropout, scale=scaling, enable_gqa=gqa)
              for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def _cuda_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's mask for padded batches; none at all for packed rows (the lengths bound attention)."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def use_varlen_attention(model: Any) -> None:
    """Register the packed attention with transformers and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, _mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)
