"""The server program as a SageMaker inference container runs it: ``serve`` with the model in /opt/ml/model.

A fake /opt/ml/model (a copy of the tiny artifact, pointed to by SM_MODEL_DIR) stands in for the
directory SageMaker unpacks model.tar.gz into; the server must listen on 0.0.0.0 without an API key
only when container mode is asked for explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from finetune_sdk.deployers.local import free_port
from tests.integration.test_server import QUESTION, engine, expected, tuner  # noqa: F401  (module fixtures)

pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def opt_ml_model(tuner, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("opt") / "ml" / "model"
    shutil.copytree(tuner.artifact.path, model_dir)
    return model_dir


def container_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_SDK_API_KEY", "FINETUNE_SDK_SAGEMAKER")}
    return {**env, **extra}


@pytest.mark.parametrize("how", ["env", "flag"])
def test_serve_in_container_mode_answers_sagemaker_payloads_without_a_key(opt_ml_model, engine, how):
    port = free_port()
    env = container_env(SM_MODEL_DIR=str(opt_ml_model), SAGEMAKER_BIND_TO_PORT=str(port))
    if how == "env":  # an image whose ENTRYPOINT is `python -m finetune_sdk.serve`; SageMaker appends `serve`
        command, env["FINETUNE_SDK_SAGEMAKER"] = ["serve"], "1"
    else:
        command = ["--sagemaker", "serve"]
    process = subprocess.Popen([sys.executable, "-m", "finetune_sdk.serve", *command], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {"inputs": QUESTION, "parameters": {"max_new_tokens": 8}}  # what SageMaker's HF containers take
        response = httpx.post(f"{url}/invocations", json=body, timeout=60)
        assert response.status_code == 200
        assert response.json()[0]["generated_text"] == expected(engine, QUESTION)
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert f"SageMaker container mode: serving {opt_ml_model} on 0.0.0.0:{port} without an API key" in output


def test_public_bind_without_container_mode_is_still_refused(opt_ml_model):
    result = subprocess.run([sys.executable, "-m", "finetune_sdk.serve", str(opt_ml_model), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=120, env=container_env())
    assert result.returncode == 2
    assert "--sagemaker" in result.stderr and "FINETUNE_SDK_SAGEMAKER=1" in result.stderr


def test_serve_without_an_artifact_needs_container_mode():
    result = subprocess.run([sys.executable, "-m", "finetune_sdk.serve"], capture_output=True, text=True,
                            timeout=120, env=container_env())
    assert result.returncode == 2 and "ARTIFACT" in result.stderr and "--sagemaker" in result.stderr
