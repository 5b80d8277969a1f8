"""Dynamic batching end to end: real uvicorn on 127.0.0.1, real httpx clients in threads, the tiny trained artifact.

The engine is wrapped only to record the inputs of each generate call and the rows of each decode step
and, for the overload and timeout tests, to make the model slow on purpose (fault injection).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx
import pytest

from finetune_sdk.serve.app import create_app
from finetune_sdk.serve.batcher import DynamicBatcher, QueueFull, ShuttingDown
from tests.integration.test_server import ThreadedServer, engine, tuner  # noqa: F401  (module fixtures)


class RecordingEngine:
    """The real engine, recording the inputs of every generate call and the rows of every decode step of
    its continuous batch; each of those model calls ``delay`` seconds slower when set, and each decode step
    waits for a release of ``gate`` when one is given."""

    def __init__(self, engine: Any, delay: float = 0.0, gate: threading.Semaphore | None = None) -> None:
        self.engine = engine
        self.delay = delay
        self.gate = gate
        self.calls: list[list[Any]] = []
        self.steps: list[list[Any]] = []  # the row tags at each decode step

    def generate(self, inputs: Sequence[Any], **params: Any) -> list[Any]:
        self.calls.append(list(inputs))
        time.sleep(self.delay)
        return self.engine.generate(inputs, **params)

    def decode_batch(self) -> Any:
        batch, recorder = self.engine.decode_batch(), self

        class RecordingBatch:
            def step(self) -> Any:
                recorder.steps.append([row.tag for row in batch.rows])
                if recorder.gate is not None:
                    recorder.gate.acquire()
                time.sleep(recorder.delay)
                return batch.step()

            def __getattr__(self, name: str) -> Any:
                return getattr(batch, name)

            def __len__(self) -> int:
                return len(batch)

        return RecordingBatch()

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


def requests_per_step(recorder: RecordingEngine) -> list[int]:
    return [len({id(request) for request, _ in tags}) for tags in recorder.steps]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(engine, questions, alone):
    recorder = RecordingEngine(engine)
    with ThreadedServer(create_app(recorder, max_wait_ms=200, max_batch_size=16)) as server:
        responses = post_all(server.url, [{"inputs": q, "parameters": {"max_new_tokens": 8}} for q in questions])
    assert [r.status_code for r in responses] == [200] * len(questions)
    assert [answer(r) for r in responses] == [reference(alone[q]) for q in questions]
    assert max(requests_per_step(recorder)) > 1, f"no step decoded several requests: {recorder.steps}"
    assert recorder.calls == []  # greedy requests never fall back to model.generate


def test_a_waiting_input_takes_the_row_a_short_reply_frees(engine, questions, alone):
    """Three token limits, two rows: whichever two start, the shorter ends first and the third input joins
    while the longer is still decoding."""
    full = [q for q in questions if alone[q].finish_reason == "length"][:3]
    assert len(full) == 3, "the tiny model should run three replies to their token limit"
    bodies = [{"inputs": q, "parameters": {"max_new_tokens": n}} for q, n in zip(full, (2, 5, 8))]
    recorder = RecordingEngine(engine)
    with ThreadedServer(create_app(recorder, max_wait_ms=300, max_batch_size=2)) as server:
        responses = post_all(server.url, bodies)
    assert [r.json()[0]["details"]["completion_tokens"] for r in responses] == [2, 5, 8]
    assert answer(responses[2]) == reference(alone[full[2]])
    assert max(len(tags) for tags in recorder.steps) == 2
    rows = [{tag[0].inputs[0] for tag in tags} for tags in recorder.steps]
    joined = [later - earlier for earlier, later in zip(rows, rows[1:]) if later - earlier and earlier & later]
    assert joined, f"no input joined a batch that was already decoding: {rows}"


def test_greedy_limits_share_steps_sampling_parameters_are_not_mixed(engine, questions, alone):
    recorder = RecordingEngine(engine)
    greedy = [{"inputs": q, "parameters": {"max_new_tokens": 8 if i % 2 else 3}} for i, q in enumerate(questions[:4])]
    sampled = [{"inputs": q, "parameters": {"max_new_tokens": 4, "do_sample": True, "temperature": t, "seed": 7}}
               for q, t in zip(questions[4:6], (0.7, 1.3))]
    with ThreadedServer(create_app(recorder, max_wait_ms=300)) as server:
        responses = post_all(server.url, greedy + sampled)
    assert [r.status_code for r in responses] == [200] * 6
    for body, response in zip(greedy, responses):
        assert response.json()[0]["details"]["completion_tokens"] <= body["parameters"]["max_new_tokens"]
        if body["parameters"]["max_new_tokens"] == 8:
            assert answer(response) == reference(alone[body["inputs"]])
    assert max(requests_per_step(recorder)) > 1
    assert sorted(recorder.calls) == sorted([b["inputs"]] for b in sampled)  # each sampling request alone
    for body, response in zip(sampled, responses[4:]):  # a seeded request answers as it does in process
        (same,) = engine.generate([body["inputs"]], **body["parameters"])
        assert answer(response) == reference(same)


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
    assert not any(tag[0].inputs == [bad["inputs"]] for tags in recorder.steps for tag in tags)
    assert max(requests_per_step(recorder)) > 1


class PoisonEngine(RecordingEngine):
    """Fault injection: the model fails (as a device error would) when the prompt of ``poison`` joins the batch."""

    def __init__(self, engine: Any, poison: str) -> None:
        super().__init__(engine)
        self.poison = poison

    def decode_batch(self) -> Any:
        batch, poison = super().decode_batch(), self.poison

        class PoisonedBatch:
            def add(self, tag: Any, *args: Any, **kwargs: Any) -> Any:
                if tag[0].inputs == [poison]:
                    raise RuntimeError("simulated device error")
                return batch.add(tag, *args, **kwargs)

            def __getattr__(self, name: str) -> Any:
                return getattr(batch, name)

            def __len__(self) -> int:
                return len(batch)

        return PoisonedBatch()


def test_a_generation_error_fails_only_its_own_request(engine, questions, alone):
    poisoned = PoisonEngine(engine, questions[3])
    with ThreadedServer(create_app(poisoned, max_wait_ms=300)) as server:
        responses = post_all(server.url, [{"inputs": q, "parameters": {"max_new_tokens": 8}} for q in questions[:4]])
        after = httpx.post(f"{server.url}/invocations", json={"inputs": questions[0], "parameters": {
            "max_new_tokens": 8}}, timeout=60)
    assert [answer(r) for r in responses[:3]] == [reference(alone[q]) for q in questions[:3]]
    assert responses[3].status_code == 500 and "simulated device error" in responses[3].json()["error"]["message"]
    assert max(requests_per_step(poisoned)) > 1, "the other requests were not batched"
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


def test_requests_waiting_between_decode_steps_count_against_the_queue_bound(engine, questions, alone):
    """max_queue bounds every request not yet decoding, also those that arrived while the batch was running."""
    long = next(q for q in questions if alone[q].finish_reason == "length")  # its row outlasts two steps

    async def scenario() -> list[BaseException | None]:
        gate = threading.Semaphore(0)
        gated = RecordingEngine(engine, gate=gate)
        batcher = DynamicBatcher(gated, max_batch_size=1, max_queue=2, max_wait_ms=0)
        body = {"max_new_tokens": 8}

        async def steps_reach(count: int) -> None:
            while len(gated.steps) < count:
                await asyncio.sleep(0.01)

        decoding = asyncio.create_task(batcher.submit([long], body))
        await asyncio.wait_for(steps_reach(1), 60)  # its row fills the batch; the step waits at the gate
        queued = [asyncio.create_task(batcher.submit([f"hello {i}"], body)) for i in range(2)]
        await asyncio.sleep(0)  # both are queued
        gate.release()  # one decode step; the worker takes new work between steps
        await asyncio.wait_for(steps_reach(2), 60)
        late = asyncio.create_task(batcher.submit(["one too many"], body))
        await asyncio.sleep(0)
        outcome = [late.exception() if late.done() else None]
        gate.release(1000)  # let everything finish
        await asyncio.gather(decoding, *queued, late, return_exceptions=True)
        await batcher.close()
        return outcome

    (refused,) = asyncio.run(scenario())
    assert isinstance(refused, QueueFull), "two requests were waiting, yet a third was queued"


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


def test_continuous_decoding_equals_model_generate(engine, questions):
    """The hand-written decode loop (twelve rows of different lengths in one batch) gives, token for token,
    what transformers' own greedy ``generate`` gives for each prompt alone."""
    import torch

    stop = engine.encoder.stop_token_ids
    for question, generation in zip(questions, engine.generate(questions, max_new_tokens=8)):
        ids = torch.tensor([engine.prompt_ids(question)])
        out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                    eos_token_id=stop, pad_token_id=engine.tokenizer.pad_token_id)
        tokens = out[0, ids.shape[1]:].tolist()
        tokens = tokens[:next((i for i, t in enumerate(tokens) if t in stop), len(tokens))]
        assert generation.completion_tokens == len(tokens)
        assert generation.text == engine.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_a_stop_string_ends_generation_alike_in_the_continuous_batch_and_in_model_generate(engine, questions):
    """Greedy decoding runs in the continuous batch; sampling runs through ``model.generate`` (and top_k=1
    samples the greedy tokens). Both stop at the token that completes a stop string and count tokens up to it."""
    full = engine.generate([questions[0]], max_new_tokens=16)[0]
    words = full.text.split()
    assert full.finish_reason == "length" and len(words) > 2, full
    stop = words[len(words) // 2]
    greedy = engine.generate([questions[0]], max_new_tokens=16, stop=stop)[0]
    sampled = engine.generate([questions[0]], max_new_tokens=16, stop=stop, do_sample=True, top_k=1)[0]
    assert greedy.finish_reason == "stop" and greedy.completion_tokens < full.completion_tokens
    assert sampled == greedy
