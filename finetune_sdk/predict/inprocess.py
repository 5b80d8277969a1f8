"""Transports that answer requests with a model loaded in this process (sync, and async via a thread).

A request is checked and answered as the HTTP server answers it: the same parameter rules, a bad request
raised as BadRequest, and ``return_full_text`` honoured; only the server's cap on max_new_tokens is absent.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

from ..errors import BadRequest, ConfigError, EndpointError, EndpointUnavailable, FineTuneError
from ..serve.schema import parameter_problems


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
        if self.engine is None:
            raise closed_error()
        inputs = request.get("inputs")
        if not isinstance(inputs, list):
            inputs = [inputs]
        params = checked_parameters(request.get("parameters"))
        try:
            generations = self.engine.generate(inputs, **params)
            prefixes = self._prompt_texts(inputs) if params.get("return_full_text") is True else [""] * len(inputs)
        except ConfigError as exc:  # an input the template cannot use: the server's 400
            raise BadRequest(f"{exc}; fix the request") from exc
        except FineTuneError:
            raise
        except Exception as exc:
            raise EndpointError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        return [{"generated_text": prefix + g.text,
                 "details": {"finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
                             "completion_tokens": g.completion_tokens}} for prefix, g in zip(prefixes, generations)]

    def _prompt_texts(self, inputs: list[Any]) -> list[str]:
        """The rendered prompts, for ``return_full_text`` (as the server renders them)."""
        return [self.engine.tokenizer.decode(self.engine.prompt_ids(x), skip_special_tokens=True) for x in inputs]

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


def checked_parameters(given: Any) -> dict[str, Any]:
    """The request's non-null generation parameters, checked by the server's rules (no cap on max_new_tokens:
    there is no server to protect); a problem is a BadRequest, as over HTTP."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise BadRequest(f"'parameters' must be an object, got {type(given).__name__}")
    params = {k: v for k, v in given.items() if v is not None}
    problems = parameter_problems(params, cap=math.inf)
    if problems:
        raise BadRequest("; ".join(problems) + "; fix the request")
    return params


def closed_error() -> EndpointUnavailable:
    return EndpointUnavailable("this in-process predictor is closed and its model released; create a new one "
                               "(Predictor.local(...) or AsyncPredictor.local(...))")
