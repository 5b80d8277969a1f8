"""The Predictor client and its transport seam."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..errors import EndpointError


@dataclass(frozen=True)
class Prediction:
    """One generated reply."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def __str__(self) -> str:
        return self.text


class Transport(Protocol):
    """Carries one ``{"inputs", "parameters"}`` request to an endpoint and returns its JSON answer."""

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class MockTransport:
    """A transport that answers with ``handler(request)``; for testing code that uses a Predictor."""

    def __init__(self, handler: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
        self.handler = handler
        self.requests: list[dict[str, Any]] = []

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        self.requests.append(request)
        return self.handler(request)

    def close(self) -> None:
        pass


class Predictor:
    """Sends prompts to an endpoint and returns :class:`Prediction` objects.

    ``input`` is a string (filled into the template's one prompt column), a dict of template
    columns, or a list of chat messages.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @classmethod
    def local(cls, artifact: str | Path | Any, *, device: str = "auto") -> "Predictor":
        """Load an artifact into this process (needs the [train] extra)."""
        from .inprocess import InProcessTransport

        path = getattr(artifact, "path", artifact)
        return cls(InProcessTransport.from_artifact(path, device=device))

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 3) -> "Predictor":
        """An HTTP endpoint that speaks ``/invocations`` (our local server, a SageMaker container, TGI).

        Timeouts, connection errors, 408, 429 and 5xx are retried up to ``max_retries`` times.
        """
        from .http import HttpTransport

        return cls(HttpTransport(url, api_key=api_key, timeout=timeout, max_retries=max_retries))

    @classmethod
    def base_model(cls, model: str, template: Any, *, device: str = "auto") -> "Predictor":
        """A base model with no adapter, under the same template (for before/after comparisons)."""
        from .inprocess import InProcessTransport

        return cls(InProcessTransport.from_model(model, template, device=device))

    def predict(self, input: Any, **generation: Any) -> Prediction:
        return self.predict_batch([input], **generation)[0]

    def predict_batch(self, inputs: Sequence[Any], **generation: Any) -> list[Prediction]:
        """One request for many inputs; the endpoint generates them as a batch."""
        inputs = list(inputs)
        if not inputs:
            return []
        answer = self.transport.send({"inputs": inputs, "parameters": generation})
        if not isinstance(answer, list) or len(answer) != len(inputs):
            raise EndpointError(f"the endpoint returned {answer!r:.200}; expected one result per input")
        return [_prediction(item) for item in answer]

    def chat(self, messages: Sequence[Mapping[str, str]], **generation: Any) -> Prediction:
        """Continue a conversation given as ``[{"role", "content"}, ...]``."""
        return self.predict_batch([list(messages)], **generation)[0]

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _prediction(item: Any) -> Prediction:
    if not isinstance(item, Mapping) or "generated_text" not in item:
        raise EndpointError(f"the endpoint returned {item!r:.200}; expected {{'generated_text': ...}}")
    details = item.get("details") or {}
    return Prediction(item["generated_text"], details.get("finish_reason"), details.get("prompt_tokens"),
                      details.get("completion_tokens"))
