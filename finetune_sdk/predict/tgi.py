"""A transport for a Text Generation Inference (TGI) container, which knows nothing of the SDK's templates.

TGI takes one rendered prompt per request (``{"inputs": "<prompt text>", "parameters": {...}}``) and
answers ``[{"generated_text", "details"}]``. So the prompt is rendered here, with the artifact's own
template and tokenizer (the text tokenizes, with TGI's special tokens, to the ids the SDK's own server
would feed the model), each input of a batch is one request, and the answer is cut at the template's
stop tokens and the caller's stop strings, as the SDK's server does. Rendering needs transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import BadRequest, EndpointError

#: Predictor generation parameters TGI understands under the same names.
TGI_PARAMETERS = {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed"}
SAMPLING = {"temperature", "top_p", "top_k"}
FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


class TgiTransport:
    """Renders prompts with ``encoder`` and sends them through ``inner`` (a transport to the TGI endpoint)."""

    def __init__(self, inner: Any, encoder: Any, *, stop_tokens: list[str], defaults: Mapping[str, Any]) -> None:
        self.inner = inner
        self.encoder = encoder
        self.stop_tokens = [s for s in stop_tokens if s]
        self.defaults = dict(defaults)

    @classmethod
    def for_artifact(cls, inner: Any, artifact: Any) -> "TgiTransport":
        """The transport for an endpoint serving ``artifact`` merged (its tokenizer, template and stop tokens)."""
        from ..encoding import Encoder
        from ..models import ModelRef, load_tokenizer

        path = str(Path(artifact.path))
        encoder = Encoder(load_tokenizer(ModelRef(path, "local", path)), artifact.template,
                          max_length=artifact.manifest.get("max_length", 1024))
        return cls(inner, encoder, stop_tokens=artifact.manifest.get("stop_tokens", []),
                   defaults=artifact.manifest.get("generation") or {})

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        inputs = request["inputs"] if isinstance(request["inputs"], list) else [request["inputs"]]
        parameters, stops = self.parameters(request.get("parameters") or {})
        results = []
        for item in inputs:
            source = self.encoder.template.prompt_source(item)
            answer = self.inner.send({"inputs": self.encoder.prompt_text(source), "parameters": parameters})
            results.append(self.generation(answer, stops, len(self.encoder.encode_prompt(source))))
        return results

    def parameters(self, given: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """TGI's parameters for a Predictor's generation keywords, and the strings that end the reply."""
        unknown = sorted(set(given) - TGI_PARAMETERS - {"stop"})
        if unknown:
            raise BadRequest(f"a TGI endpoint does not take {unknown}; it understands "
                             f"{sorted(TGI_PARAMETERS | {'stop'})} (fix the request; nothing was sent)")
        merged = {**{k: v for k, v in self.defaults.items() if k in TGI_PARAMETERS},
                  **{k: v for k, v in given.items() if v is not None}}
        stop = merged.pop("stop", None) or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        if not merged.get("do_sample"):  # greedy, as the SDK's server: TGI would sample if these were set
            merged = {k: v for k, v in merged.items() if k not in SAMPLING and k != "do_sample"}
        stops = list(dict.fromkeys(s for s in stops + self.stop_tokens if s))
        return {**merged, "stop": stops, "details": True, "return_full_text": False}, stops

    @staticmethod
    def generation(answer: Any, stops: list[str], prompt_tokens: int) -> dict[str, Any]:
        """One SDK result from TGI's ``[{"generated_text", "details"}]``."""
        item = answer[0] if isinstance(answer, list) and len(answer) == 1 else answer
        if not isinstance(item, Mapping) or not isinstance(item.get("generated_text"), str):
            raise EndpointError(f"the TGI endpoint returned {answer!r:.200}; expected [{{'generated_text': ...}}]")
        text = item["generated_text"]
        details = item.get("details") or {}
        reason = FINISH_REASONS.get(details.get("finish_reason"), details.get("finish_reason"))
        for stop in stops:
            if stop in text:
                text, reason = text[:text.index(stop)], "stop"
        return {"generated_text": text.strip(), "details": {
            "finish_reason": reason, "prompt_tokens": prompt_tokens,
            "completion_tokens": details.get("generated_tokens")}}

    def close(self) -> None:
        self.inner.close()
