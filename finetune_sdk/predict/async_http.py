"""The async twin of :class:`.http.HttpTransport`: the same requests, retries and errors over httpx.AsyncClient.

Only the awaiting differs; the policy (what is retried, the backoff, the typed errors) comes from
:mod:`.retry` and the SSE parsing from :mod:`.base`, so sync and async callers see identical behaviour.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx

from ..errors import ConfigError
from .base import SseDecoder
from .retry import (DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, async_retrying, auth_headers, check_max_retries,
                    check_open, checked_url, json_body, mapped_errors, status_error)


class AsyncHttpTransport:
    """Awaits ``{"inputs", "parameters"}`` posts to ``{url}/invocations`` and returns the JSON list."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        check_max_retries(max_retries)
        self.url = checked_url(url)
        self.max_retries = max_retries
        self.sleep = sleep
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), headers=auth_headers(api_key))
        self.loop: asyncio.AbstractEventLoop | None = None

    def _check_usable(self) -> None:
        """Open, and on the event loop of its first request: httpx's pooled connections belong to that loop."""
        check_open(self.client, self.url)
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise ConfigError(f"this AsyncPredictor for {self.url} was first used on another event loop (a second "
                              "asyncio.run, say); create one AsyncPredictor inside each asyncio.run, or run all "
                              "calls in one")

    async def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        self._check_usable()
        return await async_retrying(self.max_retries, self.sleep)(self._send_once, request)

    async def _send_once(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        endpoint = f"{self.url}/invocations"
        with mapped_errors(endpoint):
            return json_body(await self.client.post(endpoint, json=request))

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Posts an OpenAI chat body with ``stream: true`` and yields its chunks; only the opening is retried."""
        self._check_usable()
        endpoint = f"{self.url}/v1/chat/completions"
        response = await async_retrying(self.max_retries, self.sleep)(self._open_stream, endpoint, body)
        decoder = SseDecoder(endpoint)
        async with aclosing(response):
            with mapped_errors(endpoint):
                async for line in response.aiter_lines():
                    for chunk in decoder.feed(line):
                        yield chunk
        decoder.finish()

    async def _open_stream(self, endpoint: str, body: dict[str, Any]) -> httpx.Response:
        with mapped_errors(endpoint):
            response = await self.client.send(self.client.build_request("POST", endpoint, json=body), stream=True)
            if response.is_success:
                return response
            async with aclosing(response):
                await response.aread()
        raise status_error(response)

    async def aclose(self) -> None:
        await self.client.aclose()
