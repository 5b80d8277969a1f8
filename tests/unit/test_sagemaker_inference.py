"""code/inference.py's request checks and how it finds a base model shipped in model.tar.gz (its full
path, loading a real model and answering, runs in tests/integration/test_sagemaker_moto.py)."""

from __future__ import annotations

import json

import pytest

from finetune_sdk.artifact import MANIFEST, write_manifest
from finetune_sdk.sagemaker import inference


@pytest.mark.parametrize("body, content_type, phrase", [
    (b"questionText\nhello", "text/csv", "content type 'text/csv' is not supported; send application/json"),
    (b'{"prompt": "hi"}', "application/json", "the body needs 'inputs'"),
    (b'["hi"]', "application/json", "the body needs 'inputs'"),
])
def test_input_fn_refuses_what_it_cannot_answer(body, content_type, phrase):
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(")):
        inference.input_fn(body, content_type)


def test_input_fn_reads_the_invocations_body():
    body = {"inputs": [{"questionText": "hi"}], "parameters": {"max_new_tokens": 8}}
    assert inference.input_fn(json.dumps(body).encode(), "application/json; charset=utf-8") == body


def test_a_shipped_base_model_is_used_through_a_linked_view(tmp_path):
    model_dir = tmp_path / "opt-ml-model"
    (model_dir / "base").mkdir(parents=True)
    (model_dir / "code").mkdir()
    (model_dir / "adapter_model.safetensors").write_bytes(b"weights")
    write_manifest(model_dir, {"base_model": {"name": "/home/me/models/tiny", "source": "local",
                                              "path": "/home/me/models/tiny", "revision": None}})
    view = inference.artifact_view(model_dir)
    assert view != model_dir and sorted(p.name for p in view.iterdir()) == ["adapter_model.safetensors", MANIFEST]
    assert (view / "adapter_model.safetensors").resolve() == (model_dir / "adapter_model.safetensors").resolve()
    assert json.loads((view / MANIFEST).read_text())["base_model"] == {
        "name": str(model_dir / "base"), "source": "local", "path": str(model_dir / "base"), "revision": None}
    assert json.loads((model_dir / MANIFEST).read_text())["base_model"]["name"] == "/home/me/models/tiny"


def test_without_a_shipped_base_the_model_dir_is_used_as_is(tmp_path):
    write_manifest(tmp_path, {"base_model": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "source": "hub"}})
    assert inference.artifact_view(tmp_path) == tmp_path
