"""The server and the Predictor under faults: clients that hang up, a server that restarts mid-run.

(Queue full -> 503 and a generation error failing only its own request are in test_batching.py.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from finetune_sdk import Predictor
from finetune_sdk.deployers.local import LocalServer, free_port
from finetune_sdk.serve.app import create_app
from tests.integration.test_batching import RecordingEngine
from tests.integration.test_server import MESSAGES, QUESTION, ThreadedServer, engine, tuner  # noqa: F401

BODY = {"inputs": QUESTION, "parameters": {"max_new_tokens": 8}}


def hang_up_after(url: str, body: bytes, read: int) -> None:
    """Send a request on a raw socket, read ``read`` bytes of the answer (0: none), then reset the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        if read:
            assert sock.recv(read).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


def test_clients_hanging_up_mid_stream_and_mid_generation_do_not_hurt_others(engine):
    import json

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
    assert len(slow.calls) < 1 + 21 + 1 + 1, "requests of clients that had gone were all generated anyway"


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
