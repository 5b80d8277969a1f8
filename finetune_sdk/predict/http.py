"""A transport that posts Predictor requests to an HTTP endpoint's ``/invocations`` route.

Retries follow the openai-python policy: only connection errors, timeouts, 408, 429 and 5xx are
retried, with capped, jittered exponential backoff that honours the server's ``Retry-After``. Any
other 4xx is the caller's mistake and fails at once. Failures surface as the SDK's EndpointError family.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from typing import Any, Callable

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from ..errors import (AuthenticationError, BadRequest, EndpointError, EndpointTimeout, EndpointUnavailable,
                      RateLimited)

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0


class HttpTransport:
    """Sends ``{"inputs", "parameters"}`` to ``{url}/invocations`` and returns the JSON list it answers."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries}; use 0 (no retries) or more")
        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self.sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        retrying = Retrying(stop=stop_after_attempt(self.max_retries + 1), retry=retry_if_exception(is_retryable),
                            wait=_backoff, sleep=self.sleep, reraise=True)
        return retrying(self._send_once, request)

    def _send_once(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        endpoint = f"{self.url}/invocations"
        try:
            response = self.client.post(endpoint, json=request)
        except httpx.TimeoutException as exc:
            raise EndpointTimeout(f"{endpoint} did not answer within the timeout ({exc}); raise timeout= "
                                  "or ask for fewer max_new_tokens") from exc
        except httpx.TransportError as exc:
            raise EndpointUnavailable(f"could not reach {endpoint} ({type(exc).__name__}: {exc}); check that "
                                      "the server is running and the URL is right") from exc
        if response.is_success:
            try:
                return response.json()
            except json.JSONDecodeError as exc:
                raise EndpointError(f"{endpoint} answered {response.status_code} with non-JSON "
                                    f"{response.text!r:.200}", status=response.status_code,
                                    body=response.text) from exc
        raise status_error(response)

    def close(self) -> None:
        self.client.close()


def status_error(response: httpx.Response) -> EndpointError:
    """The most specific EndpointError for an unsuccessful response."""
    status, body = response.status_code, response.text
    detail = _error_message(body)
    where = f"{response.request.method} {response.request.url} answered {status}: {detail}"
    if status in (401, 403):
        return AuthenticationError(f"{where}; pass the server's key as api_key=", status=status, body=body)
    retry_after = _retry_after(response.headers.get("retry-after"))
    if status == 429:
        return RateLimited(f"{where}; send fewer requests at once", status=status, body=body, retry_after=retry_after)
    if status == 408:
        return EndpointTimeout(f"{where}; the server gave up waiting", status=status, body=body,
                               retry_after=retry_after)
    if 400 <= status < 500:
        return BadRequest(f"{where}; fix the request (retrying will not help)", status=status, body=body)
    return EndpointUnavailable(f"{where}; the endpoint failed on its side", status=status, body=body,
                               retry_after=retry_after)


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, throttling, connection failures and server errors may pass on a second try."""
    return isinstance(exc, (EndpointTimeout, RateLimited, EndpointUnavailable))


def _backoff(retry_state: Any) -> float:
    """Retry-After when the server sent one (capped), else 0.5 s doubling to 8 s, minus up to 25% jitter."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    hinted = exc.retry_after if isinstance(exc, EndpointError) else None
    if hinted is not None:
        return min(hinted, MAX_BACKOFF)
    delay = min(INITIAL_BACKOFF * 2 ** (retry_state.attempt_number - 1), MAX_BACKOFF)
    return delay * (1 - 0.25 * random.random())


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(body: str) -> str:
    """The server's own message from ``{"error": {"message"}}`` bodies, else the start of the body."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body[:200] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(data.get("detail"), str):
            return data["detail"]
    return body[:200]
