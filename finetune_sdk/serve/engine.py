"""The generation engine: an artifact (or a bare base model) plus its template, ready to answer.

Prompts are encoded with the same Encoder that built the training examples, so an inference prompt is
token-for-token a training prompt; generation stops at the template's end-of-turn token or a stop string.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..artifact import Artifact
from ..encoding import Encoder
from ..errors import ArtifactError, ConfigError
from ..models import ModelRef, load_model, load_tokenizer, peft_without_deprecation_noise, resolve_model
from ..template import PromptTemplate
from .decode import DecodeBatch, Generation, PrefixCache, finish, reached_stop, run_all

GENERATION_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "stop",
                   "repetition_penalty", "seed", "return_full_text"}


@dataclass
class Settings:
    """One request's generation settings; ``extra`` holds the ``model.generate`` options (sampling,
    repetition penalty) that the continuous decode loop does not implement."""

    max_new_tokens: int
    stop: list[str]
    seed: int | None
    extra: dict[str, Any]

    @property
    def continuous(self) -> bool:
        """Plain greedy decoding, which the continuous batch runs."""
        return not self.extra


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
        self._prefix: PrefixCache | None = None

    @classmethod
    def from_artifact(cls, path: str | Path, *, device: str = "auto", merge: bool = True) -> "GenerationEngine":
        """Base model + adapter from an artifact (the adapter merged in memory for speed)."""
        artifact = Artifact.load(path)
        tokenizer = load_tokenizer(_local_or(artifact.path, artifact.base_model_ref()))
        if artifact.merged_path is not None and not artifact.has_adapter:
            model = load_model(resolve_model(str(artifact.merged_path)), dtype=torch.float32)
        elif artifact.has_adapter:
            from peft import PeftModel

            model = load_model(artifact.base_model_ref(), dtype=torch.float32)
            try:
                with peft_without_deprecation_noise():
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
    def from_model(cls, model: str, template: PromptTemplate, *, device: str = "auto", revision: str | None = None,
                   trust_remote_code: bool = False, allow_pickle: bool = False) -> "GenerationEngine":
        """A base model with no adapter, e.g. to compare against a fine-tuned one."""
        ref = resolve_model(model, revision)
        loaded = load_model(ref, dtype=torch.float32, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        return cls(loaded.to(_device(device)), load_tokenizer(ref, trust_remote_code=trust_remote_code), template)

    def prompt_ids(self, source: Any) -> list[int]:
        """Prompt ids for a row of template columns, a chat message list, or a plain string."""
        return self.encoder.encode_prompt(self.template.prompt_source(source))

    def prompt_text(self, source: Any) -> str:
        """The prompt as text (special tokens left out), for ``return_full_text``."""
        return self.tokenizer.decode(self.prompt_ids(source), skip_special_tokens=True)

    def settings(self, parameters: Mapping[str, Any]) -> Settings:
        """Checked generation settings: the engine's defaults overlaid with the request's non-null values."""
        unknown = set(parameters) - GENERATION_KEYS
        if unknown:
            raise ConfigError(f"unknown generation parameters {sorted(unknown)}; known: {sorted(GENERATION_KEYS)}")
        params = {**self.defaults, **{k: v for k, v in parameters.items() if v is not None}}
        limit = params.pop("max_new_tokens", None)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ConfigError(f"max_new_tokens must be a whole number >= 1, got {limit!r}")
        stop = params.pop("stop", None) or []
        seed = params.pop("seed", None)
        params.pop("return_full_text", None)
        if not params.get("do_sample"):
            params = {k: v for k, v in params.items() if k not in ("temperature", "top_p", "top_k", "do_sample")}
        if params.get("repetition_penalty") in (1, 1.0):
            params.pop("repetition_penalty")
        return Settings(limit, [stop] if isinstance(stop, str) else list(stop), seed, params)

    def decode_batch(self) -> DecodeBatch:
        """An empty continuous batch over this engine's model, sharing its prefix cache."""
        if self._prefix is None:
            self._prefix = PrefixCache(self.model, self._shared_prefix())
        return DecodeBatch(self.model, self.tokenizer, self.encoder.stop_token_ids, self._prefix)

    def generate(self, inputs: Sequence[Any], **parameters: Any) -> list[Generation]:
        """One reply per input. Greedy inputs share a continuous batch of up to max_batch_size rows;
        sampling (or a repetition penalty) runs through ``model.generate`` in length-sorted padded batches."""
        settings = self.settings(parameters)
        prompts = [self.prompt_ids(x) for x in inputs]
        with self._lock, torch.inference_mode():
            if settings.continuous:
                return run_all(self.decode_batch(), prompts, settings, self.max_batch_size)
            if settings.seed is not None:
                torch.manual_seed(int(settings.seed))
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            results: list[Generation | None] = [None] * len(prompts)
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start:start + self.max_batch_size]
                for i, g in zip(chunk, self._generate_padded([prompts[i] for i in chunk], settings)):
                    results[i] = g
        return results  # type: ignore[return-value]

    def _generate_padded(self, prompts: list[list[int]], settings: Settings) -> list[Generation]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        device = next(self.model.parameters()).device
        stop_ids = self.encoder.stop_token_ids
        stops = StopStrings(self.tokenizer, settings.stop, width)
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), eos_token_id=stop_ids,
                                  pad_token_id=pad, max_new_tokens=settings.max_new_tokens,
                                  stopping_criteria=StoppingCriteriaList([stops] if settings.stop else []),
                                  **settings.extra)
        results = []
        for j, (prompt, row) in enumerate(zip(prompts, out[:, width:].tolist())):
            row = row[:stops.lengths.get(j, len(row))]  # a row that reached a stop string ends there
            ended = next((i for i, t in enumerate(row) if t in stop_ids), None)
            tokens = row[:ended] if ended is not None else row
            results.append(finish(self.tokenizer, tokens, ended is not None, settings.stop, len(prompt)))
        return results

    def _shared_prefix(self) -> list[int]:
        """The tokens every prompt of this template starts with (its system turn), found by rendering two
        different inputs; empty when the template has none or cannot render a probe."""
        try:
            a, b = (self.prompt_ids({c: probe for c in self.template.prompt_columns}
                                    if self.template.kind != "messages" else probe) for probe in ("a", "b"))
        except Exception:
            return []
        n = 0
        while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
            n += 1
        return a[:n]


class StopStrings(StoppingCriteria):
    """Ends each row of a ``model.generate`` batch at the first token after which its reply holds a stop
    string, as the continuous batch does; ``lengths`` records how many tokens each such row had then."""

    def __init__(self, tokenizer: Any, stop: list[str], prompt_width: int) -> None:
        self.tokenizer, self.stop, self.prompt_width = tokenizer, stop, prompt_width
        self.lengths: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for i, row in enumerate(input_ids[:, self.prompt_width:].tolist()):
            if i not in self.lengths and reached_stop(self.tokenizer, row, self.stop):
                self.lengths[i] = len(row)
        return torch.tensor([i in self.lengths for i in range(len(input_ids))], device=input_ids.device)


def _local_or(artifact_dir: Path, ref: ModelRef) -> ModelRef:
    """The artifact's own tokenizer when saved there, else the base model's."""
    if (artifact_dir / "tokenizer_config.json").is_file():
        return ModelRef(str(artifact_dir), "local", str(artifact_dir))
    return ref


def _device(preference: str) -> torch.device:
    from ..train.program import pick_device

    return pick_device(preference)
