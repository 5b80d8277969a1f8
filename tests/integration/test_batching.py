"""Dynamic batching end to end: real uvicorn on 127.0.0.1, real httpx clients in threads, the tiny trained artifact.

The engine is wrapped only to count the inputs of each generate call and, for the overload and
timeout tests, to make generation slow on purpose (fault injection).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx
import pytest

from finetune_sdk.serve.app import create_app
from finetune_sdk.serve.batcher import DynamicBatcher, ShuttingDown
from tests.integration.test_server import ThreadedServer, engine, tuner  # noqa: F401  (module fixtures)


class RecordingEngine:
    """The real engine, recording the inputs of every generate call; ``delay`` seconds slower when set."""

    def __init__(self, engine: Any, delay: float = 0.0) -> None:
        self.engine = engine
        self.delay = delay
        self.calls: list[list[Any]] = []

    def generate(self, inputs: Sequence[Any], **params: Any) -> list[Any]:
        self.calls.append(list(inputs))
        time.sleep(self.delay)
        return self.engine.generate(inputs, **params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


@pytest.fixture(scope="module")
def alone(engine, counsel_rows) -> dict[str, Any]:
    """Twelve questions and each one's greedy reply generated on its own: what every batched reply must equal.

    Only questions the tiny model answers with visible text are kept, so equal texts prove something.
    """
    distinct = list(dict.fromkeys(r["questionText"] for r in counsel_rows))
    screened = engine.generate(distinct, max_new_tokens=8)  # one batched pass finds the candidates quickly
    replies: dict[str, Any] = {}
    for question in (q for q, g in zip(distinct, screened) if g.text):
        (reply,) = engine.generate([question], max_new_tokens=8)
        if reply.text:
            replies[question] = reply
        if len(replies) == 12:
            return replies
    pytest.fail(f"only {len(replies)} questions got a non-empty reply from the tiny model; comparisons need 12")


@pytest.fixture(scope="module")
def questions(alone) -> list[str]:
    return list(alone)


def answer(response: httpx.Response) -> tuple[str, str, int]:
    (item,) = response.json()
    return item["generated_text"], item["details"]["finish_reason"], item["details"]["completion_tokens"]


def reference(reply: Any) -> tuple[str, str, int]:
    return reply.text, reply.finish_reason, reply.completion_tokens


def post_all(url: str, bodies: list[dict[str, Any]], timeout: float = 60) -> list[httpx.Response]:
    """Send every body at once, one thread each, and return the responses in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: httpx.post(f"{url}/invocations", json=b, timeout=timeout), bodies))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(engine, questions, alone):
    recorder = RecordingEngine(engine)
    with ThreadedServer(create_app(recorder, max_wait_ms=200, max_batch_size=16)) as server:
        responses = post_all(server.url, [{"inputs": q, "parameters": {"max_new_tokens": 8}} for q in questions])
    assert [r.status_code for r in responses] == [200] * len(questions)
    assert [answer(r) for r in responses] == [reference(alone[q]) for q in questions]
    assert max(len(c) for c in recorder.calls) > 1, f"no call batched requests: {recorder.calls}"
    assert sum(len(c) for c in recorder.calls) == len(questions)


def test_different_parameters_are_not_mixed(engine, questions, alone):
    recorder = RecordingEngine(engine)
    bodies = [{"inputs": q, "parameters": {"max_new_tokens": 8 if i % 2 else 3}} for i, q in enumerate(questions[:6])]
    with ThreadedServer(create_app(recorder, max_wait_ms=200)) as server:
        responses = post_all(server.url, bodies)
    for body, response in zip(bodies, responses):
        assert response.status_code == 200
        assert response.json()[0]["details"]["completion_tokens"] <= body["parameters"]["max_new_tokens"]
        if body["parameters"]["max_new_tokens"] == 8:
            assert answer(response) == reference(alone[body["inputs"]])
    assert len(recorder.calls) >= 2  # at least one call per parameter set


def test_without_batching_requests_run_one_at_a_time(engine, questions, alone):
    recorder = RecordingEngine(engine)
    with ThreadedServer(create_app(recorder, batching=False)) as server:
        responses = post_all(server.url, [{"inputs": q, "parameters": {"max_new_tokens": 8}} for q in questions[:4]])
    assert [answer(r) for r in responses] == [reference(alone[q]) for q in questions[:4]]
    assert [len(c) for c in recorder.calls] == [1, 1, 1, 1]


