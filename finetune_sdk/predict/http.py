"""A transport that posts Predictor requests to an HTTP endpoint's ``/invocations`` route.

The retry policy (what is retried, the backoff, the typed errors) lives in :mod:`.retry`, shared with
the async twin in :mod:`.async_http`; this module only does the blocking I/O.
"""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any, Callable, Iterator

import httpx

from .base import SseDecoder
from .retry import (DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, INITIAL_BACKOFF, MAX_BACKOFF, MAX_RETRY_AFTER,
                    auth_headers, check_max_retries, check_open, checked_url, is_retryable, json_body, mapped_errors,
                    retrying, status_error)

__all__ = ["DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT", "INITIAL_BACKOFF", "MAX_BACKOFF", "MAX_RETRY_AFTER",
           "HttpTransport", "is_retryable", "status_error"]


class HttpTransport:
    """Sends ``{"inputs", "parameters"}`` to ``{url}/invocations`` and returns the JSON list it answers."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, *, sleep: Callable[[float], None] = time.sleep) -> None:
        check_max_retries(max_retries)
        self.url = checked_url(url)
        self.max_retries = max_retries
        self.sleep = sleep
        self.client = httpx.Client(timeout=httpx.Timeout(timeout), headers=auth_headers(api_key))

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        check_open(self.client, self.url)
        return retrying(self.max_retries, self.sleep)(self._send_once, request)

    def _send_once(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        endpoint = f"{self.url}/invocations"
        with mapped_errors(endpoint):
            return json_body(self.client.post(endpoint, json=request))

    def stream_chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Posts an OpenAI chat body with ``stream: true`` and yields its chunks.

        Opening the stream is retried like ``send``; once chunks flow, a failure is raised as is
        (a retry would repeat text the caller has already shown).
        """
        check_open(self.client, self.url)
        endpoint = f"{self.url}/v1/chat/completions"
        response = retrying(self.max_retries, self.sleep)(self._open_stream, endpoint, body)
        decoder = SseDecoder(endpoint)
        with closing(response), mapped_errors(endpoint):
            for line in response.iter_lines():
                yield from decoder.feed(line)
        decoder.finish()

    def _open_stream(self, endpoint: str, body: dict[str, Any]) -> httpx.Response:
        """The streaming response once its status is a success; a failed one is read for its error."""
        with mapped_errors(endpoint):
            response = self.client.send(self.client.build_request("POST", endpoint, json=body), stream=True)
            if response.is_success:
                return response
            with closing(response):
                response.read()
        raise status_error(response)

    def close(self) -> None:
        self.client.close()
