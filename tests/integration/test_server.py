"""The HTTP server and the HTTP Predictor, end to end: real uvicorn on 127.0.0.1, real httpx, the openai client.

One tiny artifact is trained per module; servers built around its engine run in background threads.
The fault tests run a separate tiny http.server that misbehaves on purpose.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import pytest

from finetune_sdk import (AuthenticationError, BadRequest, EndpointError, EndpointTimeout, EndpointUnavailable,
                          FineTuner, Predictor, RateLimited, TrainingSettings)
from finetune_sdk.backends.local import LocalBackend
from finetune_sdk.deployers.local import free_port
from finetune_sdk.predict.http import HttpTransport
from tests.conftest import COUNSEL

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

QUESTION = "I haven't slept properly since March."
ROW = {"questionText": QUESTION}
MESSAGES = COUNSEL.conversation(ROW, with_completion=False)  # system + user, as the template renders them
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def tuner(tiny_model_dir, tmp_path_factory, counsel_rows) -> FineTuner:
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=tmp_path_factory.mktemp("srv") / "a",
                      eval_fraction=0, backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=2, batch_size=8, learning_rate=5e-3, progress=False))
    tuner.train()  # a high learning rate so greedy replies are non-empty words, not the random model's newlines
    return tuner


@pytest.fixture(scope="module")
def engine(tuner):
    from finetune_sdk.serve.engine import GenerationEngine

    return GenerationEngine.from_artifact(tuner.artifact.path, device="cpu")


class ThreadedServer:
    """uvicorn serving ``app`` on a free loopback port in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def url(engine) -> Iterator[str]:
    from finetune_sdk.serve.app import create_app

    with ThreadedServer(create_app(engine, model_name="tiny")) as server:
        yield server.url


@pytest.fixture(scope="module")
def keyed_url(engine) -> Iterator[str]:
    """A server with an API key and a small body limit."""
    from finetune_sdk.serve.app import create_app

    with ThreadedServer(create_app(engine, api_key=KEY, max_body_bytes=2000, max_new_tokens_cap=16)) as server:
        yield server.url


def expected(engine, source: Any, tokens: int = 8) -> str:
    """The in-process greedy reply, the reference every HTTP route must match."""
    text = engine.generate([source], max_new_tokens=tokens)[0].text
    assert text, "the tiny model produced an empty reply, so comparisons would prove nothing"
    return text


# -- OpenAI API through the official client ------------------------------------------------------------
def test_openai_chat_completion(url, engine):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content == expected(engine, MESSAGES)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 10


def test_openai_chat_streaming_joins_to_the_same_text(url, engine):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(engine, MESSAGES)
    assert len([c for c in chunks if c.choices]) >= 3  # role chunk, content, finish chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0


def test_sse_wire_format(url):
    body = {"messages": MESSAGES, "max_tokens": 4, "stream": True}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_openai_completion_fills_the_prompt_column(url, engine):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reply = client.completions.create(model="tiny", prompt=QUESTION, max_tokens=8)
    assert reply.choices[0].text == expected(engine, QUESTION)
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_openai_null_fields_mean_absent(url, engine):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    nulls = {name: None for name in ("temperature", "top_p", "n", "stream", "stop", "seed", "stream_options", "user",
                                     "max_completion_tokens")}
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, extra_body=nulls)
    assert reply.choices[0].message.content == expected(engine, MESSAGES)
    assert reply.usage.completion_tokens <= 8  # max_completion_tokens: null leaves max_tokens in force
    completion = client.completions.create(model="tiny", prompt=QUESTION, max_tokens=8,
                                           extra_body={k: v for k, v in nulls.items() if k != "max_completion_tokens"})
    assert completion.choices[0].text == expected(engine, QUESTION)
    with Predictor.from_url(url) as predictor:  # the SDK's own client sends None as null too
        streamed = "".join(predictor.stream(MESSAGES, max_new_tokens=8, temperature=None, seed=None))
        assert streamed == predictor.chat(MESSAGES, max_new_tokens=8, temperature=None).text


