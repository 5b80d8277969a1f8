"""How many tokens one packed micro-batch may hold: measured on the device, not guessed.

On CUDA a short probe runs forward and backward on one packed row of ``PROBE_TOKENS`` real training
tokens, reads the peak memory it took, and scales to the free memory (keeping a margin). On CPU and
Apple MPS memory is rarely the limit and one micro-batch holds the whole optimizer step.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..encoding import Encoded

PROBE_TOKENS = 4096
MAX_TOKENS = 65536  # beyond this a bigger micro-batch no longer speeds a step up
HEADROOM = 0.7  # share of the free memory a micro-batch may use (fragmentation, optimizer state)


def token_budget(model: Any, examples: Sequence[Encoded], device: torch.device, dtype: torch.dtype) -> int | None:
    """Tokens per packed micro-batch for this model on this device (None: no limit needed)."""
    if device.type != "cuda":
        return None
    from .loss import completion_loss
    from .packing import collate_packed

    longest = max(len(e.input_ids) for e in examples)
    probe = probe_row(examples)
    size = sum(len(e.input_ids) for e in probe)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate_packed(probe).items()}
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        loss, n = completion_loss(model, batch)
    (loss / max(n, 1)).backward()
    per_token = max(1.0, (torch.cuda.max_memory_allocated(device) - before) / size)
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return max(longest, min(MAX_TOKENS, int(HEADROOM * free / per_token)))


def probe_row(examples: Sequence[Encoded], tokens: int = PROBE_TOKENS) -> list[Encoded]:
    """The leading examples that fit in ``tokens``, and never none: a first example longer than that is
    probed alone (training has to fit it anyway)."""
    probe, size = [], 0
    for e in examples:
        if probe and size + len(e.input_ids) > tokens:
            break
        probe.append(e)
        size += len(e.input_ids)
    return probe
