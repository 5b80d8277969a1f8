"""Bad SageMaker settings fail with a typed error that says what to do, before any AWS request is made.

Every case runs the whole ``FineTuner(..., backend=...).train()`` (or ``deploy``) path with botocore's
HTTP layer replaced by a recorder: an empty record proves nothing was uploaded or created.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from botocore.endpoint import Endpoint

from finetune_sdk import ConfigError, FineTuner, MissingDependencyError
from finetune_sdk.artifact import write_manifest
from finetune_sdk.backends.sagemaker import SageMakerBackend, training_request
from finetune_sdk.deployers.sagemaker import SageMakerDeployer
from finetune_sdk.sagemaker.settings import SageMakerSettings
from tests.conftest import COUNSEL

ROLE = "arn:aws:iam::123456789012:role/FineTuneSdkSageMaker"


@pytest.fixture
def requests(monkeypatch, tmp_path):
    """Fake credentials and region, and a record of every AWS request botocore tries to send."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "FINETUNE_SDK_SAGEMAKER_ROLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    sent: list[str] = []

    def record(self, operation_model, request_dict):
        sent.append(operation_model.name)
        raise AssertionError(f"unexpected AWS request {operation_model.name}")

    monkeypatch.setattr(Endpoint, "make_request", record)
    return sent


def _no_credentials(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("FINETUNE_SDK_SAGEMAKER_ROLE", ROLE)
    return "sagemaker"


# (id, set up the environment and return the backend argument, error type, key phrase)
CASES = [
    ("bad role ARN", lambda mp: SageMakerBackend(role="arn:aws:iam::12345:role/x"), ConfigError,
     "role='arn:aws:iam::12345:role/x' is not an IAM role ARN; pass one like arn:aws:iam::123456789012:role/"),
    ("bad role ARN from the environment", lambda mp: mp.setenv("FINETUNE_SDK_SAGEMAKER_ROLE", "SageMakerRole") or
     "sagemaker", ConfigError, "role='SageMakerRole' is not an IAM role ARN"),
    ("no role", lambda mp: "sagemaker", ConfigError, "no IAM role for SageMaker; pass role='arn:aws:iam::"
     "123456789012:role/SageMakerExecutionRole' (your role's ARN) or set FINETUNE_SDK_SAGEMAKER_ROLE"),
    ("bad checkpoint S3 URI", lambda mp: SageMakerBackend(role=ROLE, checkpoint_s3_uri="my-bucket/checkpoints"),
     ConfigError, "checkpoint_s3_uri='my-bucket/checkpoints' is not an S3 URI; write it as s3://bucket-name/prefix"),
    ("bucket given as a URI", lambda mp: SageMakerBackend(role=ROLE, bucket="s3://my-bucket"), ConfigError,
     "bucket='s3://my-bucket' is not an S3 bucket name"),
    ("unknown instance type", lambda mp: SageMakerBackend(role=ROLE, instance_type="ml.g5.3xlarge"), ConfigError,
     "instance_type='ml.g5.3xlarge' is not a SageMaker training instance type; this family has ['ml.g5.12xlarge'"),
    ("not an instance type at all", lambda mp: SageMakerBackend(role=ROLE, instance_type="g5.xlarge"), ConfigError,
     "instance_type='g5.xlarge' is not a SageMaker training instance type; e.g. ml.g5.2xlarge"),
    ("bad region", lambda mp: SageMakerBackend(role=ROLE, region="us-east-9"), ConfigError,
     "region='us-east-9' is not a region with SageMaker"),
    ("bad region from the environment",
     lambda mp: mp.setenv("AWS_REGION", "mars-north-1") or SageMakerBackend(role=ROLE),
     ConfigError, "region='mars-north-1' is not a region with SageMaker"),
    ("spot wait shorter than the run", lambda mp: SageMakerBackend(role=ROLE, spot=True, max_wait_s=600,
                                                                    max_runtime_s=3600),
     ConfigError, "max_wait_s=600 is shorter than max_runtime_s=3600"),
    ("no instances", lambda mp: SageMakerBackend(role=ROLE, instance_count=0), ConfigError,
     "instance_count=0; a training job needs at least 1 instance"),
    ("unknown setting", lambda mp: SageMakerBackend(role=ROLE, instance="ml.g5.xlarge"), ConfigError,
     "instance: Extra inputs are not permitted"),
    ("resume without a checkpoint URI", lambda mp: SageMakerBackend(role=ROLE), ConfigError,
     "resume=True on SageMaker needs checkpoint_s3_uri="),
    ("missing credentials", _no_credentials, ConfigError, "no AWS credentials found; run `aws configure`"),
    ("tags from the environment without '='", lambda mp: mp.setenv("FINETUNE_SDK_SAGEMAKER_TAGS", "team=care,triage")
     or SageMakerBackend(role=ROLE), ConfigError,
     "FINETUNE_SDK_SAGEMAKER_TAGS='team=care,triage': 'triage' is not key=value; write the tags as key=value pairs "
     "separated by commas, e.g. team=care,project=triage"),
    ("a VPC from the environment without security groups",
     lambda mp: mp.setenv("FINETUNE_SDK_SAGEMAKER_SUBNETS", "subnet-0a1b") or SageMakerBackend(role=ROLE),
     ConfigError, "a VPC needs both subnets and security_group_ids"),
]


@pytest.mark.parametrize("name, backend, error, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_settings_fail_before_any_request(name, backend, error, phrase, requests, monkeypatch, tmp_path,
                                              tiny_model_dir, counsel_rows):
    out = tmp_path / "out"
    with pytest.raises(error) as raised:
        tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=out, backend=backend(monkeypatch))
        tuner.train(resume=name == "resume without a checkpoint URI")
    assert type(raised.value) is error and phrase in str(raised.value)
    assert requests == [] and not out.exists()


