"""One exception tree for the whole SDK.

    FineTuneError
    ├── ConfigError            bad settings, spec or template
    │   ├── TemplateError      unknown placeholder, bad format string, template not prefix-stable
    │   └── PortInUseError     the port asked for a local server is taken by another process
    ├── DataError              the dataset cannot be used
    │   ├── MissingColumnError
    │   ├── EmptyDatasetError
    │   └── UnsupportedFileError
    ├── ModelError             the model reference cannot be resolved or loaded
    │   └── MissingDependencyError   an optional package is not installed (message has the pip line)
    ├── TrainingError          the training run failed
    ├── ArtifactError          an artifact directory is missing, incomplete or from a newer SDK
    ├── CloudError             an AWS request failed (permissions, quota, missing resource); .code
    └── EndpointError          a prediction request failed (.status, .body when the endpoint answered)
        ├── BadRequest             the endpoint rejected (4xx) or redirected (3xx) the request; do not retry
        ├── AuthenticationError    401/403: missing or wrong API key
        ├── RateLimited            429: too many requests (retried with backoff first)
        ├── EndpointTimeout        no answer in time, or 408 (retried first); the server's 504 (not retried)
        └── EndpointUnavailable    connection refused/reset or another 5xx (retried first)

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


class PortInUseError(ConfigError):
    """The port asked for a local server is already taken by another process."""


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


class CloudError(FineTuneError):
    """An AWS request failed; ``code`` is AWS's error code (e.g. ``AccessDeniedException``)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class EndpointError(FineTuneError):
    """A prediction request failed; ``status`` and ``body`` hold the endpoint's answer when there was one.

    ``retry_after`` is the server's Retry-After hint in seconds, when it sent one. ``retryable`` says
    whether sending the same request again may succeed; the Predictor retries exactly these.
    """

    #: Whether errors of this class may pass on a second try, unless the instance says otherwise.
    RETRYABLE = False

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None,
                 retry_after: float | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.retryable = self.RETRYABLE if retryable is None else retryable


class BadRequest(EndpointError):
    """The endpoint rejected the request (4xx) or redirected it (3xx); retrying the same request cannot help."""


class AuthenticationError(EndpointError):
    """The endpoint needs a valid API key (401/403)."""


class RateLimited(EndpointError):
    """The endpoint is throttling requests (429)."""

    RETRYABLE = True


class EndpointTimeout(EndpointError):
    """The endpoint did not answer in time. Retryable, except when the server itself gave up (504)."""

    RETRYABLE = True


class EndpointUnavailable(EndpointError):
    """The endpoint could not be reached or failed on its side (5xx)."""

    RETRYABLE = True
