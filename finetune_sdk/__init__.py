"""finetune_sdk: fine-tune a small open LLM on your data and serve it, locally or on AWS SageMaker.

``import finetune_sdk`` stays light (no torch): services that only call endpoints import the
Predictor without the training stack.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .artifact import Artifact
from .errors import (ArtifactError, AuthenticationError, BadRequest, CloudError, ConfigError, DataError, EmptyDatasetError,
                     EndpointError, EndpointTimeout, EndpointUnavailable, FineTuneError, MissingColumnError,
                     MissingDependencyError, ModelError, PortInUseError, RateLimited, TemplateError, TrainingError,
                     UnsupportedFileError)
from .predict import AsyncPredictor, MockTransport, Prediction, Predictor
from .spec import JobSpec, LoraSettings, TrainingSettings
from .template import PromptTemplate
from .tuner import FineTuner

__all__ = [
    "Artifact", "ArtifactError", "AsyncPredictor", "AuthenticationError", "BadRequest", "CloudError", "ConfigError", "DataError",
    "EmptyDatasetError", "EndpointError", "EndpointTimeout", "EndpointUnavailable", "FineTuneError", "FineTuner",
    "JobSpec", "LoraSettings", "MissingColumnError", "MissingDependencyError", "MockTransport",
    "ModelError", "PortInUseError", "Prediction", "Predictor", "PromptTemplate", "RateLimited", "TemplateError",
    "TrainingError", "TrainingSettings", "UnsupportedFileError", "__version__",
]
