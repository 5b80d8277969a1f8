"""SageMaker settings, checked before anything is uploaded or created.

Every field can come from the constructor or the environment (``FINETUNE_SDK_SAGEMAKER_ROLE`` and
friends, ``AWS_REGION``), so ``FineTuner(..., backend="sagemaker")`` works with no arguments once the
environment names a role. In the environment, lists are comma-separated and tags read
``key=value,key=value``. Instance types and regions are checked against botocore's own service model.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

ENV_PREFIX = "FINETUNE_SDK_SAGEMAKER_"
ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_URI = re.compile(rf"^s3://{BUCKET}(/[^\s]*)?$")
ROLE_EXAMPLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"


@lru_cache(maxsize=4)
def instance_types(kind: str) -> frozenset[str]:
    """SageMaker's instance types for ``kind`` ("training" or "endpoint"), from botocore's service model."""
    import botocore.session

    shape = {"training": "TrainingInstanceType", "endpoint": "ProductionVariantInstanceType"}[kind]
    return frozenset(botocore.session.get_session().get_service_model("sagemaker").shape_for(shape).enum)


@lru_cache(maxsize=1)
def sagemaker_regions() -> frozenset[str]:
    import boto3

    session = boto3.session.Session()
    return frozenset(r for p in session.get_available_partitions()
                     for r in session.get_available_regions("sagemaker", partition_name=p))


def unique_name(stem: str) -> str:
    """``finetune-sdk-<stem>-<UTC time to the millisecond>``: a valid SageMaker name (63 characters at most)."""
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:24] or "model"
    return f"finetune-sdk-{slug}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S-%f')[:-3]}"


def check_instance_type(value: str, kind: str) -> str:
    if value not in instance_types(kind):
        family = ".".join(value.split(".")[:2])
        near = sorted(t for t in instance_types(kind) if t.startswith(family + "."))[:6]
        hint = f"this family has {near}" if near else "e.g. ml.g5.2xlarge (1 A10G GPU, 24 GB)"
        raise ConfigError(f"instance_type={value!r} is not a SageMaker {kind} instance type; {hint}")
    return value


def check_region(value: str) -> str:
    if value not in sagemaker_regions():
        raise ConfigError(f"region={value!r} is not a region with SageMaker; use one such as us-east-1, "
                          "eu-west-1 or us-west-2")
    return value


def check_s3_uri(value: str, name: str) -> str:
    if not S3_URI.match(value):
        raise ConfigError(f"{name}={value!r} is not an S3 URI; write it as s3://bucket-name/prefix")
    return value.rstrip("/")


class SageMakerSettings(BaseModel):
    """Where and how SageMaker jobs run. Unset fields are read from the environment, then defaulted."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    role: str | None = Field(None, description="IAM role SageMaker assumes to read data and write the model")
    region: str | None = Field(None, description="AWS region; default: the boto3 session's (AWS_REGION)")
    bucket: str | None = Field(None, description="S3 bucket for inputs and outputs; default "
                                                 "sagemaker-{region}-{account}")
    prefix: str = Field("finetune-sdk", description="key prefix inside the bucket")
    instance_type: str = Field("ml.g5.2xlarge", description="training instance type")
    instance_count: int = Field(1, description="instances per job; with several, or several GPUs per "
                                                     "instance, training runs data-parallel under torchrun")
    volume_size_gb: int = Field(100, ge=1, le=16384, description="EBS volume per instance")
    max_runtime_s: int = Field(24 * 3600, ge=60, description="SageMaker stops the job after this long")
    spot: bool = Field(False, description="managed spot training (cheaper; may be interrupted and resumed)")
    max_wait_s: int | None = Field(None, ge=60, description="spot: total time including waiting for capacity")
    checkpoint_s3_uri: str | None = Field(None, description="where checkpoints sync to (resume across jobs)")
    tags: dict[str, str] = Field(default_factory=dict)
    subnets: list[str] = Field(default_factory=list, description="VPC subnets (with security_group_ids)")
    security_group_ids: list[str] = Field(default_factory=list)
    kms_key_id: str | None = Field(None, description="KMS key for the output and volume encryption")
    image_uri: str | None = Field(None, description="training image; default: the pinned Hugging Face DLC")
    endpoint_url: str | None = Field(None, description="send AWS calls here (an S3/SageMaker-compatible server)")

    @field_validator("role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and not ROLE_ARN.match(value):
            raise ValueError(f"role={value!r} is not an IAM role ARN; pass one like {ROLE_EXAMPLE} "
                             "(the role SageMaker assumes; see docs/sagemaker.md for its permissions)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else check_region(value)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(BUCKET, value):
            raise ValueError(f"bucket={value!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.', '-'; "
                             "no s3:// prefix)")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        return check_instance_type(value, "training")

    @field_validator("instance_count")
    @classmethod
    def _instance_count(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"instance_count={value}; a training job needs at least 1 instance")
        return value

    @field_validator("checkpoint_s3_uri")
    @classmethod
    def _checkpoint_uri(cls, value: str | None) -> str | None:
        return None if value is None else check_s3_uri(value, "checkpoint_s3_uri")

    @model_validator(mode="after")
    def _spot_and_vpc(self) -> "SageMakerSettings":
        if self.max_wait_s is not None and not self.spot:
            raise ValueError("max_wait_s only applies to spot training; pass spot=True or drop max_wait_s")
        if self.spot and self.max_wait_s is not None and self.max_wait_s < self.max_runtime_s:
            raise ValueError(f"max_wait_s={self.max_wait_s} is shorter than max_runtime_s={self.max_runtime_s}; "
                             "SageMaker needs max_wait_s >= max_runtime_s")
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("a VPC needs both subnets and security_group_ids")
        return self

    def require_role(self) -> str:
        """The role, or a ConfigError saying how to give one (checked before anything is uploaded)."""
        if self.role is None:
            raise ConfigError(f"no IAM role for SageMaker; pass role='{ROLE_EXAMPLE}' (your role's ARN) or set "
                              f"{ENV_PREFIX}ROLE")
        return self.role

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **given: Any) -> "SageMakerSettings":
        """Settings from ``given``, falling back to ``FINETUNE_SDK_SAGEMAKER_<FIELD>`` variables."""
        environ = os.environ if environ is None else environ
        values = {name: _from_environ(name, environ[ENV_PREFIX + name.upper()]) for name in cls.model_fields
                  if ENV_PREFIX + name.upper() in environ}
        values.update({k: v for k, v in given.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_first_message(exc)) from exc


def _from_environ(name: str, raw: str) -> Any:
    """A variable's text as the field's value: lists are comma-separated, tags are ``key=value`` pairs."""
    if name not in ("subnets", "security_group_ids", "tags"):
        return raw
    items = [item.strip() for item in raw.split(",") if item.strip()]  # AWS ids and tags never hold a comma
    if name != "tags":
        return items
    tags = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"{ENV_PREFIX}TAGS={raw!r}: {item!r} is not key=value; write the tags as key=value "
                              "pairs separated by commas, e.g. team=care,project=triage")
        tags[key.strip()] = value.strip()
    return tags


def _first_message(exc: ValidationError) -> str:
    """The first error's message, with its field name unless the message already says it."""
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    where = ".".join(str(part) for part in error["loc"])
    return f"invalid SageMaker settings: {message if where in message else f'{where}: {message}'}"
