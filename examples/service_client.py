"""A small web service that calls a fine-tuned model's endpoint and answers with its own error codes.

Serve a model, then run this service in front of it:

    finetune-sdk serve runs/demo --port 8080                      # terminal 1 (after `finetune-sdk demo`)
    ENDPOINT_URL=http://127.0.0.1:8080 uvicorn examples.service_client:app --port 9000   # terminal 2
    curl -s localhost:9000/advice -H 'Content-Type: application/json' \\
         -d '{"question": "I have not slept properly since March."}'

The AsyncPredictor retries timeouts, connection errors, 429 and 5xx itself (ENDPOINT_RETRIES times,
honouring Retry-After); what still fails reaches the handler below as one typed EndpointError, which
the service maps to its own answer instead of a 500 with a stack trace. Needs fastapi and uvicorn
(``pip install 'finetune-sdk[serve]'``); the predictor itself needs neither.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from finetune_sdk import (AsyncPredictor, AuthenticationError, BadRequest, EndpointError, EndpointTimeout,
                          RateLimited)

ENDPOINT_URL = os.environ.get("ENDPOINT_URL", "http://127.0.0.1:8080")
ENDPOINT_API_KEY = os.environ.get("ENDPOINT_API_KEY") or None
ENDPOINT_TIMEOUT = float(os.environ.get("ENDPOINT_TIMEOUT", "30"))
ENDPOINT_RETRIES = int(os.environ.get("ENDPOINT_RETRIES", "2"))


class Question(BaseModel):
    question: str
    max_new_tokens: int = 64


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One predictor (one connection pool) for the service's lifetime."""
    async with AsyncPredictor.from_url(ENDPOINT_URL, api_key=ENDPOINT_API_KEY, timeout=ENDPOINT_TIMEOUT,
                                       max_retries=ENDPOINT_RETRIES) as predictor:
        app.state.predictor = predictor
        yield


app = FastAPI(title="advice service", lifespan=lifespan)


@app.post("/advice")
async def advice(body: Question) -> Any:
    try:
        reply = await app.state.predictor.predict(body.question, max_new_tokens=body.max_new_tokens)
    except EndpointError as exc:
        return endpoint_failure(exc)
    return {"answer": reply.text, "finish_reason": reply.finish_reason}


def endpoint_failure(exc: EndpointError) -> JSONResponse:
    """The model endpoint's failure as this service's answer; retries have already been spent."""
    if isinstance(exc, BadRequest):  # the user's input was refused (too long, bad parameter): their fix
        return JSONResponse({"error": f"the model refused the request: {exc}"}, status_code=422)
    if isinstance(exc, AuthenticationError):  # our configuration is wrong, not the user's request
        return JSONResponse({"error": "the service is misconfigured (model endpoint key)"}, status_code=502)
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(int(exc.retry_after or 5))}
        return JSONResponse({"error": "the model is busy; try again shortly"}, status_code=503, headers=headers)
    if isinstance(exc, EndpointTimeout):
        return JSONResponse({"error": "the model took too long; ask for fewer tokens"}, status_code=504)
    return JSONResponse({"error": "the model endpoint is unavailable"}, status_code=503)
