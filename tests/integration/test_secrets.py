"""No credential ever reaches a log line, a manifest, an events file or an error message.

Fake AWS keys, a Hugging Face token and the server's API key are set in the environment and in the
usual config files; a full local train (child process) + serve (server process) + predict run, with
failures on purpose, and then every byte it produced is searched for every secret.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from finetune_sdk import (AuthenticationError, BadRequest, ConfigError, FineTuneError, FineTuner, Predictor,
                          TrainingSettings)
from tests.conftest import COUNSEL
from tests.integration.secret_scan import SECRETS, occurrences, scan_tree

QUESTION = "I can't sleep."
@pytest.fixture
def secret_env(tmp_path, monkeypatch) -> Path:
    """The secrets in the environment and in ~/.aws/credentials and the Hugging Face token file."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {SECRETS['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {SECRETS['AWS_SECRET_ACCESS_KEY']}\n")
    (home / "hf").mkdir()
    (home / "hf" / "token").write_text(SECRETS["HF_TOKEN"])
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return home


def test_no_secret_in_any_output_of_train_serve_predict(secret_env, tiny_model_dir, tmp_path, counsel_rows, capfd,
                                                        caplog):
    caplog.set_level(logging.DEBUG)
    runs = tmp_path / "runs"
    api_key = SECRETS["FINETUNE_SDK_API_KEY"]
    messages: list[str] = []

    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:24], COUNSEL, output_dir=runs / "a", eval_fraction=0.25,
                      training=TrainingSettings(max_steps=3, save_every=1, batch_size=8, progress=True))
    artifact = tuner.train()  # the default local backend: a child process that inherits the environment
    with pytest.raises(ConfigError) as refused:
        FineTuner(str(tiny_model_dir), counsel_rows[:8], COUNSEL, output_dir=runs / "b",
                  training={"device": "mps"}).train()
    messages.append(str(refused.value))

    predictor = tuner.deploy("local", api_key=api_key, device="cpu", startup_timeout=180)
    server = predictor.transport.server
    try:
        assert predictor.predict(QUESTION, max_new_tokens=4).completion_tokens <= 4
        messages.append("".join(predictor.stream(QUESTION, max_new_tokens=4)))  # the streamed reply is searched too
        for call in (lambda p: p.predict(QUESTION, beam_width=2),  # 400
                     lambda p: p.predict(QUESTION, max_new_tokens=-1)):
            with pytest.raises(BadRequest) as caught:
                call(predictor)
            messages += [str(caught.value), caught.value.body or ""]
        with Predictor.from_url(server.url, api_key="wrong-" + api_key[::-1]) as wrong, \
                pytest.raises(AuthenticationError) as denied:
            wrong.predict(QUESTION)
        messages += [str(denied.value), denied.value.body or ""]
        for route in ("/openapi.json", "/v1/models", "/health"):
            messages.append(httpx.get(f"{server.url}{route}", headers={"Authorization": f"Bearer {api_key}"}).text)
        server_log = server.log_path.read_bytes()
    finally:
        predictor.close()
    with pytest.raises(FineTuneError) as missing:
        Predictor.local(runs / "nowhere")
    messages.append(str(missing.value))

    out, err = capfd.readouterr()
    produced = {
        "files under the run folders (artifact, manifest, spec, events, status, data, checkpoints)": scan_tree(runs),
        "stdout and stderr of this process and its children": occurrences((out + err).encode()),
        "the server's log": occurrences(server_log),
        "log records": occurrences("\n".join(r.getMessage() for r in caplog.records).encode()),
        "error messages and bodies": occurrences("\n".join(messages).encode()),
    }
    assert (artifact.path / "finetune_sdk.json").is_file() and list(runs.glob("a.work/events.jsonl"))
    assert len(caplog.records) > 0 and len(err) > 0 and len(messages) >= 8  # there was output to search
    assert {k: v for k, v in produced.items() if v} == {}
    # the search itself works: it finds the secrets where this test put them
    assert set(scan_tree(secret_env)[str(secret_env / ".aws" / "credentials")]) == {"AWS_ACCESS_KEY_ID",
                                                                                   "AWS_SECRET_ACCESS_KEY"}
