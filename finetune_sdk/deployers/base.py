"""The deployer seam."""

from __future__ import annotations

from typing import Any, Protocol

from ..artifact import Artifact
from ..predict import Predictor


class Deployer(Protocol):
    def deploy(self, artifact: Artifact, **options: Any) -> Predictor: ...
