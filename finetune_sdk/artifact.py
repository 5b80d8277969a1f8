"""The artifact directory every backend produces and every deployer serves.

    <artifact>/
      adapter_config.json, adapter_model.safetensors   PEFT's own files (LoRA runs)
      tokenizer files                                   the tokenizer used in training
      merged/                                           optional: full model with the adapter folded in
      finetune_sdk.json                                 the manifest (base model, template, stop tokens, ...)

It is written into a staging folder beside its final place and renamed in one step, so a crash
leaves the previous complete artifact or none, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .errors import ArtifactError
from .template import PromptTemplate

if TYPE_CHECKING:
    from .merge import MergeCheck
    from .models import ModelRef

MANIFEST = "finetune_sdk.json"
FORMAT_VERSION = 1


@dataclass
class Artifact:
    """A complete artifact directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        path = Path(path).absolute()  # still the same folder after a chdir
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{path} is not a finetune_sdk artifact (no {MANIFEST}); train one with "
                                "FineTuner(...).train() or pass the directory it wrote")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is damaged") from exc
        version = manifest.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise ArtifactError(f"{path} was written by a newer finetune_sdk (format {version}, this one reads "
                                f"{FORMAT_VERSION}); upgrade with: pip install -U finetune-sdk")
        return cls(path, manifest)

    @property
    def template(self) -> PromptTemplate:
        return PromptTemplate.from_dict(self.manifest["template"])

    @property
    def base_model(self) -> str:
        return self.manifest["base_model"]["name"]

    def base_model_ref(self) -> "ModelRef":
        """The base model to load: the folder recorded at training time when the base was local and that folder
        is still there (a relative name like "models/tiny" reads as a Hub id from another directory), else the
        recorded name (an embedded model, a Hub id, or a local path on another machine)."""
        from .models import resolve_model

        base = self.manifest["base_model"]
        path = base.get("path")
        local = base.get("source") == "local" and path and Path(path).is_dir()
        return resolve_model(path if local else base["name"], base.get("revision"))

    @property
    def has_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file()

    @property
    def merged_path(self) -> Path | None:
        merged = self.path / "merged"
        return merged if (merged / "config.json").is_file() else None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    def merge(self, *, prompts: Sequence[Any] | None = None, dtype: str = "float32", tolerance: float = 1e-3,
              min_agreement: float = 1.0) -> "MergeCheck":
        """Write ``merged/`` only if the merged model matches base + adapter on held-out prompts.

        Compares logits at every prompt position (largest difference <= ``tolerance``) and greedy
        replies (agreeing on at least ``min_agreement`` of the prompts); the default prompts are the
        run's own eval rows. Raises ArtifactError and writes nothing otherwise. Needs the [train] extra.
        """
        from .merge import merge

        return merge(self, prompts=prompts, dtype=dtype, tolerance=tolerance, min_agreement=min_agreement)

    def export(self, destination: str | Path, layout: str = "merged", **merge_options: Any) -> Path:
        """Copy into ``destination`` as ``"merged"`` (verified full model), ``"adapter"``, or ``"lora-serving"``
        (the adapter plus its base reference and vLLM/TGI launch lines)."""
        from .merge import export

        return export(self, destination, layout, **merge_options)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, base_model={self.base_model!r})"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    data = {"format_version": FORMAT_VERSION, **manifest}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


@contextmanager
def staged_directory(final: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; on success it replaces ``final`` in one rename.

    The folder gets the usual permissions (the process umask), like any folder the user creates."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: mkdtemp's folder is owner-only, and the rename would keep that, so a server or
    # container running as another user could not read the artifact.
    staging = final.parent / f".{final.name}.staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
        if final.exists():
            if not overwrite:
                raise ArtifactError(f"{final} already exists; pass overwrite=True or choose another output_dir")
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "artifact")
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
