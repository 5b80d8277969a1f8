"""The server's request contract: generation parameter rules and the JSON schemas of the request bodies.

One table (``PARAMETERS``) both checks incoming parameters and produces the OpenAPI schema served at
``/openapi.json``, so what the schema promises is exactly what the server accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError

MAX_SEED = 2**63 - 1
MAX_STOP_STRINGS = 16
MIN_TEMPERATURE = 0.01  # below this, logits / temperature overflows to inf and sampling breaks
SERVER_ID_HEADER = "X-Finetune-Sdk-Server-Id"  # /ping's echo of the id the server was started with


@dataclass(frozen=True)
class Rule:
    """One parameter: its JSON type and bounds (``above`` is an exclusive lower bound)."""

    type: str  # "integer", "number", "boolean" or "stop" (a string or a list of strings)
    description: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` breaks this rule, or None when it is fine."""
        if self.type == "boolean":
            return None if isinstance(value, bool) else "must be true or false"
        if self.type == "stop":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
                return "must be a string or a list of strings"
            return None if len(items) <= MAX_STOP_STRINGS else f"takes at most {MAX_STOP_STRINGS} strings"
        number_types = (int,) if self.type == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types) or (
                isinstance(value, float) and not math.isfinite(value)):
            return "must be a whole number" if self.type == "integer" else "must be a finite number"
        if self.minimum is not None and value < self.minimum:
            return f"must be >= {self.minimum:g}"
        if self.above is not None and value <= self.above:
            return f"must be > {self.above:g}"
        if self.maximum is not None and value > self.maximum:
            return f"must be <= {self.maximum:g}"
        return None

    def json_schema(self) -> dict[str, Any]:
        if self.type == "stop":
            return {"description": self.description, "anyOf": [
                {"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_STRINGS}]}
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        bounds = {"minimum": self.minimum, "maximum": self.maximum, "exclusiveMinimum": self.above}
        return {**schema, **{k: v for k, v in bounds.items() if v is not None}}


PARAMETERS: dict[str, Rule] = {
    "max_new_tokens": Rule("integer", "most tokens to generate (at most the server's cap)", minimum=1),
    "do_sample": Rule("boolean", "sample instead of greedy decoding"),
    "temperature": Rule("number", "sampling temperature (with do_sample)", minimum=MIN_TEMPERATURE, maximum=100),
    "top_p": Rule("number", "nucleus sampling mass (with do_sample)", above=0, maximum=1),
    "top_k": Rule("integer", "sample from the k likeliest tokens (with do_sample)", minimum=1, maximum=1_000_000),
    "repetition_penalty": Rule("number", "penalty for repeated tokens (1 = none)", minimum=0.01, maximum=100),
    "stop": Rule("stop", "strings that end the reply (not included in it)"),
    "seed": Rule("integer", "random seed, for repeatable sampling", minimum=0, maximum=MAX_SEED),
    "return_full_text": Rule("boolean", "prefix the reply with the rendered prompt"),
}


def checked_parameters(given: Any, cap: float) -> dict[str, Any]:
    """A request's non-null generation parameters, checked by name, type and range (max_new_tokens against
    ``cap``); ConfigError says every problem."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"'parameters' must be an object, got {type(given).__name__}")
    params = {k: v for k, v in given.items() if v is not None}
    problems = parameter_problems(params, cap)
    if problems:
        raise ConfigError("; ".join(problems))
    return params


def parameter_problems(params: Mapping[str, Any], cap: float) -> list[str]:
    """Every problem with ``params`` (unknown names, wrong types, out of range, over the cap)."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        return [f"unknown generation parameters {unknown}; known: {sorted(PARAMETERS)}"]
    problems = [f"{name} {problem}, got {params[name]!r:.50}" for name, rule in PARAMETERS.items()
                if name in params and (problem := rule.problem(params[name]))]
    requested = params.get("max_new_tokens")
    if not problems and requested is not None and requested > cap:
        problems.append(f"max_new_tokens={requested} is over this server's cap of {cap}; ask for fewer")
    return problems


# -- request bodies ---------------------------------------------------------------------------------
_MESSAGE = {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string", "example": "user"},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
                               "type": "object", "required": ["type", "text"],
                               "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                               "description": "text parts only"}}]}}}
_MESSAGES = {"type": "array", "minItems": 1, "items": _MESSAGE, "description": "a chat conversation"}
_ROW = {"type": "object", "additionalProperties": {"type": "string"},
        "description": "template columns, e.g. {\"questionText\": \"...\"}"}
_INPUT = {"anyOf": [{"type": "string"}, _ROW, _MESSAGES]}
_INPUTS = {"anyOf": [{"type": "string"}, _ROW, {"type": "array", "minItems": 1, "items": _INPUT}],
           "description": "one input, or a list of inputs (a string, template columns or a conversation each)"}


def request_schemas(cap: int) -> dict[str, dict[str, Any]]:
    """JSON schemas of the three POST bodies, with max_new_tokens bounded by ``cap``."""
    params = {name: rule.json_schema() for name, rule in PARAMETERS.items()}
    params["max_new_tokens"]["maximum"] = cap
    stop = PARAMETERS["stop"].json_schema()
    openai_common = {
        "model": {"type": "string"}, "max_tokens": {"type": "integer", "minimum": 1, "maximum": cap},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "stop": stop,
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED}, "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "n": {"type": "integer", "enum": [1]}, "user": {"type": "string"}}
    chat_only = {"max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": cap}}
    return {
        "invocations": {"type": "object", "additionalProperties": False, "properties": {
            "inputs": _INPUTS,
            "messages": _MESSAGES,
            "parameters": {"type": "object", "additionalProperties": False, "properties": params}}},
        "chat": {"type": "object", "required": ["messages"], "additionalProperties": False, "properties": {
            **_or_null({**openai_common, **chat_only}), "messages": _MESSAGES}},
        "completions": {"type": "object", "required": ["prompt"], "additionalProperties": False, "properties": {
            **_or_null(openai_common), "prompt": {"anyOf": [
                {"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]}}},
    }


def _or_null(fields: dict[str, Any]) -> dict[str, Any]:
    """Optional OpenAI fields, each also allowed as null: OpenAI reads a null field as absent."""
    return {name: {"anyOf": [schema, {"type": "null"}]} for name, schema in fields.items()}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route whose JSON body is parsed by hand but documented by ``schema``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
