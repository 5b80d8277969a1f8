"""The retry policy and error mapping shared by the sync and async HTTP transports.

Retries follow the openai-python policy: only connection errors, timeouts, 408, 429 and 5xx are
retried, with capped, jittered exponential backoff that honours the server's ``Retry-After``. Any
other 4xx is the caller's mistake and fails at once, as does a 3xx (the endpoint is at another URL)
and a 504: the server has already spent its whole request timeout on the request, and a resend would
only queue the same work again. Both transports build their tenacity retryer here and map httpx
failures here, so the two can never drift apart.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

import httpx
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt

from ..errors import (AuthenticationError, BadRequest, ConfigError, EndpointError, EndpointTimeout,
                      EndpointUnavailable, RateLimited)

DEFAULT_TIMEOUT = 150.0  # above the server's default request timeout (120 s), whose 504 then arrives first
DEFAULT_MAX_RETRIES = 3
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0  # the longest Retry-After honoured, as in openai-python; the server's own hints are 1 to 60 s


def check_max_retries(max_retries: int) -> None:
    if max_retries < 0:
        raise ConfigError(f"max_retries={max_retries}; use 0 (no retries) or more")


def checked_url(url: str) -> str:
    """``url`` without a trailing slash, once it is an http(s) URL with a host: a bad one fails here, not after
    retries."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"endpoint URL {url!r} is not an http:// or https:// URL with a host; add the scheme, "
                          "for example 'http://127.0.0.1:8080'")
    return url.rstrip("/")


def retrying(max_retries: int, sleep: Callable[[float], None] = time.sleep) -> Retrying:
    """A sync retryer: ``retrying(n)(fn, *args)`` calls ``fn`` up to ``n + 1`` times."""
    return Retrying(stop=stop_after_attempt(max_retries + 1), retry=retry_if_exception(is_retryable),
                    wait=backoff, sleep=sleep, reraise=True)


def async_retrying(max_retries: int,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> AsyncRetrying:
    """The same policy for coroutines: ``await async_retrying(n)(fn, *args)``."""
    return AsyncRetrying(stop=stop_after_attempt(max_retries + 1), retry=retry_if_exception(is_retryable),
                         wait=backoff, sleep=sleep, reraise=True)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_open(client: httpx.Client | httpx.AsyncClient, url: str) -> None:
    """Refuse a request on a closed Predictor at once, as the in-process one does (and without retrying)."""
    if client.is_closed:
        raise EndpointUnavailable(f"this Predictor for {url} is closed; create a new one (or use it in a `with` "
                                  "block, which closes it at the end)", retryable=False)


@contextmanager
def mapped_errors(endpoint: str) -> Iterator[None]:
    """Raise httpx's failures inside the block as the SDK's errors (sync and async code alike)."""
    try:
        yield
    except httpx.TransportError as exc:
        raise transport_error(exc, endpoint) from exc
    except httpx.HTTPError as exc:  # an answer that cannot be read (a bad gzip body, say): a resend gets the same
        raise EndpointError(f"{endpoint} sent an answer that could not be read ({type(exc).__name__}: {exc}); "
                            "check the server or the proxy in front of it") from exc


def transport_error(exc: httpx.TransportError, endpoint: str) -> EndpointError:
    """An httpx failure with no response (timeout, refused, reset) as the SDK's retryable error."""
    if isinstance(exc, httpx.TimeoutException):
        return EndpointTimeout(f"{endpoint} did not answer within the timeout ({exc}); raise timeout= "
                               "or ask for fewer max_new_tokens")
    return EndpointUnavailable(f"could not reach {endpoint} ({type(exc).__name__}: {exc}); check that "
                               "the server is running and the URL is right")


def json_body(response: httpx.Response) -> Any:
    """The JSON of a successful (already read) response, or the error for a failed or non-JSON one."""
    if not response.is_success:
        raise status_error(response)
    try:
        return response.json()
    except json.JSONDecodeError as exc:
        raise EndpointError(f"{response.request.url} answered {response.status_code} with non-JSON "
                            f"{response.text!r:.200}", status=response.status_code, body=response.text) from exc


def status_error(response: httpx.Response) -> EndpointError:
    """The most specific EndpointError for an unsuccessful response."""
    status, body = response.status_code, response.text
    detail = error_message(body)
    where = f"{response.request.method} {response.request.url} answered {status}: {detail}"
    if 300 <= status < 400:  # httpx does not follow redirects; resending to the same URL cannot help
        moved = response.request.url.join(response.headers.get("location", ""))
        return BadRequest(f"{response.request.method} {response.request.url} answered {status}, a redirect to "
                          f"{moved}; use this URL for the endpoint (retrying will not help)", status=status, body=body)
    if status in (401, 403):
        return AuthenticationError(f"{where}; pass the server's key as api_key=", status=status, body=body)
    retry_after = _retry_after(response.headers.get("retry-after"))
    if status == 429:
        return RateLimited(f"{where}; send fewer requests at once", status=status, body=body, retry_after=retry_after)
    if status == 408:
        return EndpointTimeout(f"{where}; the server gave up waiting", status=status, body=body,
                               retry_after=retry_after)
    if status == 504:
        return EndpointTimeout(f"{where}; the server gave up generating the reply (not retried: a resend would "
                               "wait as long again); ask for fewer max_new_tokens or raise the server's "
                               "--request-timeout", status=status, body=body, retry_after=retry_after,
                               retryable=False)
    if 400 <= status < 500:
        return BadRequest(f"{where}; fix the request (retrying will not help)", status=status, body=body)
    return EndpointUnavailable(f"{where}; the endpoint failed on its side", status=status, body=body,
                               retry_after=retry_after)


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, throttling, connection failures and server errors may pass on a second try; a 504 would not."""
    return isinstance(exc, EndpointError) and exc.retryable


def backoff(retry_state: Any) -> float:
    """Retry-After when the server sent one (at most 60 s), else 0.5 s doubling to 8 s, minus up to 25% jitter."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    hinted = exc.retry_after if isinstance(exc, EndpointError) else None
    if hinted is not None:
        return min(hinted, MAX_RETRY_AFTER)
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


def error_message(body: str) -> str:
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
