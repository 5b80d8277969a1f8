"""The job spec: everything a training backend needs, as one JSON-serializable pydantic model.

It is what the local backend hands to the training program and what travels to SageMaker, so it
round-trips through JSON exactly. Settings a user builds refuse unknown keys (a misspelt name would
otherwise be ignored); a spec read from JSON that another SDK version wrote drops them with a warning.
"""

from __future__ import annotations

import difflib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

SPEC_VERSION = 1


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid {type(self).__name__}: {_problems(exc, type(self))}") from exc


class LoraSettings(_Settings):
    """LoRA adapter shape. Defaults measured on the bundled data: see docs/local-training.md."""

    r: int = Field(16, ge=1, le=1024, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module name suffixes to adapt, or 'all-linear' (every linear layer but the head)")
    layers: list[int] | None = Field(
        None, description="decoder layers that get adapters (None = all); backpropagation stops at the lowest one")

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, value: list[int] | None) -> list[int] | None:
        if value == []:
            raise ValueError("an empty list adapts no layer; name at least one layer, or pass None for all layers")
        return value


class TrainingSettings(_Settings):
    """Optimisation and bookkeeping settings of one run."""

    epochs: float = Field(2.0, gt=0, description="passes over the training rows (fractions allowed)")
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    batch_size: int = Field(8, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    prompt_loss_weight: float = Field(
        0.0, ge=0, le=1, description="weight of an extra loss on prompt tokens (0 = completion-only)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    save_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    eval_loss: Literal["epoch", "end", "off"] = Field(
        "epoch", description="when the loss on the eval rows is computed: after every epoch, once after the last "
        "step, or never (the frozen-layer cache then leaves the eval rows out)")
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    merge: bool = Field(False, description="also write merged/ (adapter folded into the base weights)")
    gradient_checkpointing: bool = False
    packing: Literal["auto", "packed", "padded"] = Field(
        "auto", description="'packed': examples end to end in one row per micro-batch, no padding; "
        "'padded': length-grouped batches padded to their longest row; 'auto': packed on CUDA, padded "
        "elsewhere and whenever the frozen-layer cache is used (measured faster there)")
    tokens_per_micro_batch: int | None = Field(
        None, ge=16, description="tokens in one packed forward/backward; None = sized from free GPU memory "
        "by a short probe (CUDA) or the whole optimizer step (CPU, MPS)")
    cache_frozen_layers: bool = Field(
        True, description="with LoRA on the top layers only, compute the frozen layers once per example")
    progress: bool = True


class DataRef(BaseModel):
    """Where the cleaned, split rows are (JSONL files written before training starts)."""

    model_config = ConfigDict(extra="forbid")

    train_path: str
    eval_path: str | None = None
    fingerprint: str
    train_rows: int
    eval_rows: int = 0
    dropped_rows: int = 0


class JobSpec(_Settings):
    """One fine-tuning job, backend-independent."""

    spec_version: int = SPEC_VERSION
    model: str
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    template: dict[str, Any]
    data: DataRef
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    max_length: int = Field(1024, ge=8)
    truncation: Literal["prompt", "drop"] = "prompt"
    seed: int = 0
    output_dir: str
    checkpoint_dir: str | None = Field(
        None, description="where checkpoints go (default <output_dir>.work/checkpoints); a SageMaker job uses "
                          "/opt/ml/checkpoints, which it syncs to S3")

    @field_validator("template")
    @classmethod
    def _template_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        from .template import PromptTemplate

        return PromptTemplate.from_dict(value).to_dict()

    @property
    def work_dir(self) -> Path:
        """The run's folder beside the artifact: spec, data, checkpoints, events and status."""
        return work_dir_for(self.output_dir)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        try:
            values = json.loads(text)
            if isinstance(values, dict):
                values = _known_keys(cls, values)
                for name, model in (("lora", LoraSettings), ("training", TrainingSettings)):
                    if isinstance(values.get(name), dict):
                        values[name] = _known_keys(model, values[name])
            return cls.model_validate(values)
        except (ValidationError, json.JSONDecodeError) as exc:
            raise ConfigError(f"invalid job spec: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "JobSpec":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def work_dir_for(output_dir: str | Path) -> Path:
    """``<output_dir>.work``: where a run keeps everything that is not the artifact."""
    out = Path(output_dir)
    return out.with_name(out.name + ".work")


def settings(cls: type[_Settings], value: Any) -> Any:
    """Build settings from None, a dict or an instance, turning pydantic errors into ConfigError."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    try:
        return cls(**dict(value))
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def _known_keys(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the keys ``model`` does not have (from another SDK version), with a warning."""
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        warnings.warn(f"{model.__name__}: ignoring unknown keys {unknown} (written by another finetune_sdk "
                      "version?)", stacklevel=3)
    return {k: v for k, v in values.items() if k in model.model_fields}


def _problems(exc: ValidationError, model: type[BaseModel]) -> str:
    return "; ".join(_problem(error, model) for error in exc.errors())


def _problem(error: Any, model: type[BaseModel]) -> str:
    """One pydantic error on one line: ``r: Input should be greater than or equal to 1 (got 0)``; an unknown
    key names the closest valid one."""
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, model.model_fields, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"the valid keys are {sorted(model.model_fields)}"
        return f"unknown key {where!r}; {hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where + ': ' if where else ''}{message} (got {error['input']!r})"
