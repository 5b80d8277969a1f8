"""The HTTP server: the SageMaker container contract and the OpenAI API around one GenerationEngine.

    GET  /ping, /health            200 once the model is loaded (no key needed: load balancers poll them)
    POST /invocations              {"inputs", "parameters"} or {"messages"} -> [{"generated_text", "details"}]
    POST /v1/chat/completions      OpenAI chat completions, plain or ``stream: true`` (SSE)
    POST /v1/completions           OpenAI completions; the prompt fills the template's one prompt column
    GET  /v1/models                the one model this server holds (GET /v1/models/{id} for it alone)

    GET  /openapi.json             the OpenAPI schema of these routes (request bodies included)

Every error is ``{"error": {"message", "type"}}`` with a 4xx/5xx status: a request the server cannot
use (bad JSON, wrong content type, unknown field or out-of-range parameter, a prompt longer than the
model takes) is refused with a 4xx before it reaches the model. Generation runs in a worker
thread, so the event loop keeps answering /ping. With ``batching`` (the default) concurrent requests
are collected by a DynamicBatcher and generated together; a full queue answers 503 with Retry-After
at once, a request that waits too long answers 504, and a request whose client hangs up leaves the
batch. Without it, requests run one at a time (the engine serialises them with its own lock).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator, Awaitable, Mapping, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError
from .batcher import (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS, DEFAULT_REQUEST_TIMEOUT_S,
                      DynamicBatcher, QueueFull, RequestTimeout, ShuttingDown)
from .schema import MIN_TEMPERATURE, SERVER_ID_HEADER, checked_parameters, request_body, request_schemas

OPENAI_CHAT_KEYS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
                    "seed", "stream", "stream_options", "n", "user"}
OPENAI_COMPLETION_KEYS = (OPENAI_CHAT_KEYS - {"messages", "max_completion_tokens"}) | {"prompt"}
INVOCATION_KEYS = {"inputs", "messages", "parameters"}
STREAM_CHUNK_WORDS = 4
DISCONNECT_POLL_S = 0.1  # how often a request waiting for the batcher checks that its client is still there

T = TypeVar("T")


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"message", "type"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.headers = dict(headers or {})


def create_app(engine: Any, *, api_key: str | None = None, max_body_bytes: int = 1_000_000,
               max_new_tokens_cap: int = 1024, model_name: str = "finetune-sdk", batching: bool = True,
               max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
               max_queue: int = DEFAULT_MAX_QUEUE, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
               server_id: str | None = None) -> FastAPI:
    """A FastAPI app serving ``engine`` (a loaded GenerationEngine); uvicorn or a test client runs it.

    ``batching=False`` keeps the one-request-at-a-time path, e.g. to measure what batching buys.
    ``server_id`` is echoed on /ping (header X-Finetune-Sdk-Server-Id) for the process that started it.
    """
    batcher = (DynamicBatcher(engine, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                              request_timeout_s=request_timeout_s) if batching else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if batcher is not None:
            await batcher.close()  # finish queued requests before the process exits

    app = FastAPI(title="finetune_sdk server", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  lifespan=lifespan)
    bodies = request_schemas(max_new_tokens_cap)
    server = _Server(engine, api_key, max_body_bytes, max_new_tokens_cap, model_name, batcher)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.type, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(400, str(exc), "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(500, f"the server failed on this request ({type(exc).__name__}); the server log "
                                    "has the details", "server_error")

    @app.get("/ping")
    async def ping() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={SERVER_ID_HEADER: server_id} if server_id else None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name}

    @app.post("/invocations", openapi_extra=request_body(bodies["invocations"]))
    async def invocations(request: Request) -> Any:
        body = await server.read_json(request)
        return await server.invocations(body, request)

    @app.post("/v1/chat/completions", openapi_extra=request_body(bodies["chat"]))
    async def chat_completions(request: Request) -> Any:
        body = await server.read_json(request)
        return await server.chat_completions(body, request)

    @app.post("/v1/completions", openapi_extra=request_body(bodies["completions"]))
    async def completions(request: Request) -> Any:
        body = await server.read_json(request)
        return await server.completions(body, request)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_key(request)
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        server.check_key(request)
        if model_id != model_name:
            raise ApiError(404, f"model {model_id!r:.100} not found; this server holds {model_name!r}")
        return server.model_card()

    return app


class _Server:
    """Request parsing and generation, kept apart from routing so each route reads in three lines."""

    def __init__(self, engine: Any, api_key: str | None, max_body_bytes: int, max_new_tokens_cap: int,
                 model_name: str, batcher: DynamicBatcher | None = None) -> None:
        self.engine = engine
        self.batcher = batcher
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.cap = max_new_tokens_cap
        self.model_name = model_name

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "finetune-sdk"}

    # -- request checks --------------------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>' "
                                "with the key the server was started with", "authentication_error")

    async def read_json(self, request: Request) -> dict[str, Any]:
        """The JSON object in the body, after the key, content-type and size checks."""
        self.check_key(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, f"content type {content_type or '(none)'!r} is not supported; "
                                "send a JSON body with 'Content-Type: application/json'")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, an integer too long, nesting too deep
            raise ApiError(400, f"the body is not valid JSON ({type(exc).__name__}: {exc})"[:500]) from exc
        if not isinstance(body, dict):
            raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
        return body

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the body is larger than {self.max_body_bytes} bytes; send fewer or shorter inputs "
                             "per request")

    def parameters(self, given: Any) -> dict[str, Any]:
        """Generation parameters checked by name, type and range (max_new_tokens against the server's cap)."""
        try:
            params = checked_parameters(given, self.cap)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from exc
        params.setdefault("max_new_tokens", min(self.engine.defaults.get("max_new_tokens", self.cap), self.cap))
        return params

    async def check_inputs(self, inputs: list[Any]) -> None:
        """Render every prompt before generation: an input the template cannot use, or one longer than the
        model takes, is the caller's fault (400) and must not fail the batch it would join."""
        limit = self.engine.encoder.max_length

        def lengths() -> list[int]:
            try:
                return [len(self.engine.prompt_ids(x)) for x in inputs]
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                raise ApiError(400, f"cannot build a prompt from this input: {exc}") from exc

        for i, n in enumerate(await run_in_threadpool(lengths)):
            if n > limit:
                raise ApiError(400, f"input {i} is {n} tokens long; this model takes prompts of at most {limit} "
                                    "tokens; shorten it")

    # -- generation ------------------------------------------------------------------------------
    async def generate(self, inputs: list[Any], params: dict[str, Any], request: Request) -> list[Any]:
        """Run the engine in a worker thread, through the batcher when there is one.

        The engine's ConfigError/TemplateError are the caller's fault (400); overload is 503 and a
        request that waited too long is 504, both with Retry-After so clients back off. A batched
        request whose client hangs up is withdrawn from the batcher.
        """
        await self.check_inputs(inputs)
        try:
            if self.batcher is not None:
                return await _unless_disconnected(request, self.batcher.submit(inputs, params))
            return await run_in_threadpool(partial(self.engine.generate, inputs, **params))
        except (QueueFull, ShuttingDown) as exc:
            raise ApiError(503, str(exc), "overloaded_error", {"Retry-After": str(exc.retry_after)}) from exc
        except RequestTimeout as exc:
            raise ApiError(504, str(exc), "timeout_error", {"Retry-After": str(exc.retry_after)}) from exc
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from exc
        except Exception as exc:
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from exc

    async def prompt_texts(self, inputs: list[Any]) -> list[str]:
        """The rendered prompts, for ``return_full_text``."""
        def render() -> list[str]:
            return [self.engine.prompt_text(x) for x in inputs]
        return await run_in_threadpool(render)

    async def invocations(self, body: dict[str, Any], request: Request) -> list[dict[str, Any]]:
        unknown = set(body) - INVOCATION_KEYS
        if unknown:
            raise ApiError(400, f"unknown fields {sorted(unknown)}; /invocations takes {sorted(INVOCATION_KEYS)} "
                                "(generation parameters go inside 'parameters')")
        if "messages" in body:
            inputs = [_messages(body["messages"])]
        elif "inputs" in body:
            inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        else:
            raise ApiError(400, "the body needs 'inputs' (a string, an object of template columns or a list "
                                "of them) or 'messages' (a chat conversation)")
        if not inputs:
            raise ApiError(400, "'inputs' is an empty list; send at least one input")
        inputs = [_messages(x) if isinstance(x, list) else x for x in inputs]
        params = self.parameters(body.get("parameters"))
        full_text = params.get("return_full_text") is True
        generations = await self.generate(inputs, params, request)
        prefixes = await self.prompt_texts(inputs) if full_text else [""] * len(inputs)
        return [{"generated_text": prefix + g.text,
                 "details": {"finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
                             "completion_tokens": g.completion_tokens}}
                for prefix, g in zip(prefixes, generations)]

    async def chat_completions(self, body: dict[str, Any], request: Request) -> Any:
        body = self._openai_body(body, OPENAI_CHAT_KEYS)
        messages = _messages(body.get("messages"))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        (generation,) = await self.generate([messages], self._openai_parameters(body, limit), request)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = _usage([generation])
        if body.get("stream"):
            return _sse(_chat_chunks(reply_id, created, self.model_name, generation, body))
        return {"id": reply_id, "object": "chat.completion", "created": created, "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text},
                             "finish_reason": generation.finish_reason, "logprobs": None}],
                "usage": usage}

    async def completions(self, body: dict[str, Any], request: Request) -> Any:
        body = self._openai_body(body, OPENAI_COMPLETION_KEYS)
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "'prompt' must be a string or a list of strings; each fills the template's "
                                "one prompt column")
        generations = await self.generate(prompts, self._openai_parameters(body, body.get("max_tokens")), request)
        reply_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.get("stream"):
            return _sse(_completion_chunks(reply_id, created, self.model_name, generations, body))
        return {"id": reply_id, "object": "text_completion", "created": created, "model": self.model_name,
                "choices": [{"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None}
                            for i, g in enumerate(generations)],
                "usage": _usage(generations)}

    def _openai_body(self, body: dict[str, Any], known: set[str]) -> dict[str, Any]:
        """The body checked, without its null fields: OpenAI reads a null optional field as absent."""
        unknown = set(body) - known
        if unknown:
            raise ApiError(400, f"unsupported parameters {sorted(unknown)}; this server understands {sorted(known)}")
        body = {k: v for k, v in body.items() if v is not None}
        if body.get("n", 1) != 1:
            raise ApiError(400, "n must be 1; send several requests for several replies")
        if not isinstance(body.get("stream", False), bool):
            raise ApiError(400, f"stream must be true or false, got {body['stream']!r:.50}")
        temperature = body.get("temperature", 0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ApiError(400, f"temperature must be a number from 0 to 2, got {temperature!r:.50}")
        return body

    def _openai_parameters(self, body: dict[str, Any], limit: Any) -> dict[str, Any]:
        """OpenAI sampling fields as engine parameters: temperature > 0 samples, absent or 0 is greedy."""
        params: dict[str, Any] = {"max_new_tokens": limit, "stop": body.get("stop"), "seed": body.get("seed"),
                                  "top_p": body.get("top_p")}
        temperature = body.get("temperature") or 0
        if temperature >= MIN_TEMPERATURE:  # OpenAI's 0 (and anything too small to sample with) is greedy
            params.update(do_sample=True, temperature=float(temperature))
        checked = self.parameters(params)  # top_p is checked even when greedy decoding ignores it
        return checked if checked.get("do_sample") else {k: v for k, v in checked.items() if k != "top_p"}


def _error_response(status: int, message: str, type: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type}}, status_code=status, headers=headers)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; if the client hangs up first, ``work`` is cancelled (so the batcher drops the
    request) and a 499 raised that nobody reads. Uvicorn does not cancel a handler whose client left."""
    async def client_gone() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        task.cancel()  # nothing when it is done; when this handler is cancelled, the work stops too
    if task not in done:
        raise ApiError(499, "the client closed the connection before the answer was ready", "client_closed")
    return task.result()


def _messages(value: Any) -> list[dict[str, str]]:
    """Chat messages checked and flattened: OpenAI's list-of-parts content becomes its joined text."""
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, message in enumerate(value):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = _text_of_parts(content, i)
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(content, str):
            raise ApiError(400, f"message {i} must be {{'role': str, 'content': str}}, got {message!r:.200}")
        out.append({"role": message["role"], "content": content})
    return out


