"""``code/inference.py`` of a model.tar.gz: the Hugging Face inference toolkit's four handler functions.

The toolkit unpacks model.tar.gz into /opt/ml/model and imports this file from ``code/``, where the
SDK's own source is shipped beside it. Requests and answers are those of the SDK's server:
``{"inputs", "parameters"}`` or ``{"messages"}`` in, ``[{"generated_text", "details"}]`` out.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:  # imported as code/inference.py: the SDK's source is shipped beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from finetune_sdk.artifact import MANIFEST  # noqa: E402

JSON = "application/json"


def model_fn(model_dir: str) -> Any:
    """Load the artifact at the root of ``model_dir`` (its base model from ``base/`` when shipped); the linked
    view that needs is removed once the model is in memory."""
    from finetune_sdk.serve.engine import GenerationEngine

    view = artifact_view(Path(model_dir))
    try:
        return GenerationEngine.from_artifact(view, device="auto")
    finally:
        if view != Path(model_dir):
            shutil.rmtree(view, ignore_errors=True)


def input_fn(body: bytes | str, content_type: str = JSON) -> dict[str, Any]:
    if not (content_type or JSON).startswith(JSON):
        raise ValueError(f"content type {content_type!r} is not supported; send {JSON}")
    data = json.loads(body)
    if not isinstance(data, dict) or not ({"inputs", "messages"} & set(data)):
        raise ValueError("the body needs 'inputs' (a string, an object of template columns or a list of them) "
                         "or 'messages' (a chat conversation)")
    return data


def predict_fn(data: dict[str, Any], engine: Any) -> list[dict[str, Any]]:
    if "messages" in data:
        inputs = [data["messages"]]
    else:
        inputs = data["inputs"] if isinstance(data["inputs"], list) else [data["inputs"]]
    if not inputs:
        raise ValueError("'inputs' is an empty list; send at least one input")
    parameters = dict(data.get("parameters") or {})
    return [{"generated_text": g.text, "details": {"finish_reason": g.finish_reason,
                                                    "prompt_tokens": g.prompt_tokens,
                                                    "completion_tokens": g.completion_tokens}}
            for g in engine.generate(inputs, **parameters)]


def output_fn(prediction: list[dict[str, Any]], accept: str = JSON) -> str:
    return json.dumps(prediction)


def artifact_view(model_dir: Path) -> Path:
    """``model_dir`` itself, or, when it ships the base model in ``base/``, a linked copy whose manifest
    points there (the model directory may be read-only)."""
    base = model_dir / "base"
    if not base.is_dir():
        return model_dir
    view = Path(tempfile.mkdtemp(prefix="finetune-sdk-artifact-"))
    for entry in model_dir.iterdir():
        if entry.name not in (MANIFEST, "base", "code"):
            (view / entry.name).symlink_to(entry)
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    manifest["base_model"] = {**manifest["base_model"], "name": str(base), "source": "local", "path": str(base),
                              "revision": None}
    (view / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return view
