"""The server and the Predictor under faults: clients that hang up, a server that restarts mid-run.

(Queue full -> 503 and a generation error failing only its own request are in test_batching.py.)
"""

from __future__ import annotations

import inspect
import json
import socket
import threading
import time
from collections import Counter
from typing import Any

import httpx

from finetune_sdk import AsyncPredictor, Predictor
from finetune_sdk.deployers.local import LocalServer, LocalServerDeployer, free_port
from finetune_sdk.predict.retry import DEFAULT_TIMEOUT
from finetune_sdk.serve.app import create_app
from finetune_sdk.serve.batcher import DEFAULT_REQUEST_TIMEOUT_S
from tests.integration.test_batching import RecordingEngine
from tests.integration.test_server import MESSAGES, QUESTION, ThreadedServer, engine, tuner  # noqa: F401

BODY = {"inputs": QUESTION, "parameters": {"max_new_tokens": 8}}


def send_raw(url: str, route: str, body: bytes) -> socket.socket:
    """A connection on which a POST of ``body`` to ``route`` has been sent and nothing read yet."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
                 + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def hang_up(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    sock.close()


def hang_up_after(url: str, body: bytes, read: int) -> None:
    """Send a chat request on a raw socket, read ``read`` bytes of the answer (0: none), then reset the connection."""
    sock = send_raw(url, "/v1/chat/completions", body)
    try:
        if read:
            assert sock.recv(read).startswith(b"HTTP/1.1 200")
    finally:
        hang_up(sock)


def test_clients_hanging_up_mid_stream_and_mid_generation_do_not_hurt_others(engine):
    slow = RecordingEngine(engine, delay=0.2)
    stream = json.dumps({"messages": MESSAGES, "max_tokens": 8, "stream": True}).encode()
    with ThreadedServer(create_app(slow, max_wait_ms=0)) as server:
        reference = httpx.post(f"{server.url}/invocations", json=BODY, timeout=60).json()
        for _ in range(10):
            hang_up_after(server.url, stream, read=64)  # mid-stream: after the headers and the first event
        for _ in range(10):
            hang_up_after(server.url, stream, read=0)  # while queued or generating
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=60,
                          json={"messages": MESSAGES, "max_tokens": 8, "stream": True}) as response:
            next(response.iter_lines())  # the first event, then the client closes the stream early
        time.sleep(1.0)
        assert httpx.get(f"{server.url}/ping").status_code == 200
        assert httpx.post(f"{server.url}/invocations", json=BODY, timeout=60).json() == reference
        assert server.thread.is_alive()


def test_the_row_of_a_client_that_hung_up_leaves_the_batch(engine):
    """Uvicorn does not cancel a handler whose client left; the server must notice and stop decoding its row.

    Three clients hang up once their row is decoding; a fourth asks for the same reply and waits for it.
    Every row then decodes the same number of steps unless the rows of the clients that left are dropped.
    """
    tokens = 40
    (alone,) = engine.generate([QUESTION], max_new_tokens=tokens)
    assert alone.finish_reason == "length", "the reply must run to its limit, or step counts prove nothing"
    body = {"inputs": QUESTION, "parameters": {"max_new_tokens": tokens}}
    slow = RecordingEngine(engine, delay=0.1)
    with ThreadedServer(create_app(slow, max_wait_ms=0)) as server:
        for left in range(1, 4):
            sock = send_raw(server.url, "/invocations", json.dumps(body).encode())
            deadline = time.monotonic() + 60
            while len({tag[0] for tags in slow.steps for tag in tags}) < left:  # until its row is decoding
                assert time.monotonic() < deadline, "the request never reached the decode batch"
                time.sleep(0.01)
            hang_up(sock)
        kept = httpx.post(f"{server.url}/invocations", json=body, timeout=120).json()
    assert kept[0]["generated_text"] == alone.text
    steps_per_request = list(Counter(tag[0] for tags in slow.steps for tag in tags).values())  # in order of arrival
    print(f"rows decoded per request: {steps_per_request}")
    *gone, full = steps_per_request
    assert len(gone) == 3 and max(gone) < full, f"rows decoded per request: {steps_per_request}"


def test_the_client_waits_longer_than_the_server_lets_a_request_wait():
    """A client that gave up first would send the request again while the server still generates the first copy;
    a server that gives up first answers 504, which the client raises as EndpointTimeout without resending."""
    assert DEFAULT_TIMEOUT > DEFAULT_REQUEST_TIMEOUT_S
    for method in (Predictor.from_url, AsyncPredictor.from_url, LocalServerDeployer.deploy):
        assert inspect.signature(method).parameters["timeout"].default == DEFAULT_TIMEOUT, method


def test_predictor_survives_a_server_restart_mid_run(tuner):
    port = free_port()

    def start() -> LocalServer:
        return LocalServer.start(tuner.artifact.path, port=port, api_key=None, device="cpu", startup_timeout=240)

    server = start()
    answers: list[Any] = []
    errors: list[BaseException] = []

    def client() -> None:
        # 40 retries back off for minutes in all: enough for a restart that reloads the model on a busy machine
        with Predictor.from_url(server.url, max_retries=40) as predictor:
            for _ in range(24):
                try:
                    answers.append(predictor.predict(QUESTION, max_new_tokens=4).text)
                except Exception as exc:  # recorded and asserted below
                    errors.append(exc)
                time.sleep(0.05)

    worker = threading.Thread(target=client)
    try:
        worker.start()
        while len(answers) < 4:
            assert worker.is_alive() and not errors, errors
            time.sleep(0.05)
        server.process.kill()  # a crash, mid-run: requests in flight are cut
        server.process.wait()
        server.stop()
        restarted = time.monotonic()
        server = start()
        print(f"server down for {time.monotonic() - restarted:.1f} s")
        worker.join(300)
    finally:
        server.stop()
    assert not worker.is_alive()
    assert not errors, errors
    assert len(answers) == 24 and len(set(answers)) == 1  # every request answered, all the same greedy reply