def test_a_bad_input_is_refused_before_it_joins_a_batch(engine, questions, alone):
    recorder = RecordingEngine(engine)
    good = [{"inputs": q, "parameters": {"max_new_tokens": 8}} for q in questions[:3]]
    bad = {"inputs": {"noSuchColumn": "x"}, "parameters": {"max_new_tokens": 8}}  # the template needs questionText
    with ThreadedServer(create_app(recorder, max_wait_ms=300)) as server:
        responses = post_all(server.url, good + [bad])
    assert [answer(r) for r in responses[:3]] == [reference(alone[q]) for q in questions[:3]]
    assert responses[3].status_code == 400 and "questionText" in responses[3].json()["error"]["message"]
    assert not any(bad["inputs"] in c for c in recorder.calls), "the bad input reached the model"


class PoisonEngine(RecordingEngine):
    """Fault injection: generation fails (as a device error would) for any batch holding ``poison``."""

    def __init__(self, engine: Any, poison: str) -> None:
        super().__init__(engine)
        self.poison = poison

    def generate(self, inputs: Sequence[Any], **params: Any) -> list[Any]:
        self.calls.append(list(inputs))
        if self.poison in inputs:
            raise RuntimeError("simulated device error")
        return self.engine.generate(inputs, **params)


def test_a_generation_error_fails_only_its_own_request(engine, questions, alone):
    poisoned = PoisonEngine(engine, questions[3])
    with ThreadedServer(create_app(poisoned, max_wait_ms=300)) as server:
        responses = post_all(server.url, [{"inputs": q, "parameters": {"max_new_tokens": 8}} for q in questions[:4]])
        after = httpx.post(f"{server.url}/invocations", json={"inputs": questions[0], "parameters": {
            "max_new_tokens": 8}}, timeout=60)
    assert [answer(r) for r in responses[:3]] == [reference(alone[q]) for q in questions[:3]]
    assert responses[3].status_code == 500 and "simulated device error" in responses[3].json()["error"]["message"]
    assert any(len(c) > 1 and questions[3] in c for c in poisoned.calls), "the poisoned input was never batched"
    assert answer(after) == reference(alone[questions[0]])  # the server keeps serving


def test_overload_answers_503_with_retry_after_never_hangs(engine):
    slow = RecordingEngine(engine, delay=0.3)
    with ThreadedServer(create_app(slow, max_queue=2, max_batch_size=1, max_wait_ms=0)) as server:
        started = time.monotonic()
        responses = post_all(server.url, [{"inputs": "hello", "parameters": {"max_new_tokens": 2}}] * 20, timeout=30)
        elapsed = time.monotonic() - started
        assert httpx.get(f"{server.url}/ping").status_code == 200
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 10, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["type"] == "overloaded_error"
    assert elapsed < 15  # the 503s come at once, not after the queue drains


def test_a_request_waiting_too_long_is_504(engine):
    slow = RecordingEngine(engine, delay=1.5)
    with ThreadedServer(create_app(slow, request_timeout_s=0.3)) as server:
        response = httpx.post(f"{server.url}/invocations", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
                              timeout=30)
    assert response.status_code == 504 and response.json()["error"]["type"] == "timeout_error"
    assert "Retry-After" in response.headers


def test_close_finishes_queued_work_and_refuses_new(engine, questions, alone):
    async def scenario() -> tuple[list[Any], BaseException | None]:
        batcher = DynamicBatcher(RecordingEngine(engine, delay=0.2), max_batch_size=1, max_wait_ms=0)
        pending = [asyncio.create_task(batcher.submit([q], {"max_new_tokens": 8})) for q in questions[:3]]
        await asyncio.sleep(0.05)  # all three are queued or running
        await batcher.close()
        assert all(t.done() for t in pending)
        try:
            await batcher.submit(["late"], {"max_new_tokens": 2})
        except ShuttingDown as exc:
            return [t.result()[0].text for t in pending], exc
        return [t.result()[0].text for t in pending], None

    texts, refused = asyncio.run(scenario())
    assert texts == [alone[q].text for q in questions[:3]]
    assert isinstance(refused, ShuttingDown)
