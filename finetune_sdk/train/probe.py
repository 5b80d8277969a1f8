"""Time a few real training steps of a job on this machine, to extrapolate the whole run from.

The probe runs the training program's own pieces (model load, LoRA wrapping, frozen-layer cache,
completion loss, the program's AdamW, evaluation) on a handful of the job's batches, picked across
the range of batch sizes in tokens, and fits ``seconds = fixed + per_token * padded_tokens`` to them.
Each piece runs once untimed first: a CPU's first pass over new, larger tensors (fresh memory pages,
kernel selection) is several times slower than the steady state the real run spends its time in.
Nothing is saved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..encoding import Encoded
from ..spec import JobSpec
from .batching import collate, sorted_padded_tokens
from .frozen_cache import FrozenLayerCache
from .program import (_load_for_method, _to, apply_update, backward_micro_batch, evaluate_loss,
                      make_optimizer, pick_device, pick_dtype, prepare_model)

EVAL_SAMPLE = 16


@dataclass
class ProbeTimings:
    """What one probe measured: seconds on the probing device, rates per padded token."""

    device: str
    load_seconds: float
    step_fixed_seconds: float
    step_seconds_per_token: float
    cache_seconds_per_token: float | None
    eval_seconds_per_token: float
    steps_timed: int


def probe(spec: JobSpec, ref: object, examples: Sequence[Encoded], batches: Sequence[Sequence[int]],
          eval_examples: Sequence[Encoded], pad_id: int, steps: int = 6) -> ProbeTimings:
    """Warm up on the largest batch, then time ``steps`` batches spread over ``batches``' token sizes."""
    device = pick_device(spec.training.device)
    dtype = pick_dtype(spec.training.dtype, device)
    started = _clock(device)
    model = prepare_model(spec, _load_for_method(spec, ref, dtype, device))
    model.train()
    load_seconds = _clock(device) - started

    chosen = _spread(batches, examples, steps)
    used = sorted({i for b in chosen for i in b})
    local = {i: k for k, i in enumerate(used)}
    order = sorted(range(len(eval_examples)), key=lambda i: len(eval_examples[i].input_ids))
    sample = [eval_examples[i] for i in order[::max(1, len(order) // EVAL_SAMPLE)][:EVAL_SAMPLE]]
    subset = [examples[i] for i in used] + sample
    cache, cache_rate = _build_cache(spec, model, subset, device)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, spec.training, device)
    times, sizes = [], []
    for k, batch_idx in enumerate([max(chosen, key=lambda b: _padded(b, examples))] + chosen):
        began = _clock(device)
        size = _step(spec, model, cache, [subset[local[i]] for i in batch_idx], [local[i] for i in batch_idx],
                     params, optimizer, pad_id, device, dtype)
        if k:  # the first pass warms up
            times.append(_clock(device) - began)
            sizes.append(size)
    fixed, per_token = _fit(times, sizes)

    eval_rate = 0.0
    if sample:
        evaluate_loss(model, sample[:2], pad_id, device, dtype, cache=cache, cache_offset=len(used))
        began = _clock(device)
        evaluate_loss(model, sample, pad_id, device, dtype, cache=cache, cache_offset=len(used))
        eval_rate = (_clock(device) - began) / sorted_padded_tokens([len(e.input_ids) for e in sample])
    return ProbeTimings(str(device), load_seconds, fixed, per_token, cache_rate, eval_rate, len(times))


def _step(spec: JobSpec, model: object, cache: FrozenLayerCache | None, batch_examples: list[Encoded],
          cache_idx: list[int], params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, pad_id: int,
          device: torch.device, dtype: torch.dtype) -> int:
    """One optimizer step on one batch, as the program runs it; returns its padded tokens."""
    batch = _to(collate(batch_examples, pad_id), device)
    trained = max(1, sum(e.n_trained for e in batch_examples))
    backward_micro_batch(model, batch, spec.training, dtype, trained, cache=cache, cache_idx=cache_idx)
    apply_update(params, optimizer, spec.training)
    return batch["input_ids"].numel()


def _build_cache(spec: JobSpec, model: object, examples: list[Encoded],
                 device: torch.device) -> tuple[FrozenLayerCache | None, float | None]:
    """The frozen-layer cache over ``examples`` and its seconds per padded token (None without a cache)."""
    first = min(spec.lora.layers) if spec.method != "full" and spec.lora.layers else 0
    if first == 0 or not spec.training.cache_frozen_layers:
        return None, None
    cache = FrozenLayerCache(model, first, share_prefix=not spec.training.gradient_checkpointing)
    cache.build(examples[-2:], device)  # warm-up
    began = _clock(device)
    cache.build(examples, device)
    return cache, (_clock(device) - began) / sorted_padded_tokens([len(e.input_ids) for e in examples])


def _padded(batch: Sequence[int], examples: Sequence[Encoded]) -> int:
    return len(batch) * max(len(examples[i].input_ids) for i in batch)


def _spread(batches: Sequence[Sequence[int]], examples: Sequence[Encoded], count: int) -> list[list[int]]:
    """``count`` batches at evenly spaced ranks of padded size, smallest to largest."""
    ranked = sorted(batches, key=lambda b: _padded(b, examples))
    if len(ranked) <= count:
        return [list(b) for b in ranked]
    return [list(ranked[round(k * (len(ranked) - 1) / max(1, count - 1))]) for k in range(count)]


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
