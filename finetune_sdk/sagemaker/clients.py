"""boto3 clients for one region and account, and the one place AWS errors become the SDK's errors.

Control-plane calls (SageMaker, S3, STS, CloudWatch Logs) use botocore's standard retry mode, which
retries throttling and 5xx with backoff; ``aws_errors`` maps what is left to ConfigError/CloudError.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from ..errors import CloudError, ConfigError
from .settings import SageMakerSettings, check_region

CONTROL_PLANE_RETRIES = Config(retries={"mode": "standard", "max_attempts": 5})
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}
BAD_CREDENTIALS = {"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException",
                   "SignatureDoesNotMatch", "InvalidAccessKeyId"}
NO_CREDENTIALS = ("no AWS credentials found; run `aws configure`, set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                  "AWS_SECRET_ACCESS_KEY, or run where an instance role is attached")


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Raise boto3 failures inside the block as ConfigError (fix your setup) or CloudError (AWS said no)."""
    try:
        yield
    except NoCredentialsError as exc:
        raise ConfigError(NO_CREDENTIALS) from exc
    except ClientError as exc:
        raise client_error(exc, action) from exc
    except BotoCoreError as exc:
        raise CloudError(f"{action} failed: {exc}; check the network and the region") from exc


def client_error(exc: ClientError, action: str) -> Exception:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
    if code in DENIED:
        return CloudError(f"{action} was denied: {message}; grant the permissions listed in docs/sagemaker.md",
                          code=code)
    if code in BAD_CREDENTIALS:
        return ConfigError(f"AWS rejected the credentials while trying to {action} ({code}: {message}); "
                           "refresh them (aws sso login / aws configure)")
    if code in ("ValidationException", "ValidationError"):
        return ConfigError(f"SageMaker rejected the request to {action}: {message}")
    if code == "ResourceLimitExceeded":
        return CloudError(f"{action} hit an account quota: {message}; ask for a quota increase in the Service "
                          "Quotas console or choose another instance type", code=code)
    return CloudError(f"{action} failed ({code}): {message}", code=code)


class AwsClients:
    """Clients for one region, created on first use; ``endpoint_url`` points them at a compatible server."""

    def __init__(self, settings: SageMakerSettings) -> None:
        self.settings = settings
        try:
            self.session = boto3.Session(region_name=settings.region or os.environ.get("AWS_REGION") or None)
        except BotoCoreError as exc:
            raise ConfigError(f"could not start an AWS session: {exc}") from exc
        if not self.session.region_name:
            raise ConfigError("no AWS region; pass region='us-east-1' (or another) or set AWS_REGION or "
                              "AWS_DEFAULT_REGION")
        check_region(self.session.region_name)
        self._clients: dict[str, Any] = {}

    @property
    def region(self) -> str:
        return self.session.region_name

    def check_credentials(self) -> None:
        """Fail before any upload when no credentials can be found at all."""
        if self.session.get_credentials() is None:
            raise ConfigError(NO_CREDENTIALS)

    def client(self, name: str, config: Config = CONTROL_PLANE_RETRIES) -> Any:
        if name not in self._clients:
            try:
                self._clients[name] = self.session.client(name, endpoint_url=self.settings.endpoint_url,
                                                          config=config)
            except NoRegionError as exc:
                raise ConfigError("no AWS region; pass region= or set AWS_REGION or AWS_DEFAULT_REGION") from exc
        return self._clients[name]

    def default_bucket(self) -> str:
        """``sagemaker-{region}-{account}``, as the SageMaker SDK names it; created when missing."""
        with aws_errors("look up the AWS account"):
            account = self.client("sts").get_caller_identity()["Account"]
        bucket = f"sagemaker-{self.region}-{account}"
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise client_error(exc, f"check the bucket {bucket}") from exc
            with aws_errors(f"create the bucket {bucket}"):
                extra = {} if self.region == "us-east-1" else {
                    "CreateBucketConfiguration": {"LocationConstraint": self.region}}
                s3.create_bucket(Bucket=bucket, **extra)
        return bucket

    def upload(self, path: Path, bucket: str, key: str) -> str:
        with aws_errors(f"upload {path.name} to s3://{bucket}/{key}"):
            self.client("s3").upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{key}"

    def download(self, uri: str, path: Path) -> None:
        bucket, key = split_s3_uri(uri)
        with aws_errors(f"download {uri}"):
            self.client("s3").download_file(bucket, key, str(path))

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        """Delete every object under ``prefix`` (used to undo uploads when a request fails)."""
        s3 = self.client("s3")
        with aws_errors(f"delete s3://{bucket}/{prefix}"):
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})

    def has_objects(self, uri: str) -> bool:
        bucket, prefix = split_s3_uri(uri)
        with aws_errors(f"list {uri}"):
            return bool(self.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"))


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key
