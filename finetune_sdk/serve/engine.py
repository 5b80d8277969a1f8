"""The generation engine: an artifact (or a bare base model) plus its template, ready to answer.

Prompts are encoded with the same Encoder that built the training examples, so an inference prompt is
token-for-token a training prompt; generation stops at the template's end-of-turn token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..artifact import Artifact
from ..encoding import Encoder
from ..errors import ArtifactError, ConfigError, TemplateError
from ..models import ModelRef, load_model, load_tokenizer, resolve_model
from ..template import PromptTemplate

GENERATION_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "stop",
                   "repetition_penalty", "seed", "return_full_text"}


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


class GenerationEngine:
    """Loads a model once and generates for batches of inputs (left-padded, greedy by default)."""

    def __init__(self, model: Any, tokenizer: Any, template: PromptTemplate, *,
                 defaults: Mapping[str, Any] | None = None, max_length: int = 1024,
                 max_batch_size: int = 16) -> None:
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self.tokenizer = tokenizer
        self.template = template
        self.encoder = Encoder(tokenizer, template, max_length=max_length)
        self.defaults = {"max_new_tokens": 256, "do_sample": False, **(defaults or {})}
        self._lock = threading.Lock()

    @classmethod
    def from_artifact(cls, path: str | Path, *, device: str = "auto", merge: bool = True) -> "GenerationEngine":
        """Base model + adapter from an artifact (the adapter merged in memory for speed)."""
        artifact = Artifact.load(path)
        base = artifact.manifest["base_model"]
        tokenizer = load_tokenizer(_local_or(artifact.path, resolve_model(base["name"], base.get("revision"))))
        if artifact.merged_path is not None and not artifact.has_adapter:
            model = load_model(resolve_model(str(artifact.merged_path)), dtype=torch.float32)
        elif artifact.has_adapter:
            from peft import PeftModel

            model = load_model(resolve_model(base["name"], base.get("revision")), dtype=torch.float32)
            try:
                model = PeftModel.from_pretrained(model, str(artifact.path))
            except Exception as exc:
                raise ArtifactError(f"could not load the adapter in {artifact.path}: {exc}") from exc
            if merge:
                model = model.merge_and_unload()
        else:
            raise ArtifactError(f"{artifact.path} has neither adapter files nor merged/; it is incomplete")
        model.to(_device(device))
        return cls(model, tokenizer, artifact.template, defaults=artifact.manifest.get("generation"),
                   max_length=artifact.manifest.get("max_length", 1024))

    @classmethod
    def from_model(cls, model: str, template: PromptTemplate, *, device: str = "auto",
                   revision: str | None = None) -> "GenerationEngine":
        """A base model with no adapter, e.g. to compare against a fine-tuned one."""
        ref = resolve_model(model, revision)
        loaded = load_model(ref, dtype=torch.float32).to(_device(device))
        return cls(loaded, load_tokenizer(ref), template)

    def prompt_ids(self, source: Any) -> list[int]:
        """Prompt ids for a row of template columns, a chat message list, or a plain string."""
        if isinstance(source, str):
            columns = self.template.prompt_columns
            if self.template.kind == "messages":
                source = [{"role": "user", "content": source}]
            elif len(columns) == 1:
                source = {columns[0]: source}
            else:
                raise TemplateError(f"this template needs the columns {columns}; pass a dict, not a string")
        if isinstance(source, Mapping) or (isinstance(source, Sequence) and not isinstance(source, str)):
            return self.encoder.encode_prompt(source)
        raise TemplateError(f"cannot build a prompt from {type(source).__name__}; pass a string, a dict of "
                            "columns or a list of chat messages")

    def generate(self, inputs: Sequence[Any], **parameters: Any) -> list[Generation]:
        """Generate one reply per input; inputs are grouped by length into left-padded batches."""
        unknown = set(parameters) - GENERATION_KEYS
        if unknown:
            raise ConfigError(f"unknown generation parameters {sorted(unknown)}; known: {sorted(GENERATION_KEYS)}")
        params = {**self.defaults, **{k: v for k, v in parameters.items() if v is not None}}
        if not isinstance(params.get("max_new_tokens"), int) or params["max_new_tokens"] < 1:
            raise ConfigError(f"max_new_tokens must be a whole number >= 1, got {params.get('max_new_tokens')!r}")
        prompts = [self.prompt_ids(x) for x in inputs]
        stop = params.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        seed = params.pop("seed", None)
        params.pop("return_full_text", None)
        if not params.get("do_sample"):
            params = {k: v for k, v in params.items() if k not in ("temperature", "top_p", "top_k")}
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(int(seed))
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start:start + self.max_batch_size]
                for i, g in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params, stop)):
                    results[i] = g
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]], params: dict[str, Any], stop: list[str]) -> list[Generation]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        device = next(self.model.parameters()).device
        stop_ids = self.encoder.stop_token_ids
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  eos_token_id=stop_ids, pad_token_id=pad, **params)
        results = []
        for prompt, row in zip(prompts, out[:, width:].tolist()):
            ended = next((i for i, t in enumerate(row) if t in stop_ids), None)
            tokens = row[:ended] if ended is not None else row
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            finish = "stop" if ended is not None else "length"
            for s in stop:
                if s and s in text:
                    text, finish = text[:text.index(s)], "stop"
            results.append(Generation(text.strip(), finish, len(prompt), len(tokens)))
        return results


def _local_or(artifact_dir: Path, ref: ModelRef) -> ModelRef:
    """The artifact's own tokenizer when saved there, else the base model's."""
    if (artifact_dir / "tokenizer_config.json").is_file():
        return ModelRef(str(artifact_dir), "local", str(artifact_dir))
    return ref


def _device(preference: str) -> torch.device:
    from ..train.program import pick_device

    return pick_device(preference)
