"""Transports that answer requests with a model loaded in this process (sync, and async via a thread).

A request is checked and answered as the HTTP server answers it: the same parameter rules, a bad request
raised as BadRequest, and ``return_full_text`` honoured; only the server's cap on max_new_tokens is absent.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import BadRequest, ConfigError, EndpointError, EndpointUnavailable, FineTuneError
from ..serve.schema import checked_parameters


class InProcessTransport:
    """Answers ``{"inputs", "parameters"}`` requests with a GenerationEngine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @classmethod
    def from_artifact(cls, path: str | Path, *, device: str = "auto") -> "InProcessTransport":
        from ..serve.engine import GenerationEngine

        return cls(GenerationEngine.from_artifact(path, device=device))

    @classmethod
    def from_model(cls, model: str, template: Any, *, device: str = "auto", **loading: Any) -> "InProcessTransport":
        from ..serve.engine import GenerationEngine

        return cls(GenerationEngine.from_model(model, template, device=device, **loading))

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        if self.engine is None:
            raise closed_error()
        inputs = request.get("inputs")
        if not isinstance(inputs, list):
            inputs = [inputs]
        try:
            params = checked_parameters(request.get("parameters"), cap=math.inf)  # no server cap to protect
            generations = self.engine.generate(inputs, **params)
            full_text = params.get("return_full_text") is True
            prefixes = [self.engine.prompt_text(x) if full_text else "" for x in inputs]
        except ConfigError as exc:  # bad parameters, or an input the template cannot use: the server's 400
            raise BadRequest(f"{exc}; fix the request") from exc
        except FineTuneError:
            raise
        except Exception as exc:
            raise EndpointError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        return [{"generated_text": prefix + g.text,
                 "details": {"finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
                             "completion_tokens": g.completion_tokens}} for prefix, g in zip(prefixes, generations)]

    def close(self) -> None:
        self.engine = None


class AsyncInProcessTransport:
    """The async twin of :class:`InProcessTransport`: generation runs in a worker thread, so the event loop
    stays free. One worker is enough (the engine runs one generation at a time anyway), and it lets
    :meth:`aclose` wait for requests in flight before the model is released."""

    def __init__(self, transport: InProcessTransport) -> None:
        self.transport = transport
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inprocess")
        self._closed = False

    async def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise closed_error()
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.transport.send, request)

    async def aclose(self) -> None:
        """Refuse new requests, wait (in a thread, so the event loop runs on) for those in flight, release the model."""
        self._closed = True
        await asyncio.to_thread(self._worker.shutdown, wait=True)
        self.transport.close()


def closed_error() -> EndpointUnavailable:
    return EndpointUnavailable("this in-process predictor is closed and its model released; create a new one "
                               "(Predictor.local(...) or AsyncPredictor.local(...))")
