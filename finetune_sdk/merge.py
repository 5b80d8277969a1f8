"""Fold a LoRA adapter into its base weights, and prove the result before writing it.

A merge can silently change the model: folding into low-precision weights (bf16, or a 4-bit base)
rounds the update away, and a bug in a merge path corrupts weights without an error. So the merged
model is compared with base + adapter on held-out prompts (largest logit difference over every
prompt position, and whether greedy replies agree) and is written only when it is within tolerance.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from .artifact import MANIFEST, Artifact, staged_directory, write_manifest
from .encoding import Encoder
from .errors import ArtifactError, ConfigError
from .models import load_model, load_tokenizer, peft_without_deprecation_noise
from .spec import work_dir_for

#: Largest allowed |logit difference| between merged and base + adapter (fp32 merges land near 1e-5).
DEFAULT_TOLERANCE = 1e-3
Layout = Literal["merged", "adapter", "lora-serving"]


@dataclass
class MergeCheck:
    """How closely a merged model reproduces base + adapter on the held-out prompts."""

    prompts: int
    max_logit_diff: float
    greedy_agreement: float
    tolerance: float
    min_agreement: float
    dtype: str

    @property
    def passed(self) -> bool:
        return self.max_logit_diff <= self.tolerance and self.greedy_agreement >= self.min_agreement

    def describe(self) -> str:
        return (f"max logit difference {self.max_logit_diff:.2e} (tolerance {self.tolerance:.0e}), greedy replies "
                f"agree on {self.greedy_agreement:.0%} of {self.prompts} prompts (required {self.min_agreement:.0%})")


def reference_model(artifact: Artifact) -> Any:
    """Base weights in fp32 with the adapter applied on the side (not merged): the model training produced."""
    from peft import PeftModel

    if not artifact.has_adapter:
        raise ArtifactError(f"{artifact.path} has no LoRA adapter to merge (a full fine-tune is merged already)")
    model = load_model(artifact.base_model_ref(), dtype=torch.float32)
    with peft_without_deprecation_noise():
        return PeftModel.from_pretrained(model, str(artifact.path)).eval()


def merged_model(artifact: Artifact, dtype: str = "float32") -> Any:
    """A fresh base + adapter with the adapter folded in, cast to ``dtype`` ("float32" or "bfloat16")."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype={dtype!r}; merge into 'float32', 'bfloat16' or 'float16'")
    return reference_model(artifact).merge_and_unload().to(getattr(torch, dtype)).eval()


def held_out_prompts(artifact: Artifact, limit: int = 8) -> list[dict[str, Any]]:
    """The run's own eval rows (``<artifact>.work/data/eval.jsonl``), when the run folder is still there."""
    path = work_dir_for(artifact.path) / "data" / "eval.jsonl"
    if not path.is_file():
        raise ConfigError(f"no held-out rows at {path}; pass prompts=[...] (rows of template columns or strings) "
                          "to check the merge on")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit]


@torch.no_grad()
def verify_merge(artifact: Artifact, merged: Any, prompts: Sequence[Any], *, tolerance: float = DEFAULT_TOLERANCE,
                 min_agreement: float = 1.0, max_new_tokens: int = 16) -> MergeCheck:
    """Compare ``merged`` with base + adapter on ``prompts``: logits at every prompt position, greedy replies."""
    if not prompts:
        raise ConfigError("verify the merge on at least one prompt")
    reference = reference_model(artifact)
    tokenizer = load_tokenizer(_tokenizer_ref(artifact))
    encoder = Encoder(tokenizer, artifact.template, max_length=artifact.manifest.get("max_length", 1024))
    worst, agree = 0.0, 0
    for prompt in prompts:
        ids = torch.tensor([_prompt_ids(encoder, artifact, prompt)])
        want = reference(input_ids=ids).logits.float()
        got = merged(input_ids=ids).logits.float()
        worst = max(worst, float((want - got).abs().max()))
        replies = [m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                              do_sample=False, eos_token_id=encoder.stop_token_ids,
                              pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
                   for m in (reference, merged)]
        agree += replies[0] == replies[1]
    dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
    return MergeCheck(len(prompts), worst, agree / len(prompts), tolerance, min_agreement, dtype)


