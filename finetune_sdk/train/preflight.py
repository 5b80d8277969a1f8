"""Checks run in the caller before a job starts: cheap, and they catch what would fail an hour in.

Tokenizes every row (drops and lints), checks the LoRA targets against the architecture on the meta
device (no weights loaded), and checks the method against the hardware.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..encoding import EncodeStats, Encoder, encode_dataset
from ..errors import ConfigError, EmptyDatasetError, TemplateError
from ..models import load_tokenizer, resolve_model
from ..spec import JobSpec
from ..template import PromptTemplate


def linear_module_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def check_lora_targets(model: torch.nn.Module, targets: Any) -> None:
    """Raise ConfigError naming the model's linear layers when a target is not one of them."""
    if targets == "all-linear":
        return
    linear = linear_module_names(model)
    unknown = [t for t in targets if t not in linear]
    if unknown:
        raise ConfigError(f"LoRA target modules {unknown} are not linear layers of {model.config.model_type}; "
                          f"its linear layers are: {sorted(linear)}")


def preflight(spec: JobSpec, train_rows: Sequence[dict[str, Any]]) -> EncodeStats:
    """Validate a job before anything is written or launched; return the tokenization stats."""
    if spec.method == "qlora" and not torch.cuda.is_available():
        raise ConfigError("method='qlora' needs a CUDA GPU (4-bit weights via bitsandbytes); use method='lora' here")
    from .program import pick_device

    pick_device(spec.training.device)  # an explicit device that is not here fails now, not in the job
    ref = resolve_model(spec.model, spec.revision)
    tokenizer = load_tokenizer(ref, trust_remote_code=spec.trust_remote_code)
    encoder = Encoder(tokenizer, PromptTemplate.from_dict(spec.template), max_length=spec.max_length,
                      truncation=spec.truncation)
    examples, stats = encode_dataset(encoder, train_rows)
    if not examples:
        raise EmptyDatasetError(
            f"no trainable rows: {stats.dropped_too_long} are longer than max_length={spec.max_length} even with "
            f"the prompt's row values cut, {stats.dropped_no_completion} have nothing to train; raise max_length "
            "or shorten rows")
    eot = tokenizer.convert_tokens_to_ids(encoder.end_of_turn)
    if any(e.labels[-1] != eot for e in examples[:50]):
        raise TemplateError(f"the end-of-turn token {encoder.end_of_turn!r} is not trained; the model would never stop")
    if spec.method != "full" and (spec.lora.target_modules != "all-linear" or spec.lora.layers is not None):
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=spec.trust_remote_code)
        n_layers = getattr(config, "num_hidden_layers", None)
        bad = [i for i in spec.lora.layers or [] if n_layers is not None and not 0 <= i < n_layers]
        if bad:
            raise ConfigError(f"LoRA layers {bad} do not exist; {spec.model} has layers 0 to {n_layers - 1}")
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
        check_lora_targets(skeleton, spec.lora.target_modules)
    return stats
