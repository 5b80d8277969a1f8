"""Predictor: one client for every endpoint, whatever serves it.

A Predictor turns calls into requests of one shape (the SageMaker/Hugging Face ``/invocations``
body: ``{"inputs": ..., "parameters": {...}}``) and hands them to a transport with one method,
``send``. The in-process transport answers them with a local model, the HTTP transport
(``Predictor.from_url``) sends them to a server's ``/invocations`` route, and a mock transport
answers them with a function, for users' own tests.
"""

from __future__ import annotations

from .predictor import MockTransport, Prediction, Predictor, Transport

__all__ = ["MockTransport", "Prediction", "Predictor", "Transport"]
