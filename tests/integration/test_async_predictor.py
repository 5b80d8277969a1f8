"""AsyncPredictor and streaming, end to end: real uvicorn on 127.0.0.1 with a tiny artifact, real httpx.

The server fixtures and the misbehaving FaultServer come from test_server.py, so both modules test
against identical servers; the fault tests mirror the sync ones there.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from finetune_sdk import (AsyncPredictor, BadRequest, ConfigError, EndpointError, EndpointTimeout,
                          EndpointUnavailable, Predictor)
from finetune_sdk.predict.async_http import AsyncHttpTransport
from finetune_sdk.predict.base import chat_body
from tests.integration.test_server import (MESSAGES, QUESTION, ROW, FaultServer, engine, expected,  # noqa: F401
                                           tuner, url)

pytest.importorskip("uvicorn")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def collect(chunks: Any) -> list[str]:
    return [chunk async for chunk in chunks]


def test_async_predict_batch_and_chat_equal_the_sync_predictor(url):
    inputs = [QUESTION, ROW, MESSAGES]
    with Predictor.from_url(url) as sync:
        want = [p.text for p in sync.predict_batch(inputs, max_new_tokens=8)]
        want_chat = sync.chat(MESSAGES, max_new_tokens=8).text

    async def calls() -> tuple:
        async with AsyncPredictor.from_url(url) as p:
            one = await p.predict(ROW, max_new_tokens=8)
            batch = await p.predict_batch(inputs, max_new_tokens=8)
            chat = await p.chat(MESSAGES, max_new_tokens=8)
            return one, batch, chat, await p.predict_batch([])

    one, batch, chat, empty = run(calls())
    assert all(want) and [p.text for p in batch] == want
    assert one.text == want[1] and chat.text == want_chat == want[2] and empty == []
    assert 0 < one.completion_tokens <= 8 and one.finish_reason in ("stop", "length")


def test_stream_chunks_join_to_the_non_streamed_text(url, engine):
    user_only = [{"role": "user", "content": QUESTION}]  # what stream() sends for a plain string
    with Predictor.from_url(url) as p:
        chunks = list(p.stream(MESSAGES, max_new_tokens=8))
        string_chunks = list(p.stream(QUESTION, max_new_tokens=8))
    assert "".join(chunks) == expected(engine, MESSAGES) and all(chunks)
    assert "".join(string_chunks) == p_chat_text(url, user_only)
    assert len(chunks) >= 2 or len(expected(engine, MESSAGES).split(" ")) <= 4  # the server sends 4-word pieces

    async def stream() -> tuple[list[str], list[str]]:
        async with AsyncPredictor.from_url(url) as ap:
            return (await collect(ap.stream(MESSAGES, max_new_tokens=8)),
                    await collect(ap.stream(QUESTION, max_new_tokens=8)))

    async_chunks, async_string_chunks = run(stream())
    assert async_chunks == chunks and async_string_chunks == string_chunks


def p_chat_text(url: str, messages: list[dict[str, str]]) -> str:
    with Predictor.from_url(url) as p:
        return p.chat(messages, max_new_tokens=8).text


def test_a_string_streams_as_one_user_message_without_the_system_prompt():
    body = chat_body(QUESTION, {"max_new_tokens": 8, "temperature": 0.5})
    assert body == {"messages": [{"role": "user", "content": QUESTION}], "stream": True, "max_tokens": 8,
                    "temperature": 0.5}


def test_stream_refuses_what_it_cannot_send(url):
    with Predictor.from_url(url) as p:
        with pytest.raises(ConfigError, match="predict()"):
            p.stream(ROW)
        with pytest.raises(ConfigError, match="do_sample"):
            p.stream(QUESTION, do_sample=True)
        with pytest.raises(BadRequest, match="max_new_tokens"):  # the server's 400 arrives typed, not retried
            list(p.stream(QUESTION, max_new_tokens=-1))


def test_in_process_transport_cannot_stream(tuner):
    with Predictor.local(tuner.artifact, device="cpu") as p:
        with pytest.raises(EndpointError, match="cannot stream"):
            p.stream(QUESTION)


# -- the same faults as the sync tests in test_server.py -------------------------------------------------
def test_async_503_twice_then_success_takes_exactly_two_retries():
    async def call(server_url: str) -> str:
        async with AsyncPredictor.from_url(server_url) as p:
            return (await p.predict("hi", max_new_tokens=3)).text

    with FaultServer([(503, {"Retry-After": "0"}, 0.0)] * 2) as server:
        assert run(call(server.url)) == "ok"
    assert len(server.requests) == 3
    assert server.requests[0] == {"inputs": ["hi"], "parameters": {"max_new_tokens": 3}} == server.requests[-1]


def test_async_400_is_not_retried():
    async def call(server_url: str) -> None:
        async with AsyncPredictor.from_url(server_url, max_retries=3) as p:
            await p.predict("hi")

    with FaultServer([(400, {}, 0.0)]) as server, pytest.raises(BadRequest) as caught:
        run(call(server.url))
    assert len(server.requests) == 1
    assert caught.value.status == 400 and "scripted 400" in str(caught.value)


def test_async_504_is_an_endpoint_timeout_and_not_sent_again():
    async def call(server_url: str) -> None:
        async with AsyncPredictor.from_url(server_url) as p:
            await p.predict("hi")

    with FaultServer([(504, {"Retry-After": "0"}, 0.0)]) as server, pytest.raises(EndpointTimeout) as caught:
        run(call(server.url))
    assert len(server.requests) == 1 and caught.value.status == 504


def test_an_async_predictor_says_it_belongs_to_its_first_event_loop():
    with FaultServer([]) as server:
        p = AsyncPredictor.from_url(server.url)
        assert run(p.predict("hi")).text == "ok"
        with pytest.raises(ConfigError, match="first used on another event loop .*; create one AsyncPredictor"):
            run(p.predict("hi"))
    assert len(server.requests) == 1


def test_a_closed_async_predictor_refuses_at_once():
    async def calls(server_url: str) -> None:
        p = AsyncPredictor.from_url(server_url)
        await p.aclose()
        await p.predict("hi")

    with FaultServer([]) as server, pytest.raises(EndpointUnavailable, match="is closed; create a new one"):
        run(calls(server.url))
    assert server.requests == []


def test_async_backoff_uses_the_shared_policy():
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async def call(server_url: str) -> str:
        async with AsyncPredictor(AsyncHttpTransport(server_url, max_retries=2, sleep=record)) as p:
            return (await p.predict("hi")).text

    with FaultServer([(429, {"Retry-After": "2"}, 0.0), (503, {}, 0.0)]) as server:
        assert run(call(server.url)) == "ok"
    assert len(server.requests) == 3
    assert slept[0] == 2.0 and 0.75 <= slept[1] <= 1.0  # the hint, then jittered backoff (1 s minus up to 25%)


def test_async_hung_handler_hits_the_client_timeout():
    async def call(server_url: str) -> None:
        async with AsyncPredictor.from_url(server_url, timeout=0.3, max_retries=0) as p:
            await p.predict("hi")

    with FaultServer([(200, {}, 3.0)]) as server:
        started = time.monotonic()
        with pytest.raises(EndpointTimeout):
            run(call(server.url))
    assert time.monotonic() - started < 2.0 and len(server.requests) == 1


def test_stream_retries_its_opening_and_notices_a_missing_done():
    """503 twice, then a 200 whose body is not SSE: the opening is retried, the cut-short body is an error."""
    with FaultServer([(503, {"Retry-After": "0"}, 0.0)] * 2) as server, Predictor.from_url(server.url) as p:
        with pytest.raises(EndpointError, match=r"without 'data: \[DONE\]'"):
            list(p.stream("hi"))
    assert len(server.requests) == 3 and server.requests[0]["stream"] is True


def sse_chunk(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


@pytest.mark.parametrize("error_event", [
    b'data: {"error": {"message": "CUDA out of memory", "type": "server_error"}}\n\n',  # OpenAI-compatible servers
    b'event: error\ndata: {"error": "CUDA out of memory", "error_type": "generation"}\n\n'])  # TGI
def test_an_error_event_mid_stream_raises_the_servers_message(error_event):
    """The text before the error arrives; the error is raised, not taken for the end of a complete reply."""
    body = sse_chunk("The first half") + error_event + b"data: [DONE]\n\n"
    script = [(200, {"Content-Type": "text/event-stream"}, 0.0, body)] * 2
    received: list[str] = []

    async def stream(server_url: str) -> None:
        async with AsyncPredictor.from_url(server_url) as ap:
            async for text in ap.stream("hi"):
                received.append(text)

    with FaultServer(script) as server:
        with Predictor.from_url(server.url) as p, pytest.raises(EndpointUnavailable, match="CUDA out of memory"):
            for text in p.stream("hi"):
                received.append(text)
        with pytest.raises(EndpointUnavailable, match="failed mid-stream: CUDA out of memory"):
            run(stream(server.url))
    assert received == ["The first half"] * 2 and len(server.requests) == 2
