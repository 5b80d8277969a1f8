"""One exception tree for the whole SDK.

    FineTuneError
    ├── ConfigError            bad settings, spec or template
    │   └── TemplateError      unknown placeholder, bad format string, template not prefix-stable
    ├── DataError              the dataset cannot be used
    │   ├── MissingColumnError
    │   ├── EmptyDatasetError
    │   └── UnsupportedFileError
    ├── ModelError             the model reference cannot be resolved or loaded
    │   └── MissingDependencyError   an optional package is not installed (message has the pip line)
    ├── TrainingError          the training run failed
    ├── ArtifactError          an artifact directory is missing, incomplete or from a newer SDK
    └── EndpointError          a prediction request failed

Errors from torch, transformers, datasets, boto3 or httpx are translated at the seam that calls them
(``raise X from exc``) so users catch one family and read what to do next.
"""

from __future__ import annotations


class FineTuneError(Exception):
    """Base class of every error the SDK raises on purpose."""


class ConfigError(FineTuneError, ValueError):
    """A setting, job spec or argument is invalid."""


class TemplateError(ConfigError):
    """A prompt template is malformed or does not fit the tokenizer or dataset."""


class DataError(FineTuneError, ValueError):
    """The dataset cannot be loaded or used with the template."""


class MissingColumnError(DataError):
    """The template needs a column the dataset does not have."""


class EmptyDatasetError(DataError):
    """No usable rows are left."""


class UnsupportedFileError(DataError):
    """The file type or encoding cannot be read."""


class ModelError(FineTuneError):
    """The model reference cannot be resolved or loaded."""


class MissingDependencyError(ModelError, ImportError):
    """An optional package is needed; the message carries the exact install command."""


class TrainingError(FineTuneError):
    """The training run failed."""


class ArtifactError(FineTuneError):
    """An artifact directory is missing, incomplete or incompatible."""


class EndpointError(FineTuneError):
    """A prediction request failed."""
