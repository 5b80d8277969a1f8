"""The one training program: setup, train, save. Every backend runs this same code.

    python -m finetune_sdk.train --spec spec.json [--resume]

The run's folder (``<output_dir>.work``) holds the spec, the data files, checkpoints, ``events.jsonl``
and ``status.json``; the artifact appears at ``output_dir`` only once it is complete.
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..artifact import staged_directory, write_manifest
from ..data import read_jsonl
from ..encoding import Encoded, Encoder, encode_dataset
from ..errors import ConfigError, EmptyDatasetError, MissingDependencyError
from ..models import load_model, load_tokenizer, peft_without_deprecation_noise, resolve_model
from ..spec import JobSpec, TrainingSettings
from ..template import PromptTemplate
from . import distributed
from .attention import use_varlen_attention
from .batching import collate, epoch_batches, length_sorted_batches, padding_efficiency
from .budget import token_budget
from .checkpoint import TrainState, check_resumable, list_checkpoints, load_checkpoint, resume_settings, save_checkpoint
from .distributed import Ranks
from .frozen_cache import FrozenLayerCache
from .lora_matmul import fuse_lora_linears
from .loss import completion_loss
from .packing import collate_packed, real_tokens as count_real_tokens, split_by_budget
from .preflight import check_lora_targets
from .rms_norm import use_fused_rms_norm


class RunLog:
    """Appends events to ``events.jsonl`` and keeps ``status.json`` current, for any backend to read.

    Under torchrun only rank 0 writes (``enabled=False`` elsewhere).
    """

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder = folder
        self.enabled = enabled
        folder.mkdir(parents=True, exist_ok=True)

    def event(self, kind: str, **data: Any) -> None:
        if not self.enabled:
            return
        record = {"time": _now(), "event": kind, **data}
        with open(self.folder / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def status(self, status: str, **data: Any) -> None:
        if not self.enabled:
            return
        path = self.folder / "status.json"
        current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        current.update(status=status, updated_at=_now(), **data)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=2, default=str), encoding="utf-8")
        tmp.replace(path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pick_device(preference: str) -> torch.device:
    """cuda > mps > cpu for 'auto'; an explicit choice must be available."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if preference == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if not available[preference]:
        raise ConfigError(f"device={preference!r} is not available here; use device='auto' or 'cpu'")
    return torch.device(preference)


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, fp32 elsewhere (CPUs without native bf16 train faster in fp32)."""
    if preference == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, preference)


def prepare_model(spec: JobSpec, model: Any) -> Any:
    """Wrap the model for the spec's method (LoRA / QLoRA / full) and return the trainable model."""
    use_fused_rms_norm(model)
    if spec.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = spec.lora.target_modules
    check_lora_targets(model, targets)
    if spec.lora.layers is not None and targets == "all-linear":  # PEFT needs names to pick layers
        head = model.get_output_embeddings()
        targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and m is not head})
    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    config = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                        target_modules=targets, layers_to_transform=spec.lora.layers, task_type="CAUSAL_LM")
    with peft_without_deprecation_noise():
        model = get_peft_model(model, config)
    fuse_lora_linears(model)
    return model