def test_vpc_and_tags_from_the_environment_reach_the_training_request():
    settings = SageMakerSettings.from_env({
        "FINETUNE_SDK_SAGEMAKER_SUBNETS": "subnet-0a1b, subnet-2c3d", "FINETUNE_SDK_SAGEMAKER_SECURITY_GROUP_IDS":
        "sg-0e4f", "FINETUNE_SDK_SAGEMAKER_TAGS": "team=care, cost-center=ml=42,"}, role=ROLE)
    request = training_request(name="finetune-sdk-job", settings=settings, role=ROLE, image="image",
                               region="us-east-1", channels={}, sourcedir="s3://b/s", output="s3://b/o",
                               checkpoints="s3://b/c")
    assert request["VpcConfig"] == {"Subnets": ["subnet-0a1b", "subnet-2c3d"], "SecurityGroupIds": ["sg-0e4f"]}
    assert request["Tags"] == [{"Key": "finetune-sdk", "Value": "training"}, {"Key": "team", "Value": "care"},
                               {"Key": "cost-center", "Value": "ml=42"}]


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "artifact"
    path.mkdir()
    write_manifest(path, {"base_model": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "source": "hub"},
                          "template": COUNSEL.to_dict()})
    return path


@pytest.mark.parametrize("options, phrase", [
    ({"instance_type": "ml.g5.2xlarg"}, "instance_type='ml.g5.2xlarg' is not a SageMaker endpoint instance type"),
    ({"serverless": {"memory_mb": 8192}}, "serverless={'memory_mb': 8192}; use {'memory_mb': one of [1024"),
    ({"instance_count": 0}, "instance_count=0; an endpoint needs at least 1 instance"),
    ({"use_merged": True}, "has no merged/ model; train with TrainingSettings(merge=True)"),
])
def test_bad_deploy_options_fail_before_any_request(options, phrase, requests, artifact):
    with pytest.raises(Exception) as raised:
        SageMakerDeployer(role=ROLE, bucket="my-bucket").deploy(artifact, **options)
    assert phrase in str(raised.value) and requests == []


def test_without_boto3_the_import_works_and_sagemaker_gives_the_install_hint():
    code = ("import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
            "import finetune_sdk\n"
            "from finetune_sdk.registry import BACKENDS, DEPLOYERS, resolve\n"
            "for table, what in ((BACKENDS, 'backend'), (DEPLOYERS, 'deployer')):\n"
            "    try:\n"
            "        resolve(table, 'sagemaker', what)\n"
            "    except finetune_sdk.MissingDependencyError as exc:\n"
            "        print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [f"MissingDependencyError the 'sagemaker' {what} needs packages that are not installed (boto3); "
                     "install them with: pip install 'finetune-sdk[sagemaker]'" for what in ("backend", "deployer")]


def test_from_sagemaker_without_boto3_raises_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "botocore.config", None)
    monkeypatch.delitem(sys.modules, "finetune_sdk.predict.sagemaker", raising=False)
    from finetune_sdk import Predictor

    with pytest.raises(MissingDependencyError, match=r"pip install 'finetune-sdk\[sagemaker\]'"):
        Predictor.from_sagemaker("ep", region="us-east-1")


def test_from_sagemaker_without_a_region_says_how_to_give_one(requests, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    from finetune_sdk import Predictor

    with pytest.raises(ConfigError, match="no AWS region for the endpoint 'ep'; pass region= or set AWS_REGION"):
        Predictor.from_sagemaker("ep")
    assert requests == []
