"""A transport that sends Predictor requests to a SageMaker endpoint through sagemaker-runtime InvokeEndpoint.

botocore's own retries are off; the shared policy in :mod:`.retry` retries throttling, a model that
is not ready yet, timeouts and 5xx, so every transport backs off the same way. ``ModelError`` (the
container answered with an error) is not retried: it is raised as BadRequest for a 4xx, else EndpointError.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError,
                                 NoCredentialsError, NoRegionError, ProfileNotFound, ReadTimeoutError)

from ..errors import (AuthenticationError, BadRequest, ConfigError, EndpointError, EndpointTimeout,
                      EndpointUnavailable, RateLimited)
from .retry import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, check_max_retries, retrying

JSON = "application/json"
UNAVAILABLE = {"ModelNotReadyException", "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure",
               "InternalDependencyException", "InternalServerError"}


class SageMakerTransport:
    """Invokes one endpoint; ``on_close`` runs when the Predictor is closed (e.g. to delete the endpoint)."""

    def __init__(self, endpoint_name: str, *, client: Any = None, region: str | None = None,
                 endpoint_url: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, sleep: Callable[[float], None] = time.sleep,
                 on_close: Callable[[], None] | None = None) -> None:
        check_max_retries(max_retries)
        if client is None:
            try:
                client = boto3.Session(region_name=region or os.environ.get("AWS_REGION") or None).client(
                    "sagemaker-runtime", endpoint_url=endpoint_url,
                    config=Config(read_timeout=timeout, retries={"mode": "standard", "max_attempts": 1}))
            except NoRegionError as exc:
                raise ConfigError(f"no AWS region for the endpoint {endpoint_name!r}; pass region= or set "
                                  "AWS_REGION") from exc
            except ProfileNotFound as exc:
                raise ConfigError(f"{exc}; set AWS_PROFILE to a profile that `aws configure list-profiles` shows, "
                                  "or unset it to use the default credentials") from exc
        self.endpoint_name = endpoint_name
        self.client = client
        self.max_retries = max_retries
        self.sleep = sleep
        self.on_close = on_close

    def send(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return retrying(self.max_retries, self.sleep)(self._send_once, request)

    def _send_once(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        where = f"SageMaker endpoint {self.endpoint_name!r}"
        try:
            response = self.client.invoke_endpoint(EndpointName=self.endpoint_name, ContentType=JSON, Accept=JSON,
                                                   Body=json.dumps(request).encode("utf-8"))
            body = response["Body"].read().decode("utf-8")
        except ClientError as exc:
            raise invoke_error(exc, where) from exc
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise EndpointTimeout(f"{where} did not answer in time ({exc}); raise timeout= or ask for fewer "
                                  "max_new_tokens") from exc
        except NoCredentialsError as exc:
            raise AuthenticationError(f"no AWS credentials to call {where}; run `aws configure` or set "
                                      "AWS_PROFILE") from exc
        except (EndpointConnectionError, BotoCoreError) as exc:
            raise EndpointUnavailable(f"could not reach {where} ({exc}); check the region and network") from exc
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise EndpointError(f"{where} answered non-JSON {body!r:.200}", body=body) from exc

    def close(self) -> None:
        """Run ``on_close`` once it succeeds: after a failed delete, a later close() tries again."""
        if self.on_close is not None:
            self.on_close()
            self.on_close = None


def invoke_error(exc: ClientError, where: str) -> EndpointError:
    """The most specific EndpointError for a failed InvokeEndpoint call."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
        return RateLimited(f"{where} is throttling requests ({message}); send fewer at once", status=429, body=message)
    if code in UNAVAILABLE:
        return EndpointUnavailable(f"{where} is not ready or failed on its side ({code}: {message})",
                                   status=status, body=message)
    if code == "ModelError":
        original = exc.response.get("OriginalStatusCode")
        logs = exc.response.get("LogStreamArn")
        detail = f"{where}'s model failed the request: {exc.response.get('OriginalMessage') or message}" + (
            f"; its logs are in {logs}" if logs else "")
        if isinstance(original, int) and 400 <= original < 500:
            return BadRequest(f"{detail} (fix the request; retrying will not help)", status=original, body=message)
        return EndpointError(detail, status=original, body=message)
    if code in ("AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException"):
        return AuthenticationError(f"{where} refused the credentials ({code}: {message}); they need "
                                   "sagemaker:InvokeEndpoint", status=status, body=message)
    if code == "ValidationError":
        return BadRequest(f"{where} rejected the call: {message} (is the endpoint name right and InService?)",
                          status=status, body=message)
    return EndpointError(f"{where} failed ({code}): {message}", status=status, body=message)
