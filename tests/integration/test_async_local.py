"""AsyncPredictor.local: the tiny artifact loaded in this process, generating in a thread under asyncio."""

from __future__ import annotations

import asyncio

import pytest

from finetune_sdk import AsyncPredictor, EndpointError, Predictor
from tests.integration.test_server import MESSAGES, QUESTION, ROW, tuner  # noqa: F401  (module fixture)


def test_async_local_equals_the_sync_local_predictor_and_keeps_the_loop_free(tuner):
    inputs = [QUESTION, ROW, MESSAGES]
    with Predictor.local(tuner.artifact, device="cpu") as sync:
        want = [p.text for p in sync.predict_batch(inputs, max_new_tokens=8)]
        want_chat = sync.chat(MESSAGES, max_new_tokens=8).text

    async def calls() -> tuple:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        clock = asyncio.create_task(ticker())
        async with AsyncPredictor.local(tuner.artifact, device="cpu") as p:
            singles = await asyncio.gather(*(p.predict(x, max_new_tokens=8) for x in inputs))
            chat = await p.chat(MESSAGES, max_new_tokens=8)
            with pytest.raises(EndpointError, match="cannot stream"):
                p.stream(QUESTION)
        clock.cancel()
        return [s.text for s in singles], chat.text, ticks

    singles, chat, ticks = asyncio.run(calls())
    assert singles == want and chat == want_chat
    assert ticks > 10, "the event loop was blocked while the model generated"
