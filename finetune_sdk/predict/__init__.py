"""Predictor: one client for every endpoint, whatever serves it.

A Predictor turns calls into requests of one shape (the SageMaker/Hugging Face ``/invocations``
body: ``{"inputs": ..., "parameters": {...}}``) and hands them to a transport with one method,
``send``. The in-process transport answers them with a local model, the HTTP transport
(``Predictor.from_url``) sends them to a server's ``/invocations`` route, and a mock transport
answers them with a function, for users' own tests. ``AsyncPredictor`` is the asyncio twin: the same
requests (built in ``base``) and the same retry policy (``retry``), awaited over httpx.AsyncClient.
"""

from __future__ import annotations

from .async_predictor import AsyncPredictor, AsyncTransport
from .base import Prediction
from .predictor import MockTransport, Predictor, Transport

__all__ = ["AsyncPredictor", "AsyncTransport", "MockTransport", "Prediction", "Predictor", "Transport"]