def test_openai_content_parts_must_be_text(url, engine):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    question = [{"type": "text", "text": "I haven't slept "}, {"type": "text", "text": "properly since March."}]
    reply = client.chat.completions.create(model="tiny", max_tokens=8, messages=[*MESSAGES[:-1], {
        "role": "user", "content": question}])
    assert reply.choices[0].message.content == expected(engine, MESSAGES)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    for parts, message in (([*question, image], "takes only text parts"),
                           ([{"type": "text", "text": 5}], "'text' is not a string")):
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": parts}])


def test_openai_models_retrieve(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' not found; this server holds 'tiny'"):
        client.models.retrieve("gpt-4o")


# -- /invocations with plain httpx -----------------------------------------------------------------------
@pytest.mark.parametrize("body, source", [
    ({"inputs": QUESTION}, QUESTION),
    ({"inputs": ROW}, ROW),
    ({"messages": MESSAGES}, MESSAGES),
])
def test_invocations_single_inputs(url, engine, body, source):
    response = httpx.post(f"{url}/invocations", json={**body, "parameters": {"max_new_tokens": 8}}, timeout=60)
    assert response.status_code == 200, response.text
    (item,) = response.json()
    assert item["generated_text"] == expected(engine, source)
    assert item["details"]["completion_tokens"] <= 8


def test_invocations_batch_keeps_order(url, engine):
    inputs = [QUESTION, {"questionText": "My brother never pays me back."}, MESSAGES]
    response = httpx.post(f"{url}/invocations", json={"inputs": inputs, "parameters": {"max_new_tokens": 8}},
                          timeout=60)
    assert [i["generated_text"] for i in response.json()] == [expected(engine, x) for x in inputs]


def test_return_full_text_prefixes_the_prompt(url, engine):
    response = httpx.post(f"{url}/invocations", timeout=60,
                          json={"inputs": QUESTION, "parameters": {"max_new_tokens": 8, "return_full_text": True}})
    text = response.json()[0]["generated_text"]
    assert QUESTION in text and text.endswith(expected(engine, QUESTION)) and len(text) > len(QUESTION)


def test_same_greedy_text_in_process_over_invocations_and_over_openai(tuner, url):
    with Predictor.local(tuner.artifact, device="cpu") as local, Predictor.from_url(url) as remote:
        in_process = local.predict(ROW, max_new_tokens=8).text
        over_http = remote.predict(ROW, max_new_tokens=8).text
        chat = remote.chat(MESSAGES, max_new_tokens=8).text
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    over_openai = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8).choices[0].message
    assert in_process and in_process == over_http == chat == over_openai.content


# -- errors -----------------------------------------------------------------------------------------------
def test_api_key_is_required_when_set(keyed_url):
    body = {"inputs": QUESTION, "parameters": {"max_new_tokens": 2}}
    assert httpx.get(f"{keyed_url}/ping").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(f"{keyed_url}/invocations", json=body, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert httpx.post(f"{keyed_url}/invocations", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60).status_code == 200
    with pytest.raises(AuthenticationError) as caught, Predictor.from_url(keyed_url, api_key="wrong") as p:
        p.predict(QUESTION)
    assert caught.value.status == 401 and "Authorization" in caught.value.body
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_url}/v1", api_key="wrong", max_retries=0).models.list()
    with Predictor.from_url(keyed_url, api_key=KEY) as p:
        assert p.predict(QUESTION, max_new_tokens=2).completion_tokens <= 2