def _text_of_parts(parts: list[Any], index: int) -> str:
    """The joined text of OpenAI list-of-parts content; only text parts are understood."""
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text":
            raise ApiError(400, f"message {index} has a content part of type {kind!r:.50}; this server takes only "
                                "text parts, {'type': 'text', 'text': str}")
        if not isinstance(part.get("text"), str):
            raise ApiError(400, f"message {index} has a text part whose 'text' is not a string: {part!r:.200}")
    return "".join(part["text"] for part in parts)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(generations: list[Any]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _pieces(text: str) -> list[str]:
    """The reply in a few-word pieces that join back to exactly ``text``."""
    words = text.split(" ")
    return [" ".join(words[i:i + STREAM_CHUNK_WORDS]) + (" " if i + STREAM_CHUNK_WORDS < len(words) else "")
            for i in range(0, len(words), STREAM_CHUNK_WORDS)]


def _chat_chunks(reply_id: str, created: int, model: str, generation: Any, body: dict[str, Any]) -> list[dict]:
    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in _pieces(generation.text)]
    chunks.append(chunk({}, generation.finish_reason))
    if _include_usage(body):
        chunks.append({**chunk({}), "choices": [], "usage": _usage([generation])})
    return chunks


def _completion_chunks(reply_id: str, created: int, model: str, generations: list[Any],
                       body: dict[str, Any]) -> list[dict]:
    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {"id": reply_id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}

    chunks = []
    for i, g in enumerate(generations):
        chunks += [chunk(i, piece) for piece in _pieces(g.text)]
        chunks.append(chunk(i, "", g.finish_reason))
    if _include_usage(body):
        chunks.append({**chunk(0, ""), "choices": [], "usage": _usage(generations)})
    return chunks


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: one ``data: {json}`` per chunk, then ``data: [DONE]``."""
    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
