"""The pure logic the sync and async Predictors share: request bodies in, Predictions out.

Like httpx's ``Client``/``AsyncClient``, the twins differ only in how they wait for I/O; everything
that decides what is sent and how an answer is read lives here once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, EndpointError, EndpointUnavailable
from .retry import error_message

#: Predictor generation parameters and their names in the OpenAI chat API (what ``stream`` sends).
OPENAI_PARAMETERS = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
                     "stop": "stop", "seed": "seed"}


@dataclass(frozen=True)
class Prediction:
    """One generated reply."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def __str__(self) -> str:
        return self.text


class PredictorBase:
    """Builds requests and parses answers; subclasses only add the sync or async calls."""

    transport: Any

    @staticmethod
    def _batch_inputs(inputs: Sequence[Any]) -> list[Any]:
        """``inputs`` as a list; one string or dict is refused, as ``list()`` would split it into characters or keys."""
        if isinstance(inputs, (str, bytes, Mapping)):
            raise ConfigError(f"predict_batch() takes a list of inputs, got one {type(inputs).__name__}; pass "
                              "[input], or call predict(input) for a single one")
        return list(inputs)

    @staticmethod
    def _batch_request(inputs: list[Any], generation: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": inputs, "parameters": generation}

    @staticmethod
    def _predictions(answer: Any, count: int) -> list[Prediction]:
        if not isinstance(answer, list) or len(answer) != count:
            raise EndpointError(f"the endpoint returned {answer!r:.200}; expected one result per input")
        return [_prediction(item) for item in answer]

    def _stream_transport(self) -> Any:
        """The transport, when it can stream; the in-process one cannot (it generates the reply whole)."""
        if not hasattr(self.transport, "stream_chat"):
            raise EndpointError(f"{type(self.transport).__name__} cannot stream; streaming needs an HTTP "
                                "endpoint (Predictor.from_url). Use predict() or chat() here instead")
        return self.transport


def _prediction(item: Any) -> Prediction:
    if not isinstance(item, Mapping) or "generated_text" not in item:
        raise EndpointError(f"the endpoint returned {item!r:.200}; expected {{'generated_text': ...}}")
    details = item.get("details") or {}
    return Prediction(item["generated_text"], details.get("finish_reason"), details.get("prompt_tokens"),
                      details.get("completion_tokens"))


def chat_body(input_or_messages: str | Sequence[Mapping[str, str]], generation: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI ``/v1/chat/completions`` streaming body for a string or a conversation.

    A string becomes one user message and nothing more: the template's system prompt is not added,
    because only the server knows the template and its chat route takes messages as given. A dict of
    template columns cannot be turned into messages without the template, so it is refused.
    """
    if isinstance(input_or_messages, str):
        messages = [{"role": "user", "content": input_or_messages}]
    elif isinstance(input_or_messages, Sequence) and all(isinstance(m, Mapping) for m in input_or_messages):
        messages = [dict(m) for m in input_or_messages]
    else:
        raise ConfigError(f"stream() takes a string or a list of {{'role', 'content'}} messages, got "
                          f"{type(input_or_messages).__name__}; for a dict of template columns use predict()")
    unknown = sorted(set(generation) - set(OPENAI_PARAMETERS))
    if unknown:
        raise ConfigError(f"stream() does not take {unknown}; it understands {sorted(OPENAI_PARAMETERS)} "
                          "(temperature > 0 samples, none or 0 is greedy)")
    return {"messages": messages, "stream": True,
            **{OPENAI_PARAMETERS[name]: value for name, value in generation.items()}}


class SseDecoder:
    """Turns server-sent-events lines into chunks; ``done`` once ``data: [DONE]`` has arrived.

    An error the server sends mid-stream (``event: error``, or ``data: {"error": ...}`` as OpenAI-compatible
    servers do) is raised as EndpointUnavailable with the server's message, not taken for the end of the reply.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.done = False
        self.event = ""

    def feed(self, line: str) -> list[dict[str, Any]]:
        """The chunk this line carries, if any (blank, comment and ``event:`` lines carry none)."""
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif not line:
            self.event = ""  # a blank line ends the event
        if self.done or not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            if self.event == "error":
                raise self._failed(data) from exc
            raise EndpointError(f"{self.endpoint} streamed {data!r:.200}, which is not JSON") from exc
        if self.event == "error" or (isinstance(chunk, Mapping) and chunk.get("error")):
            raise self._failed(data)
        return [chunk]

    def _failed(self, data: str) -> EndpointUnavailable:
        return EndpointUnavailable(f"{self.endpoint} failed mid-stream: {error_message(data)}; the reply is "
                                   "incomplete, so ask again", body=data)

    def finish(self) -> None:
        """Call when the body ends: a stream that stopped before ``[DONE]`` may be cut short."""
        if not self.done:
            raise EndpointError(f"{self.endpoint} ended the stream without 'data: [DONE]'; the reply may be "
                                "cut short, so ask again")


def delta_text(chunk: Any) -> str:
    """The text a chat-completion chunk adds (empty for role, finish and usage chunks)."""
    choices = chunk.get("choices") if isinstance(chunk, Mapping) else None
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return delta.get("content") or ""
