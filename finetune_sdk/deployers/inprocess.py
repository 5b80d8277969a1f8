"""Serve an artifact inside the calling process (no server, no network)."""

from __future__ import annotations

from typing import Any

from ..artifact import Artifact
from ..predict import Predictor


class InProcessDeployer:
    def deploy(self, artifact: Artifact, *, device: str = "auto", **options: Any) -> Predictor:
        return Predictor.local(artifact, device=device)
