"""``finetune-sdk serve`` and ``finetune-sdk predict --url`` against real servers on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from finetune_sdk import Predictor
from finetune_sdk.cli import main
from finetune_sdk.deployers.local import free_port
from tests.integration.test_server import (KEY, QUESTION, ROW, engine, expected, keyed_url, tuner,  # noqa: F401
                                           url)

pytest.importorskip("uvicorn")


def test_predict_url_prints_the_servers_reply(url, engine, capsys):
    assert main(["predict", "--url", url, QUESTION, "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected(engine, QUESTION) + "\n"


def test_predict_url_sends_the_key_and_reports_a_wrong_one(keyed_url, engine, capsys):
    assert main(["predict", "--url", keyed_url, "--api-key", KEY, '{"questionText": "%s"}' % QUESTION,
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected(engine, ROW) + "\n"
    assert main(["predict", "--url", keyed_url, "--api-key", "wrong", QUESTION]) == 2
    assert "answered 401" in capsys.readouterr().err


def test_predict_needs_an_artifact_or_a_url(capsys):
    for argv in (["predict", QUESTION], ["predict", "runs/x", QUESTION, "--url", "http://127.0.0.1:1"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert "either ARTIFACT" in capsys.readouterr().err


def test_serve_runs_the_server_program(tuner, engine):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "finetune_sdk.cli", "serve", str(tuner.artifact.path),
                                "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited early: {process.stdout.read()}"
            assert time.monotonic() < deadline, "the server did not answer /ping in 120 s"
            try:
                if httpx.get(f"{base}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.post(f"{base}/invocations", json={"inputs": "x"}).status_code == 401  # --api-key reached it
        with Predictor.from_url(base, api_key=KEY) as p:
            assert p.predict(ROW, max_new_tokens=8).text == expected(engine, ROW)
    finally:
        process.terminate()
        process.wait(30)


def test_serve_passes_a_base_model_to_the_server_program(capsys):
    assert main(["serve", "--model", "no-such-model"]) == 1  # the server program's "cannot load" status
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
