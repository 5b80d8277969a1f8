"""The in-process transports answer as the HTTP server does, and close cleanly (the tiny model; a stub engine only
to hold a generation in flight)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

import pytest

from finetune_sdk import AsyncPredictor, BadRequest, EndpointUnavailable, Predictor
from finetune_sdk.predict.inprocess import AsyncInProcessTransport, InProcessTransport
from finetune_sdk.serve.decode import Generation
from tests.integration.test_server import ThreadedServer


@pytest.fixture(scope="module")
def predictors(tiny_engine) -> Iterator[tuple[Predictor, Predictor]]:
    """The tiny engine in this process, and the same engine behind the HTTP server."""
    from finetune_sdk.serve.app import create_app

    with ThreadedServer(create_app(tiny_engine)) as server, Predictor(InProcessTransport(tiny_engine)) as local, \
            Predictor.from_url(server.url) as remote:
        yield local, remote


@pytest.mark.parametrize("parameters", [{"beam_width": 3}, {"max_new_tokens": 0}, {"top_p": 0, "do_sample": True},
                                        {"temperature": 1e-9, "do_sample": True}, {"stop": [1, 2]}])
def test_bad_parameters_are_bad_requests_in_process_as_over_http(predictors, parameters):
    for predictor in predictors:
        with pytest.raises(BadRequest, match=next(iter(parameters))):
            predictor.predict("hello", **parameters)


def test_return_full_text_in_process_as_over_http(predictors):
    local, remote = (p.predict("hello", max_new_tokens=3, return_full_text=True).text for p in predictors)
    assert local == remote and local.startswith("system\nYou are a mental health assistant.\nuser\nhello")


class BlockingEngine:
    """An engine whose generation waits until the test releases it: a generation in flight."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def generate(self, inputs: list[Any], **parameters: Any) -> list[Generation]:
        self.entered.set()
        self.release.wait(5)
        return [Generation("done", "stop", 1, 1) for _ in inputs]


def test_aclose_waits_for_the_generation_in_flight_without_blocking_the_event_loop():
    engine = BlockingEngine()

    async def run() -> tuple[bool, str]:
        predictor = AsyncPredictor(AsyncInProcessTransport(InProcessTransport(engine)))
        job = asyncio.create_task(predictor.predict("hi"))
        await asyncio.to_thread(engine.entered.wait)
        closing = asyncio.create_task(predictor.aclose())
        await asyncio.sleep(0)  # aclose starts waiting; the loop must come back here while it does
        loop_ran_while_closing = not closing.done()
        engine.release.set()
        await closing
        with pytest.raises(EndpointUnavailable, match="closed"):
            await predictor.predict("again")
        return loop_ran_while_closing, (await job).text

    loop_ran_while_closing, text = asyncio.run(run())
    assert loop_ran_while_closing, "aclose() blocked the event loop until the generation finished"
    assert text == "done"


def test_a_closed_in_process_predictor_says_so():
    engine = BlockingEngine()
    engine.release.set()
    predictor = Predictor(InProcessTransport(engine))
    predictor.close()
    with pytest.raises(EndpointUnavailable, match="closed"):
        predictor.predict("hi")
