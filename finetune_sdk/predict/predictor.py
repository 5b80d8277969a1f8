"""The Predictor client and its transport seam."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from ..errors import MissingDependencyError
from .base import Prediction, PredictorBase, chat_body, delta_text

__all__ = ["MockTransport", "Prediction", "Predictor", "Transport"]


class Transport(Protocol):
    """Carries one ``{"inputs", "parameters"}`` request to an endpoint and returns its JSON answer.

    A transport that can stream also has ``stream_chat(body) -> Iterator[dict]``, which posts an
    OpenAI chat body with ``stream: true`` and yields the parsed chunks.
    """

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


class Predictor(PredictorBase):
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
    def from_url(cls, url: str, api_key: str | None = None, *, timeout: float = 150.0,
                 max_retries: int = 3) -> "Predictor":
        """An HTTP endpoint that speaks ``/invocations`` (our local server, a SageMaker container).

        Not a TGI server, which takes rendered prompts: for one, use ``TgiTransport.for_artifact`` (:mod:`.tgi`).

        Timeouts, connection errors, 408, 429 and 5xx are retried up to ``max_retries`` times.
        """
        from .http import HttpTransport

        return cls(HttpTransport(url, api_key=api_key, timeout=timeout, max_retries=max_retries))

    @classmethod
    def from_sagemaker(cls, endpoint_name: str, *, region: str | None = None, endpoint_url: str | None = None,
                       timeout: float = 60.0, max_retries: int = 3, client: Any = None) -> "Predictor":
        """A SageMaker endpoint, called through sagemaker-runtime InvokeEndpoint with the AWS credentials in
        the environment. Throttling, a model not ready yet, timeouts and 5xx are retried up to ``max_retries``
        times; closing this Predictor leaves the endpoint running (delete it with SageMakerDeployer.delete).
        """
        try:
            from .sagemaker import SageMakerTransport
        except ImportError as exc:
            raise MissingDependencyError(f"Predictor.from_sagemaker needs boto3 ({exc.name} is missing); install it "
                                         "with: pip install 'finetune-sdk[sagemaker]'") from exc
        return cls(SageMakerTransport(endpoint_name, client=client, region=region, endpoint_url=endpoint_url,
                                      timeout=timeout, max_retries=max_retries))

    @classmethod
    def base_model(cls, model: str, template: Any, *, device: str = "auto", revision: str | None = None,
                   trust_remote_code: bool = False, allow_pickle: bool = False) -> "Predictor":
        """A base model with no adapter, under the same template (for before/after comparisons); load it as it was
        trained: the same ``revision``, ``trust_remote_code`` and ``allow_pickle``."""
        from .inprocess import InProcessTransport

        return cls(InProcessTransport.from_model(model, template, device=device, revision=revision,
                                                 trust_remote_code=trust_remote_code, allow_pickle=allow_pickle))

    def predict(self, input: Any, **generation: Any) -> Prediction:
        return self.predict_batch([input], **generation)[0]

    def predict_batch(self, inputs: Sequence[Any], **generation: Any) -> list[Prediction]:
        """One request for many inputs; the endpoint generates them as a batch."""
        inputs = self._batch_inputs(inputs)
        if not inputs:
            return []
        return self._predictions(self.transport.send(self._batch_request(inputs, generation)), len(inputs))

    def chat(self, messages: Sequence[Mapping[str, str]], **generation: Any) -> Prediction:
        """Continue a conversation given as ``[{"role", "content"}, ...]``."""
        return self.predict_batch([list(messages)], **generation)[0]

    def stream(self, input_or_messages: str | Sequence[Mapping[str, str]], **generation: Any) -> Iterator[str]:
        """The reply as text chunks, over the endpoint's OpenAI ``/v1/chat/completions`` route.

        A string is sent as one user message (no system prompt; see :func:`base.chat_body`).
        Generation parameters: max_new_tokens, temperature, top_p, stop, seed.
        """
        body = chat_body(input_or_messages, generation)  # bad arguments fail here, not at the first next()
        return _texts(self._stream_transport().stream_chat(body))

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _texts(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    for chunk in chunks:
        text = delta_text(chunk)
        if text:
            yield text
