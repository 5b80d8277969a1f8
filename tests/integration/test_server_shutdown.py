"""Graceful shutdown of the real server program: SIGTERM while requests are generating.

The server runs as ``python -m finetune_sdk.serve`` in a subprocess (as the local deployer and a
container run it), with one row per batch so that queued work outlasts the signal.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from finetune_sdk.deployers.local import free_port
from tests.integration.test_server import QUESTION, tuner  # noqa: F401  (module fixture)

pytest.importorskip("uvicorn")

BODY = {"inputs": [QUESTION] * 4, "parameters": {"max_new_tokens": 32}}


def start_server(*arguments: str) -> tuple[subprocess.Popen, str]:
    """``python -m finetune_sdk.serve ARGUMENTS`` on a free loopback port, once it answers /ping."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "finetune_sdk.serve", *arguments, "--port", str(port),
                                "--log-level", "warning"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"the server did not start:\n{process.communicate()[0]}")


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(tuner):
    process, url = start_server(str(tuner.artifact.path), "--max-batch-size", "1", "--request-timeout", "600")
    try:
        def post() -> tuple[int, int, float]:
            response = httpx.post(f"{url}/invocations", json=BODY, timeout=300)
            return response.status_code, len(response.json()), time.monotonic()

        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(post) for _ in range(4)]
            while not any(p.done() for p in pending):  # once one is answered, the other three are queued
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):  # the listening socket is closed at once
                httpx.post(f"{url}/invocations", json=BODY, timeout=10)
            answers = [p.result() for p in pending]
        assert [(status, count) for status, count, _ in answers] == [(200, 4)] * 4
        assert sum(done > signalled for _, _, done in answers) >= 1, "nothing was still in flight at SIGTERM"
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status says "terminated"
        assert process.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.communicate()[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
