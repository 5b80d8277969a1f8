"""Dynamic batching: requests from many clients share the engine's decode steps.

A decode step for 16 rows costs little more than for one, so a server that batches answers many
concurrent clients at several times the throughput of one-at-a-time. Greedy requests join one
continuous batch (``DecodeBatch``): each input is prefilled alone and becomes a row, every step decodes
a token for all rows, and a finished row leaves at once so a waiting input takes its place.

    submit(inputs, params) ──> bounded queue ──> worker (one thread for the model):
                                                   ├─ greedy inputs: rows of the continuous batch, up to
                                                   │   max_batch_size at a time; step until each finishes
                                                   └─ sampling requests: grouped by identical parameters,
                                                       one engine.generate per group between steps

Errors, all ``BatcherError``:

    BatcherError
    ├── QueueFull        max_queue requests are waiting; answer 503 with Retry-After, never wait
    ├── ShuttingDown     the batcher is closing and takes no new work
    └── RequestTimeout   the request waited longer than request_timeout_s

An exception from the engine fails only the requests it concerns: a prompt that cannot be encoded or
prefilled fails its own request, a failed generate call is retried request by request, and a failed
decode step fails the rows then in the batch.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

from ..errors import ConfigError

DEFAULT_MAX_BATCH_SIZE = 32  # a decode step for 32 rows costs about 1.3x one for 16 on a CPU
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


@dataclass(eq=False)
class _Request:
    inputs: list[Any]
    params: dict[str, Any]
    future: asyncio.Future = field(repr=False)
    settings: Any = field(default=None, repr=False)  # the engine's checked Settings, once prepared
    results: list[Any] = field(default_factory=list, repr=False)
    unfinished: int = 0  # inputs still generating in the continuous batch

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
        self._seconds_per_input = 0.5  # running estimate, for Retry-After
        self._unanswered_seconds = 0.0

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the batch being generated).

        The worker takes requests off the queue only as rows free up (see ``_drain``), so the queue
        holds every waiting request but the next batch's few.
        """
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        """The engine's results for ``inputs``, in order; raises QueueFull at once when the queue is full."""
        if self._closing:
            raise ShuttingDown("the server is shutting down; send the request to another replica or retry later",
                               self._retry_after())
        self._start()
        assert self._queue is not None
        if self.queued >= self.max_queue:
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
        """Admit queued work between decode steps; wait (max_wait_ms) only when nothing is generating."""
        assert self._queue is not None
        batch = self.engine.decode_batch()
        waiting: deque[tuple[_Request, int, list[int]]] = deque()  # greedy inputs without a row yet
        while True:
            idle = not batch and not waiting
            room = self.max_batch_size - len(batch) - len(waiting)
            incoming = await self._collect() if idle else self._drain(room)
            others: dict[str, list[_Request]] = {}
            for request in incoming:
                prepared = await self._prepare(request)
                if prepared is None:
                    continue
                if not prepared:
                    self._finish(request, [])
                elif request.settings.continuous:
                    request.results, request.unfinished = [None] * len(prepared), len(prepared)
                    waiting.extend((request, i, p) for i, p in enumerate(prepared))
                else:
                    others.setdefault(request.group_key, []).append(request)
            for group in others.values():
                await self._run_group(group)
            admit = []
            while waiting and len(batch) + len(admit) < self.max_batch_size:
                request, i, prompt = waiting.popleft()
                if request.future.done():
                    self._abandon(request)  # its client left, or another of its inputs failed
                else:
                    admit.append((request, i, prompt))
            if admit or batch:
                await self._advance(batch, admit)

    async def _prepare(self, request: _Request) -> list[list[int]] | None:
        """The request's prompt ids, with its settings checked; None (and the request answered) when it
        cannot run."""
        if request.future.done():  # its client timed out or left while it was queued
            self._finish(request)
            return None
        loop = asyncio.get_running_loop()
        try:
            request.settings = self.engine.settings(request.params)
            prompts = await loop.run_in_executor(self._executor, lambda: [self.engine.prompt_ids(x)
                                                                          for x in request.inputs])
        except Exception as exc:
            self._finish(request, exc=exc)
            return None
        return prompts

    async def _advance(self, batch: Any, admit: list[tuple[_Request, int, list[int]]]) -> None:
        """In the model thread: drop rows whose client left, prefill the admitted inputs, decode one step."""
        gone = {row.tag for row in batch.rows if row.tag[0].future.done()}

        def work() -> list[tuple[Any, Any]]:
            batch.drop(gone)
            finished: list[tuple[Any, Any]] = []
            for request, i, prompt in admit:
                try:
                    finished += batch.add((request, i), prompt, request.settings.max_new_tokens,
                                          request.settings.stop)
                except Exception as exc:  # this prompt alone fails (e.g. longer than the model allows)
                    finished.append(((request, i), exc))
            try:
                return finished + batch.step()
            except Exception as exc:  # the whole step failed: every row in it fails, and the batch starts empty
                failed = [(row.tag, exc) for row in batch.rows]
                batch.drop({row.tag for row in batch.rows})
                return finished + failed

        started = time.monotonic()
        finished = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        self._observe(time.monotonic() - started, len(finished))
        for request, _ in gone:
            self._abandon(request)
        for (request, i), outcome in finished:
            if request.unfinished == 0:
                continue  # already failed through another of its inputs
            if isinstance(outcome, BaseException):
                request.unfinished = 0
                self._finish(request, exc=outcome)
                continue
            request.results[i] = outcome
            request.unfinished -= 1
            if request.unfinished == 0:
                self._finish(request, request.results)

    def _drain(self, room: int) -> list[_Request]:
        """Queued requests for the ``room`` free rows, without waiting; the rest stay queued, so the queue
        bound (max_queue) counts them."""
        assert self._queue is not None
        taken = []
        while room > 0 and not self._queue.empty():
            taken.append(self._queue.get_nowait())
            room -= len(taken[-1].inputs)
        return taken

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
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        inputs = [x for r in group for x in r.inputs]
        try:
            results = await loop.run_in_executor(self._executor,
                                                 partial(self.engine.generate, inputs, **group[0].params))
        except Exception as exc:
            if len(group) == 1:
                self._finish(group[0], exc=exc)
                return
            for request in group:
                await self._run_group([request])
            return
        self._observe(time.monotonic() - started, len(inputs))
        start = 0
        for request in group:
            self._finish(request, results[start:start + len(request.inputs)])
            start += len(request.inputs)

    def _finish(self, request: _Request, results: list[Any] | None = None, exc: BaseException | None = None) -> None:
        """Answer the request (unless its client already gave up) and mark its queue entry done."""
        if not request.future.done():
            if exc is not None:
                request.future.set_exception(exc)
            else:
                request.future.set_result(results)
        assert self._queue is not None
        self._queue.task_done()

    def _abandon(self, request: _Request) -> None:
        """Stop waiting for a continuous request's remaining inputs (its future is already settled)."""
        if request.unfinished:
            request.unfinished = 0
            self._finish(request)

    def _observe(self, seconds: float, answered: int) -> None:
        """Update the running estimate of model seconds per answered input, for Retry-After."""
        self._unanswered_seconds += seconds
        if answered:
            per_input = self._unanswered_seconds / answered
            self._seconds_per_input = 0.8 * self._seconds_per_input + 0.2 * per_input
            self._unanswered_seconds = 0.0

    def _retry_after(self) -> int:
        """Whole seconds until the queue ahead has likely drained: recent seconds per answered input times
        the inputs queued and in the batch, between 1 and 60."""
        ahead = 1 + self.queued + self.max_batch_size
        return max(1, min(60, math.ceil(self._seconds_per_input * ahead)))