def test_oversized_body_is_413(keyed_url):
    auth = {"Authorization": f"Bearer {KEY}"}
    big = {"inputs": "x" * 3000}
    assert httpx.post(f"{keyed_url}/invocations", json=big, headers=auth).status_code == 413

    def chunked():  # no Content-Length: the limit must hold while reading the stream
        yield json.dumps(big).encode()

    response = httpx.post(f"{keyed_url}/invocations", content=chunked(),
                          headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 413 and "2000 bytes" in response.json()["error"]["message"]


@pytest.mark.parametrize("parameters, message", [
    ({"max_new_tokens": 4, "beam_width": 3}, "unknown generation parameters ['beam_width']"),
    ({"max_new_tokens": -1}, "max_new_tokens must be"),
])
def test_bad_parameters_are_400(url, parameters, message):
    response = httpx.post(f"{url}/invocations", json={"inputs": QUESTION, "parameters": parameters})
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    with pytest.raises(BadRequest) as caught, Predictor.from_url(url) as p:
        p.predict(QUESTION, **parameters)
    assert caught.value.status == 400 and message in str(caught.value)


def test_malformed_requests(url, keyed_url):
    post = f"{url}/invocations"
    assert httpx.post(post, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert httpx.post(post, content=b"hello", headers={"Content-Type": "text/plain"}).status_code == 415
    assert httpx.post(post, json={}).json()["error"]["message"].startswith("the body needs 'inputs'")
    assert httpx.post(post, json={"messages": [{"role": "user"}]}).status_code == 400
    over_cap = httpx.post(f"{keyed_url}/invocations", headers={"Authorization": f"Bearer {KEY}"},
                          json={"inputs": "x", "parameters": {"max_new_tokens": 17}})
    assert over_cap.status_code == 400 and "cap of 16" in over_cap.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="unsupported parameters"):
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="tiny", messages=MESSAGES, tools=[{"type": "function", "function": {"name": "f"}}])
    missing = httpx.get(f"{url}/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()


class BrokenEngine:
    """Fault injection: the engine fails in a way the server does not expect (a bug, not a bad request)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def prompt_ids(self, source: Any) -> list[int]:
        raise RuntimeError("simulated bug")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def test_an_unexpected_error_is_a_json_500(engine):
    from finetune_sdk.serve.app import create_app

    with ThreadedServer(create_app(BrokenEngine(engine))) as server:
        response = httpx.post(f"{server.url}/invocations", json={"inputs": QUESTION}, timeout=60)
    assert response.status_code == 500
    assert response.json() == {"error": {"message": "the server failed on this request (RuntimeError); the server "
                                                    "log has the details", "type": "server_error"}}


def test_public_bind_without_a_key_is_refused(tuner):
    from finetune_sdk.serve.__main__ import check_bind

    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, None)
    env = {k: v for k, v in os.environ.items() if k != "FINETUNE_SDK_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "finetune_sdk.serve", str(tuner.artifact.path), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and "--api-key" in result.stderr and "0.0.0.0" in result.stderr


# -- retries and timeouts against a server that misbehaves on purpose ------------------------------------
class FaultServer:
    """A loopback http.server that plays a script: each request takes the next (status, headers, delay), or
    (status, headers, delay, body) to send that body instead of the usual one."""

    def __init__(self, script: list[tuple]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, headers, delay, *given = owner.script.pop(0) if owner.script else (200, {}, 0.0)
                time.sleep(delay)
                body = given[0] if given else (json.dumps([{"generated_text": "ok"}]) if status == 200 else json.dumps(
                    {"error": {"message": f"scripted {status}", "type": "fault"}})).encode()
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up, as the timeout test intends

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FaultServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_503_twice_then_success_takes_exactly_two_retries():
    with FaultServer([(503, {"Retry-After": "0"}, 0.0)] * 2) as server, Predictor.from_url(server.url) as p:
        assert p.predict("hi", max_new_tokens=3).text == "ok"
    assert len(server.requests) == 3
    assert server.requests[0] == {"inputs": ["hi"], "parameters": {"max_new_tokens": 3}} == server.requests[-1]


def test_400_is_not_retried():
    with FaultServer([(400, {}, 0.0)]) as server, Predictor.from_url(server.url, max_retries=3) as p:
        with pytest.raises(BadRequest) as caught:
            p.predict("hi")
    assert len(server.requests) == 1
    assert caught.value.status == 400 and "scripted 400" in caught.value.body and "scripted 400" in str(caught.value)
    assert not caught.value.retryable


def test_retry_after_is_honoured_and_retries_run_out():
    slept: list[float] = []
    script = [(429, {"Retry-After": "2"}, 0.0), (503, {}, 0.0), (503, {}, 0.0)]
    with FaultServer(script) as server, Predictor(HttpTransport(server.url, max_retries=2, sleep=slept.append)) as p:
        with pytest.raises(EndpointUnavailable) as caught:
            p.predict("hi")
    assert len(server.requests) == 3 and caught.value.status == 503 and caught.value.retryable
    assert slept[0] == 2.0 and 0.75 <= slept[1] <= 1.0  # the hint, then jittered backoff (1 s minus up to 25%)
    with FaultServer([(429, {}, 0.0)] * 2) as server, Predictor(HttpTransport(server.url, max_retries=1,
                                                                               sleep=slept.append)) as p:
        with pytest.raises(RateLimited):
            p.predict("hi")


def test_retry_after_is_honoured_up_to_a_minute():
    """The server's own 503 asks for 1 to 60 s; a client that cut that short would come back while it is still full."""
    slept: list[float] = []
    script = [(503, {"Retry-After": "30"}, 0.0), (429, {"Retry-After": "3600"}, 0.0)]
    with FaultServer(script) as server, Predictor(HttpTransport(server.url, sleep=slept.append)) as p:
        assert p.predict("hi").text == "ok"
    assert slept == [30.0, 60.0] and len(server.requests) == 3


def test_a_redirect_names_the_url_to_use_and_is_not_followed_or_retried():
    slept: list[float] = []
    with FaultServer([(307, {"Location": "/v2/invocations"}, 0.0)]) as server, Predictor(
            HttpTransport(server.url, sleep=slept.append)) as p:
        with pytest.raises(BadRequest, match=f"redirect to {server.url}/v2/invocations; use this URL") as caught:
            p.predict("hi")
    assert caught.value.status == 307 and len(server.requests) == 1 and slept == []


def test_the_servers_504_is_an_endpoint_timeout_and_not_sent_again():
    slept: list[float] = []
    with FaultServer([(504, {"Retry-After": "1"}, 0.0)]) as server, Predictor(
            HttpTransport(server.url, sleep=slept.append)) as p:
        with pytest.raises(EndpointTimeout, match="not retried") as caught:
            p.predict("hi")
    assert len(server.requests) == 1 and slept == []
    assert caught.value.status == 504 and "scripted 504" in str(caught.value)
    assert not caught.value.retryable  # an EndpointTimeout, but the one kind that a resend cannot help


def test_a_closed_predictor_refuses_at_once_and_sends_nothing():
    with FaultServer([]) as server:
        p = Predictor.from_url(server.url)
        assert p.predict("hi").text == "ok"
        p.close()
        with pytest.raises(EndpointUnavailable, match="Predictor for .* is closed; create a new one") as caught:
            p.predict("hi")
        assert not caught.value.retryable
        with pytest.raises(EndpointUnavailable, match="is closed"):
            list(p.stream("hi"))
    assert len(server.requests) == 1


def test_an_answer_that_cannot_be_decoded_is_an_endpoint_error():
    script = [(200, {"Content-Encoding": "gzip"}, 0.0, b"not gzip at all")]
    with FaultServer(script) as server, Predictor.from_url(server.url) as p:
        with pytest.raises(EndpointError, match="sent an answer that could not be read \\(DecodingError"):
            p.predict("hi")
    assert len(server.requests) == 1


def test_hung_handler_hits_the_client_timeout():
    with FaultServer([(200, {}, 3.0)]) as server, Predictor.from_url(server.url, timeout=0.3, max_retries=0) as p:
        started = time.monotonic()
        with pytest.raises(EndpointTimeout):
            p.predict("hi")
    assert time.monotonic() - started < 2.0 and len(server.requests) == 1


def test_nothing_listening_is_unavailable_after_retries():
    slept: list[float] = []
    with Predictor(HttpTransport(f"http://127.0.0.1:{free_port()}", max_retries=2, sleep=slept.append)) as p:
        with pytest.raises(EndpointUnavailable, match="could not reach"):
            p.predict("hi")
    assert len(slept) == 2


# -- the local deployer -----------------------------------------------------------------------------------
def test_local_deployer_end_to_end(tuner, engine):
    predictor = tuner.deploy("local", api_key=KEY, startup_timeout=180)
    server = predictor.transport.server
    try:
        assert predictor.predict(ROW, max_new_tokens=8).text == expected(engine, ROW)
        assert httpx.post(f"{server.url}/invocations", json={"inputs": "x"}).status_code == 401
    finally:
        predictor.close()
    assert server.process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/ping")
    with socket.socket() as sock:  # the port is free again (SO_REUSEADDR: old connections may linger in TIME_WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