def _load_for_method(spec: JobSpec, ref: Any, dtype: torch.dtype, device: torch.device) -> Any:
    kwargs: dict[str, Any] = {}
    if spec.method == "qlora":
        if device.type != "cuda":
            raise ConfigError("method='qlora' needs a CUDA GPU; use method='lora' on CPU or Apple MPS")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise MissingDependencyError("method='qlora' needs bitsandbytes: pip install bitsandbytes") from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device.index or 0}
    model = load_model(ref, dtype=dtype, trust_remote_code=spec.trust_remote_code,
                       allow_pickle=spec.allow_pickle, **kwargs)
    if spec.method != "qlora":
        model.to(device)
    if spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def _lr_lambda(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return factor


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(model: Any, examples: list[Encoded], pad_id: int, device: torch.device,
                  dtype: torch.dtype, batch_size: int = 16, ranks: Ranks = Ranks(),
                  cache: FrozenLayerCache | None = None, cache_offset: int = 0) -> float | None:
    """Mean loss per trained token over ``examples`` (None when there are none); processes split the work.

    With a frozen-layer ``cache`` holding ``examples`` from index ``cache_offset``, only the adapted
    layers run.
    """
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for idx in ranks.share(length_sorted_batches([len(e.input_ids) for e in examples], batch_size)):
        batch = _to(collate([examples[i] for i in idx], pad_id), device)
        loss, n = forward_loss(model, batch, dtype, cache=cache, cache_idx=[cache_offset + i for i in idx])
        total += float(loss)
        count += n
    model.train(was_training)
    total, count = distributed.sum_values([total, count], ranks, device)
    return total / max(count, 1)


def make_optimizer(params: list[torch.nn.Parameter], settings: TrainingSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW as the program runs it: fused kernels on CUDA and CPU."""
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                             fused=device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params))


def forward_loss(model: Any, batch: dict[str, Any], dtype: torch.dtype, *, prompt_loss_weight: float = 0.0,
                 cache: FrozenLayerCache | None = None, cache_idx: Sequence[int] = ()) -> tuple[torch.Tensor, int]:
    """Summed completion loss of one batch and its trained positions, through the frozen-layer cache when
    there is one (``cache_idx``: the batch's rows in it)."""
    with _autocast(batch["input_ids"].device, dtype):
        hidden = cache.last_hidden(cache_idx, batch) if cache else None
        return completion_loss(model, batch, prompt_loss_weight=prompt_loss_weight, hidden=hidden)


def backward_micro_batch(model: Any, batch: dict[str, Any], settings: TrainingSettings, dtype: torch.dtype,
                         step_trained: int, *, cache: FrozenLayerCache | None = None,
                         cache_idx: Sequence[int] = ()) -> torch.Tensor:
    """Forward and backward of one micro-batch, its summed loss divided by the trained tokens of the whole
    optimizer step (so accumulated micro-batches add up to that step's mean); returns that share, detached."""
    loss, _ = forward_loss(model, batch, dtype, prompt_loss_weight=settings.prompt_loss_weight, cache=cache,
                           cache_idx=cache_idx)
    share = loss / step_trained
    share.backward()
    return share.detach()


def apply_update(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, settings: TrainingSettings) -> None:
    """Clip the accumulated gradients, take the optimizer step and clear them."""
    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def run(spec: JobSpec, *, resume: bool = False, overwrite: bool = True) -> Path:
    """Train according to ``spec`` and write the artifact to ``spec.output_dir``; return its path."""
    device = pick_device(spec.training.device)
    ranks = distributed.start(device.type)
    if device.type == "cuda" and ranks.world_size > 1:
        device = torch.device("cuda", ranks.local_rank)
    log = RunLog(spec.work_dir, enabled=ranks.is_main)
    log.status("running", started_at=_now())
    try:
        path = _run(spec, log, device, ranks, resume=resume, overwrite=overwrite)
    except BaseException as exc:
        log.status("failed" if isinstance(exc, Exception) else "cancelled", finished_at=_now(),
                   error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        distributed.stop(ranks)
    log.status("completed", finished_at=_now(), artifact=str(path))
    return path


def _run(spec: JobSpec, log: RunLog, device: torch.device, ranks: Ranks, *, resume: bool, overwrite: bool) -> Path:
    settings = spec.training
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    dtype = pick_dtype(settings.dtype, device)

    # -- setup: tokenize everything before the (expensive) model load --------------------------
    ref = resolve_model(spec.model, spec.revision)
    tokenizer = load_tokenizer(ref, trust_remote_code=spec.trust_remote_code)
    encoder = Encoder(tokenizer, PromptTemplate.from_dict(spec.template), max_length=spec.max_length,
                      truncation=spec.truncation)
    train_examples, train_stats = encode_dataset(encoder, read_jsonl(Path(spec.data.train_path)))
    eval_rows = read_jsonl(Path(spec.data.eval_path)) if spec.data.eval_path else []
    eval_examples, _ = encode_dataset(encoder, eval_rows)
    if not train_examples:
        raise EmptyDatasetError(
            f"no trainable rows: {train_stats.dropped_too_long} longer than max_length={spec.max_length} "
            f"and {train_stats.dropped_no_completion} with nothing to train; raise max_length or shorten rows")
    log.event("data", train_examples=len(train_examples), eval_examples=len(eval_examples),
              truncated=train_stats.truncated, dropped_too_long=train_stats.dropped_too_long,
              dropped_no_completion=train_stats.dropped_no_completion)

    model = prepare_model(spec, _load_for_method(spec, ref, dtype, device))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    distributed.sync_parameters(params, ranks)
    optimizer = make_optimizer(params, settings, device)
    lengths = [len(e.input_ids) for e in train_examples]
    groups_per_epoch = math.ceil(math.ceil(len(lengths) / settings.batch_size) / settings.grad_accum)
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * groups_per_epoch))
    warmup = int(settings.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(settings.lr_scheduler, warmup, total_steps))

    checkpoints = Path(spec.checkpoint_dir) if spec.checkpoint_dir else spec.work_dir / "checkpoints"
    state = TrainState(data_fingerprint=spec.data.fingerprint, settings=resume_settings(spec))
    if not resume:
        if ranks.is_main:
            shutil.rmtree(checkpoints, ignore_errors=True)  # a fresh run must never resume from an older one
    elif list_checkpoints(checkpoints):
        latest = list_checkpoints(checkpoints)[-1]
        check_resumable(latest, state)
        state = load_checkpoint(latest, model, optimizer, scheduler)
        log.event("resumed", checkpoint=latest.name, step=state.step)

    # -- train ---------------------------------------------------------------------------------
    pad_id = tokenizer.pad_token_id
    if settings.eval_loss == "off":
        eval_examples = []
    cache = (None if settings.packing == "packed"
             else _frozen_layer_cache(spec, model, train_examples + eval_examples, pad_id, device, log))
    evaluate = functools.partial(evaluate_loss, model, eval_examples, pad_id, device, dtype, ranks=ranks,
                                 cache=cache, cache_offset=len(train_examples))
    packed = settings.packing == "packed" or (settings.packing == "auto" and device.type == "cuda" and cache is None)
    budget = None
    if packed:
        use_varlen_attention(model)
        budget = settings.tokens_per_micro_batch or token_budget(model, train_examples, device, dtype)
        log.event("packing", tokens_per_micro_batch=budget, processes=ranks.world_size)
    real_tokens = padded_tokens = 0
    losses: list[float] = []
    eval_history: list[dict[str, Any]] = []
    started = time.perf_counter()
    eval_seconds = 0.0  # not training time: left out of the throughput
    first_step: dict[str, float] = {}  # the warm-up step's cost, for throughput without it
    bar = _progress(total_steps, state.step, enabled=settings.progress and ranks.is_main)
    while state.step < total_steps:
        batches = epoch_batches(lengths, settings.batch_size, spec.seed, state.epoch)
        groups = [batches[i:i + settings.grad_accum] for i in range(0, len(batches), settings.grad_accum)]
        for g in range(state.group_in_epoch, len(groups)):
            if state.step >= total_steps:
                break
            group = groups[g]
            n_trained = sum(train_examples[i].n_trained for b in group for i in b)  # of the whole step
            step_loss = torch.zeros((), device=device)
            for batch_idx in _micro_batches(group, ranks, lengths, budget if packed else None, packed):
                examples = [train_examples[i] for i in batch_idx]
                cpu_batch = collate_packed(examples) if packed else collate(examples, pad_id)
                real_tokens += count_real_tokens(cpu_batch)
                padded_tokens += cpu_batch["input_ids"].numel()
                step_loss += backward_micro_batch(model, _to(cpu_batch, device), settings, dtype, n_trained,
                                                  cache=cache, cache_idx=batch_idx)
            distributed.sum_gradients(params, ranks)
            step_loss = distributed.sum_values([float(step_loss)], ranks, device)[0]
            apply_update(params, optimizer, settings)
            scheduler.step()
            state.step += 1
            state.group_in_epoch = g + 1
            losses.append(step_loss)
            elapsed = time.perf_counter() - started - eval_seconds
            if not first_step:
                first_step = {"seconds": round(elapsed, 3), "real_tokens": real_tokens}
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{real_tokens / max(elapsed, 1e-9):.0f}", epoch=state.epoch)
            if state.step % settings.save_every == 0 and state.step < total_steps and ranks.is_main:
                path = save_checkpoint(checkpoints, model, optimizer, scheduler, state, settings.keep_checkpoints)
                log.event("checkpoint", step=state.step, path=str(path))
        if state.group_in_epoch >= len(groups):
            eval_started = time.perf_counter()
            eval_loss = evaluate() if settings.eval_loss == "epoch" else None
            eval_seconds += time.perf_counter() - eval_started
            if eval_loss is not None:
                eval_history.append({"epoch": state.epoch + 1, "step": state.step, "eval_loss": eval_loss})
            log.event("epoch_end", epoch=state.epoch + 1, step=state.step, eval_loss=eval_loss,
                      train_loss=sum(losses[-groups_per_epoch:]) / max(1, len(losses[-groups_per_epoch:])))
            state.epoch += 1
            state.group_in_epoch = 0
    bar.close()
    train_seconds = time.perf_counter() - started - eval_seconds
    at_last_step = eval_history and eval_history[-1]["step"] == state.step
    final_eval = eval_history[-1]["eval_loss"] if at_last_step else evaluate()  # stopped mid-epoch: evaluate now
    real_tokens, padded_tokens = (int(v) for v in distributed.sum_values([real_tokens, padded_tokens], ranks, device))
    if not ranks.is_main:
        return Path(spec.output_dir)

    # -- save ----------------------------------------------------------------------------------
    metrics = {
        "train_loss_last": losses[-1] if losses else None,
        "eval_loss": final_eval,
        "eval_history": eval_history,
        "steps": state.step,
        "train_seconds": round(train_seconds, 2),
        "real_tokens": real_tokens,
        "real_tokens_per_second": round(real_tokens / max(train_seconds, 1e-9), 1),
        "first_step": first_step,
        "padding_efficiency": round(real_tokens / max(padded_tokens, 1), 4),
        "expected_padding_efficiency": round(padding_efficiency(
            train_examples, epoch_batches(lengths, settings.batch_size, spec.seed, 0)), 4),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "packing": "packed" if packed else "padded",
        "tokens_per_micro_batch": budget,
        "processes": ranks.world_size,
    }
    manifest = {
        "sdk_version": __version__,
        "created_at": _now(),
        "base_model": ref.to_dict(),
        "method": spec.method,
        "template": spec.template,
        "end_of_turn": encoder.end_of_turn,
        "stop_tokens": [tokenizer.convert_ids_to_tokens(i) for i in encoder.stop_token_ids],
        "generation": {"max_new_tokens": 256, "do_sample": False},
        "max_length": spec.max_length,
        "truncation": spec.truncation,
        "dataset": {**spec.data.model_dump(exclude={"train_path", "eval_path"}),
                    "truncated": train_stats.truncated, "dropped_too_long": train_stats.dropped_too_long,
                    "dropped_no_completion": train_stats.dropped_no_completion},
        "lora": spec.lora.model_dump() if spec.method != "full" else None,
        "training": settings.model_dump(),
        "seed": spec.seed,
        "metrics": metrics,
    }
    with staged_directory(Path(spec.output_dir), overwrite=overwrite) as stage:
        if spec.method != "full":
            model.peft_config["default"].base_model_name_or_path = ref.path
            model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        if settings.merge or spec.method == "full":
            merged = model.merge_and_unload() if spec.method != "full" else model
            merged.save_pretrained(stage / "merged")
            tokenizer.save_pretrained(stage / "merged")
        write_manifest(stage, manifest)
    log.event("saved", artifact=spec.output_dir, metrics=metrics)
    return Path(spec.output_dir)


def _micro_batches(group: list[list[int]], ranks: Ranks, lengths: list[int], budget: int | None,
                   packed: bool) -> list[list[int]]:
    """This process's micro-batches of one optimizer step: packed rows up to the token budget, or padded batches."""
    if packed:
        return [m for m in split_by_budget(ranks.share([i for b in group for i in b]), lengths, budget) if m]
    return [mine for mine in (ranks.share(b) for b in group) if mine]


def _frozen_layer_cache(spec: JobSpec, model: Any, examples: list[Encoded], pad_id: int,
                        device: torch.device, log: RunLog) -> FrozenLayerCache | None:
    """A cache of the frozen layers' outputs when LoRA adapts only upper layers (None otherwise)."""
    first = min(spec.lora.layers) if spec.method != "full" and spec.lora.layers else 0
    if first == 0 or not spec.training.cache_frozen_layers:
        return None
    started = time.perf_counter()
    cache = FrozenLayerCache(model, first, share_prefix=not spec.training.gradient_checkpointing)
    cache.build(examples, device)
    probe = list(range(min(4, len(examples))))
    if not cache.agrees_with_full_model(probe, _to(collate([examples[i] for i in probe], pad_id), device)):
        return None
    log.event("frozen_layer_cache", layers_skipped=first, examples=len(examples), shared_prefix=cache.prefix,
              seconds=round(time.perf_counter() - started, 2))
    return cache


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="training", unit="step", dynamic_ncols=True)
