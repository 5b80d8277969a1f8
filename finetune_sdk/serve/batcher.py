"""Dynamic batching: requests from many clients that arrive close together share one engine.generate call.

One generate call for 16 short prompts costs little more than for one on a CPU or GPU, so a server
that batches answers many concurrent clients at several times the throughput of one-at-a-time.

    submit(inputs, params) ──> bounded queue ──> worker: wait up to max_wait_ms (or max_batch_size inputs)
                                                   ├─ group requests by identical generation parameters
                                                   └─ one engine.generate per group, in one worker thread

Errors, all ``BatcherError``:

    BatcherError
    ├── QueueFull        the queue holds max_queue requests; answer 503 with Retry-After, never wait
    ├── ShuttingDown     the batcher is closing and takes no new work
    └── RequestTimeout   the request waited longer than request_timeout_s

An exception from the engine fails the requests of its group; when the group held several requests
each is retried alone, so only the request with the bad input fails.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

from ..errors import ConfigError

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_MAX_QUEUE = 256
DEFAULT_REQUEST_TIMEOUT_S = 120.0


class BatcherError(Exception):
    """Base of the batcher's own errors; ``retry_after`` is a hint in whole seconds for the client."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(BatcherError):
    """The queue is at max_queue: the server is overloaded and the client should come back later."""


class ShuttingDown(BatcherError):
    """The server is stopping; queued work is finished but nothing new is accepted."""


class RequestTimeout(BatcherError):
    """The request was not answered within request_timeout_s (queue wait plus generation)."""


@dataclass
class _Request:
    inputs: list[Any]
    params: dict[str, Any]
    future: asyncio.Future = field(repr=False)

    @property
    def group_key(self) -> str:
        """Requests batch together only when every generation parameter is equal.

        A seeded request is never grouped: its seed must give the same tokens as when it runs alone.
        """
        if self.params.get("seed") is not None:
            return f"seeded-{id(self)}"
        return json.dumps(self.params, sort_keys=True, default=repr)


class DynamicBatcher:
    """Collects concurrent requests into batches for one engine; create and use it inside one event loop."""

    def __init__(self, engine: Any, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_queue: int = DEFAULT_MAX_QUEUE,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or request_timeout_s <= 0:
            raise ConfigError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0 and "
                             f"request_timeout_s > 0; got {max_batch_size}, {max_queue}, {max_wait_ms}, "
                             f"{request_timeout_s}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._closing = False
        self._seconds_per_batch = 1.0  # running estimate, for Retry-After

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the batch being generated)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        """The engine's results for ``inputs``, in order; raises QueueFull at once when the queue is full."""
        if self._closing:
            raise ShuttingDown("the server is shutting down; send the request to another replica or retry later",
                               self._retry_after())
        self._start()
        assert self._queue is not None
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"the server is overloaded: {self.max_queue} requests are already queued; "
                            "retry after the Retry-After delay", self._retry_after())
        request = _Request(list(inputs), dict(params), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(request)
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), self.request_timeout_s)
        except asyncio.CancelledError:
            request.future.cancel()  # the client went away: the worker skips it if it is still queued
            raise
        except asyncio.TimeoutError:
            request.future.cancel()
            raise RequestTimeout(f"no answer within {self.request_timeout_s:g} s; the server is busy, retry "
                                 "later or send fewer inputs per request", self._retry_after()) from None

    async def close(self) -> None:
        """Stop accepting requests, finish everything already queued, then stop the worker thread."""
        self._closing = True
        if self._queue is not None and self._worker is not None:
            try:  # bounded: anything still queued after request_timeout_s has timed out anyway
                await asyncio.wait_for(self._queue.join(), self.request_timeout_s)
            except asyncio.TimeoutError:
                pass
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    # -- worker ----------------------------------------------------------------------------------
    def _start(self) -> None:
        """Start the worker on first use, so the batcher binds to the loop that serves requests.

        A new event loop (a test client opened twice) gets a new queue and worker.
        """
        if self._worker is None or self._worker.get_loop() is not asyncio.get_running_loop():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect()
            try:
                groups: dict[str, list[_Request]] = {}
                for request in batch:
                    if not request.future.done():  # skip requests whose client already timed out
                        groups.setdefault(request.group_key, []).append(request)
                for group in groups.values():
                    await self._run_group(group)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _collect(self) -> list[_Request]:
        """The first queued request plus whatever else arrives within max_wait_s, up to max_batch_size inputs."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        size = len(batch[0].inputs)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                if self._queue.empty():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                else:
                    request = self._queue.get_nowait()
            except asyncio.TimeoutError:
                break
            batch.append(request)
            size += len(request.inputs)
        return batch

    async def _run_group(self, group: list[_Request]) -> None:
        """One generate call for the group; on failure, each request alone so only the bad one fails."""
        try:
            results = await self._generate([x for r in group for x in r.inputs], group[0].params)
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0], exc=exc)
                return
            for request in group:
                await self._run_group([request])
            return
        start = 0
        for request in group:
            _settle(request, results[start:start + len(request.inputs)])
            start += len(request.inputs)

    async def _generate(self, inputs: list[Any], params: dict[str, Any]) -> list[Any]:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(self.engine.generate, inputs, **params))
        finally:
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * (time.monotonic() - started)

    def _retry_after(self) -> int:
        """Whole seconds until the queue has likely drained a batch's worth: the recent time per batch
        times the batches queued ahead, between 1 and 60."""
        batches_ahead = 1 + self.queued / self.max_batch_size
        return max(1, min(60, math.ceil(self._seconds_per_batch * batches_ahead)))


def _settle(request: _Request, results: list[Any] | None = None, exc: BaseException | None = None) -> None:
    if request.future.done():
        return  # the client timed out meanwhile
    if exc is not None:
        request.future.set_exception(exc)
    else:
        request.future.set_result(results)
