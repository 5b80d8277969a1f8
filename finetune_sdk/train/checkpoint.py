"""Complete checkpoints: trainable weights, optimizer, scheduler, RNG states and the data position.

A run resumed from one continues exactly where it stopped: same batches, same random numbers. Each
records the settings those depend on, and a resume with other settings is refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import TrainingError
from ..spec import JobSpec


@dataclass
class TrainState:
    """Where the run is: optimizer steps done, current epoch, next micro-batch group in that epoch."""

    step: int = 0
    epoch: int = 0
    group_in_epoch: int = 0
    data_fingerprint: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # what the weights and data position depend on


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                    state: TrainState, keep: int) -> Path:
    """Write ``folder/step-NNNNNN`` atomically and prune all but the newest ``keep`` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state.step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=folder))
    try:
        save_file(trainable_state(model), staging / "trainable.safetensors")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   staging / "rng.pt")
        (staging / "state.json").write_text(json.dumps(asdict(state)), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (staging folders are never listed)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def _read_state(path: Path) -> TrainState:
    """The checkpoint's position and settings, without loading its tensors."""
    return TrainState(**json.loads((path / "state.json").read_text(encoding="utf-8")))


def _changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``name: saved -> current`` for each setting that differs (none for a checkpoint that recorded none)."""
    current = json.loads(json.dumps(current))  # compare as stored: tuples become lists
    return [f"{name}: {saved[name]!r} -> {current.get(name)!r}" for name in sorted(saved)
            if saved[name] != current.get(name)]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> TrainState:
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file: python's RNG state is a tuple
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return _read_state(path)


def resume_settings(spec: JobSpec) -> dict[str, Any]:
    """The settings a checkpoint's weights, optimizer state and data position depend on. The step count
    (epochs, max_steps) may change on resume: that is how a run is extended."""
    training = spec.training
    return {"method": spec.method, "lora": spec.lora.model_dump() if spec.method != "full" else None,
            "seed": spec.seed, "template": spec.template, "max_length": spec.max_length,
            "truncation": spec.truncation, "batch_size": training.batch_size, "grad_accum": training.grad_accum,
            "learning_rate": training.learning_rate, "weight_decay": training.weight_decay}


def check_resumable(checkpoint: Path, current: TrainState) -> None:
    """Refuse a checkpoint of other data or settings before any of its tensors is loaded."""
    saved = _read_state(checkpoint)
    if saved.data_fingerprint != current.data_fingerprint:
        raise TrainingError(f"the checkpoint {checkpoint} was trained on different data; train again without "
                            "resume=True, or restore the original dataset")
    changes = _changed_settings(saved.settings, current.settings)
    if changes:
        raise TrainingError(f"the checkpoint {checkpoint} was trained with other settings ({'; '.join(changes)}); "
                            "resume with the checkpoint's settings, or train again without resume=True")
