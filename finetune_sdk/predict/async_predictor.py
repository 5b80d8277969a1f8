"""AsyncPredictor: the Predictor for asyncio code, awaiting an async transport instead of blocking."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Protocol, Sequence

from .base import Prediction, PredictorBase, chat_body, delta_text


class AsyncTransport(Protocol):
    """The async form of :class:`.predictor.Transport` (``stream_chat`` is optional, as there)."""

    async def send(self, request: dict[str, Any]) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class AsyncPredictor(PredictorBase):
    """Awaitable ``predict``, ``predict_batch``, ``chat`` and ``stream``; the same requests as :class:`Predictor`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self.transport = transport

    @classmethod
    def local(cls, artifact: str | Path | Any, *, device: str = "auto") -> "AsyncPredictor":
        """Load an artifact into this process (needs the [train] extra); each call generates in a thread."""
        from .inprocess import AsyncInProcessTransport, InProcessTransport

        path = getattr(artifact, "path", artifact)
        return cls(AsyncInProcessTransport(InProcessTransport.from_artifact(path, device=device)))

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None, *, timeout: float = 150.0,
                 max_retries: int = 3) -> "AsyncPredictor":
        """An HTTP endpoint that speaks ``/invocations``, retried exactly as ``Predictor.from_url`` is."""
        from .async_http import AsyncHttpTransport

        return cls(AsyncHttpTransport(url, api_key=api_key, timeout=timeout, max_retries=max_retries))

    async def predict(self, input: Any, **generation: Any) -> Prediction:
        return (await self.predict_batch([input], **generation))[0]

    async def predict_batch(self, inputs: Sequence[Any], **generation: Any) -> list[Prediction]:
        """One request for many inputs; the endpoint generates them as a batch."""
        inputs = self._batch_inputs(inputs)
        if not inputs:
            return []
        return self._predictions(await self.transport.send(self._batch_request(inputs, generation)), len(inputs))

    async def chat(self, messages: Sequence[Mapping[str, str]], **generation: Any) -> Prediction:
        """Continue a conversation given as ``[{"role", "content"}, ...]``."""
        return (await self.predict_batch([list(messages)], **generation))[0]

    def stream(self, input_or_messages: str | Sequence[Mapping[str, str]], **generation: Any) -> AsyncIterator[str]:
        """The reply as text chunks (``async for``); see :meth:`Predictor.stream` for what is sent."""
        body = chat_body(input_or_messages, generation)  # bad arguments fail here, not at the first chunk
        return _texts(self._stream_transport().stream_chat(body))

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> "AsyncPredictor":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


async def _texts(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    async for chunk in chunks:
        text = delta_text(chunk)
        if text:
            yield text