def merge(artifact: Artifact, *, prompts: Sequence[Any] | None = None, dtype: str = "float32",
          tolerance: float = DEFAULT_TOLERANCE, min_agreement: float = 1.0, max_new_tokens: int = 16) -> MergeCheck:
    """Write ``<artifact>/merged/`` after :func:`verify_merge` passes; raise ArtifactError (writing nothing) if not."""
    model = merged_model(artifact, dtype)
    check = verify_merge(artifact, model, prompts if prompts is not None else held_out_prompts(artifact),
                         tolerance=tolerance, min_agreement=min_agreement, max_new_tokens=max_new_tokens)
    if not check.passed:
        raise ArtifactError(f"refusing to write the merge: {check.describe()}. Serve the adapter unmerged, merge "
                            "into float32 weights, or raise tolerance= if this difference is acceptable")
    with staged_directory(artifact.path / "merged") as stage:
        model.save_pretrained(stage)
        load_tokenizer(_tokenizer_ref(artifact)).save_pretrained(stage)
    _record(artifact, {"merge": asdict(check)})
    return check


def export(artifact: Artifact, destination: str | Path, layout: Layout = "merged", **merge_options: Any) -> Path:
    """Copy the artifact into ``destination`` in a layout other tools load.

    ``merged``: a verified full model (safetensors + tokenizer), loadable by transformers, vLLM or TGI;
    a full fine-tune (no adapter) copies its ``merged/``, which is the trained model itself.
    ``adapter``: the PEFT adapter, tokenizer and manifest only. ``lora-serving``: the adapter with its
    base reference (``base_model_name_or_path``) and the launch lines for vLLM's and TGI's LoRA serving
    in ``serving.json``.
    """
    if layout not in ("merged", "adapter", "lora-serving"):
        raise ConfigError(f"layout={layout!r}; use 'merged', 'adapter' or 'lora-serving'")
    destination = Path(destination)
    if layout == "merged":
        if artifact.has_adapter:
            merge(artifact, **merge_options)  # always verified, even when training already wrote merged/
        elif artifact.merged_path is None:
            raise ArtifactError(f"{artifact.path} has neither an adapter nor merged/; it is not a complete "
                                "artifact, so train it again")
        with staged_directory(destination) as stage:
            shutil.copytree(artifact.path / "merged", stage, dirs_exist_ok=True)
        return destination
    if not artifact.has_adapter:
        raise ArtifactError(f"{artifact.path} has no adapter files; export it with layout='merged'")
    with staged_directory(destination) as stage:
        for item in artifact.path.iterdir():
            if item.is_file():
                shutil.copy2(item, stage / item.name)
        if layout == "lora-serving":
            _write_serving_files(artifact, stage)
    return destination


def _write_serving_files(artifact: Artifact, stage: Path) -> None:
    base = artifact.manifest["base_model"]
    reference = base["path"] if base.get("source") != "hub" else base["name"]
    config_path = stage / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = reference
    config["revision"] = base.get("revision")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    name = artifact.path.name
    rank = config.get("r", 16)
    serving = {
        "base_model": reference, "revision": base.get("revision"), "adapter_name": name, "lora_rank": rank,
        "vllm": f"vllm serve {reference} --enable-lora --max-lora-rank {max(16, rank)} --lora-modules {name}=<this folder>",
        "tgi": f"text-generation-launcher --model-id {reference} --lora-adapters {name}=<this folder>",
        "note": ("the adapter was trained on these exact base weights; serve it on the same base model and "
                 "revision, and render prompts with the chat template in tokenizer_config.json"),
    }
    (stage / "serving.json").write_text(json.dumps(serving, indent=2) + "\n", encoding="utf-8")


def _record(artifact: Artifact, extra: dict[str, Any]) -> None:
    """Add keys to the manifest, written atomically (readers see the old or the new file, never half)."""
    manifest = {k: v for k, v in artifact.manifest.items() if k != "format_version"}
    manifest.update(extra)
    staging = artifact.path / f".{MANIFEST}.staging"
    staging.mkdir(exist_ok=True)
    try:
        write_manifest(staging, manifest)
        (staging / MANIFEST).replace(artifact.path / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    artifact.manifest = json.loads((artifact.path / MANIFEST).read_text(encoding="utf-8"))


def _tokenizer_ref(artifact: Artifact) -> Any:
    from .models import ModelRef

    if (artifact.path / "tokenizer_config.json").is_file():
        return ModelRef(str(artifact.path), "local", str(artifact.path))
    return artifact.base_model_ref()


def _prompt_ids(encoder: Encoder, artifact: Artifact, prompt: Any) -> list[int]:
    return encoder.encode_prompt(artifact.template.prompt_source(prompt))
