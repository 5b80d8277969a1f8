"""Time a few real training steps of a job on this machine, to extrapolate the whole run from.

The probe runs the training program's own pieces (model load, LoRA wrapping, frozen-layer cache,
completion loss, AdamW step) on a handful of the job's batches, picked across the range of batch
sizes in tokens, and fits ``seconds = fixed + per_token * padded_tokens`` to them. Nothing is saved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..encoding import Encoded
from ..spec import JobSpec
from .batching import collate
from .frozen_cache import FrozenLayerCache
from .loss import completion_loss
from .program import _autocast, _load_for_method, _to, evaluate_loss, pick_device, pick_dtype, prepare_model


@dataclass
class ProbeTimings:
    """What one probe measured; every rate is seconds on the probing device."""

    device: str
    load_seconds: float
    step_fixed_seconds: float
    step_seconds_per_token: float
    cache_seconds_per_token: float | None
    eval_seconds_per_token: float
    steps_timed: int


def probe(spec: JobSpec, ref: object, examples: Sequence[Encoded], batches: Sequence[Sequence[int]],
          eval_examples: Sequence[Encoded], pad_id: int, steps: int = 6) -> ProbeTimings:
    """Run one warm-up step and ``steps`` timed steps on batches spread over ``batches``' token sizes."""
    device = pick_device(spec.training.device)
    dtype = pick_dtype(spec.training.dtype, device)
    started = _clock(device)
    model = prepare_model(spec, _load_for_method(spec, ref, dtype, device))
    model.train()
    load_seconds = _clock(device) - started
    chosen = _spread(batches, examples, steps + 1)
    used = sorted({i for b in chosen for i in b})
    local = {i: k for k, i in enumerate(used)}
    subset = [examples[i] for i in used]
    cache, cache_rate = _build_cache(spec, model, subset, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.training.learning_rate)
    times, sizes = [], []
    for batch_idx in chosen:
        idx = [local[i] for i in batch_idx]
        began = _clock(device)
        batch = _to(collate([subset[i] for i in idx], pad_id), device)
        with _autocast(device, dtype):
            hidden = cache.forward(cache.batch_hidden(idx, batch["input_ids"].shape[1], device),
                                   batch["attention_mask"]) if cache else None
            loss, n = completion_loss(model, batch, prompt_loss_weight=spec.training.prompt_loss_weight, hidden=hidden)
        (loss / max(n, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, spec.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(_clock(device) - began)
        sizes.append(batch["input_ids"].numel())
    fixed, per_token = _fit(times[1:], sizes[1:])  # the first step warms up
    sample = list(eval_examples[:8])
    began = _clock(device)
    evaluate_loss(model, sample, pad_id, device, dtype)
    eval_rate = (_clock(device) - began) / max(1, sum(len(e.input_ids) for e in sample))
    return ProbeTimings(str(device), load_seconds, fixed, per_token, cache_rate, eval_rate, len(times) - 1)


def _build_cache(spec: JobSpec, model: object, examples: list[Encoded],
                 device: torch.device) -> tuple[FrozenLayerCache | None, float | None]:
    first = min(spec.lora.layers) if spec.method != "full" and spec.lora.layers else 0
    if first == 0 or not spec.training.cache_frozen_layers:
        return None, None
    cache = FrozenLayerCache(model, first)
    began = _clock(device)
    cache.build(examples, device)
    return cache, (_clock(device) - began) / sum(len(e.input_ids) for e in examples)


def _spread(batches: Sequence[Sequence[int]], examples: Sequence[Encoded], count: int) -> list[list[int]]:
    """``count`` batches at evenly spaced ranks of padded size (the median first, as the warm-up)."""
    ranked = sorted(batches, key=lambda b: len(b) * max(len(examples[i].input_ids) for i in b))
    if len(ranked) <= count:
        return [list(b) for b in ranked]
    picks = [round(k * (len(ranked) - 1) / (count - 2)) for k in range(count - 1)]
    return [list(ranked[len(ranked) // 2])] + [list(ranked[p]) for p in picks]


def _fit(times: list[float], sizes: list[int]) -> tuple[float, float]:
    """Least squares ``time = fixed + per_token * size``; a plain ratio when that is ill-posed."""
    n = len(times)
    mean_s, mean_t = sum(sizes) / n, sum(times) / n
    spread = sum((s - mean_s) ** 2 for s in sizes)
    if n >= 3 and spread > 0:
        per_token = sum((s - mean_s) * (t - mean_t) for s, t in zip(sizes, times)) / spread
        fixed = mean_t - per_token * mean_s
        if per_token > 0 and fixed >= 0:
            return fixed, per_token
    return 0.0, sum(times) / sum(sizes)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
