"""Transports that answer requests with a model loaded in this process (sync, and async via a thread)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from pathlib import Path
from typing import Any

from ..errors import EndpointError, FineTuneError


class InProcessTransport:
    """Answers ``{"inputs", "parameters"}`` requests with a GenerationEngine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @classmethod
    def from_artifact(cls, path: str | Path, *, device: str = "auto") -> "InProcessTransport":
        from ..serve.engine import GenerationEngine

        return cls(GenerationEngine.from_artifact(path, device=device))

    @classmethod
    def from_model(cls, model: str, template: Any, *, device: str = "auto") -> "InProcessTransport":
        from ..serve.engine import GenerationEngine

        return cls(GenerationEngine.from_model(model, template, device=device))

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        inputs = request.get("inputs")
        if not isinstance(inputs, list):
            inputs = [inputs]
        try:
            generations = self.engine.generate(inputs, **(request.get("parameters") or {}))
        except FineTuneError:
            raise
        except Exception as exc:
            raise EndpointError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        return [{"generated_text": g.text,
                 "details": {"finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
                             "completion_tokens": g.completion_tokens}} for g in generations]

    def close(self) -> None:
        self.engine = None


class AsyncInProcessTransport:
    """The async twin of :class:`InProcessTransport`: generation runs in a worker thread, so the event loop
    stays free. One worker is enough (the engine runs one generation at a time anyway), and it lets
    :meth:`aclose` wait for requests in flight before the model is released."""

    def __init__(self, transport: InProcessTransport) -> None:
        self.transport = transport
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inprocess")

    async def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.transport.send, request)

    async def aclose(self) -> None:
        self._worker.shutdown(wait=True)
        self.transport.close()
