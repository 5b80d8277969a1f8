"""What moto cannot show, through botocore's Stubber on the SDK's own code paths: jobs in progress,
failed and stopped jobs, throttling, endpoints that never come up, endpoint updates, model errors."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from finetune_sdk import (BadRequest, CloudError, ConfigError, EndpointError, EndpointTimeout, FineTuner, ModelError,
                          Predictor, RateLimited, TrainingError)
from finetune_sdk.artifact import write_manifest
from finetune_sdk.backends.base import TrainingJob
from finetune_sdk.backends.sagemaker import SageMakerBackend
from finetune_sdk.deployers.sagemaker import SageMakerDeployer
from finetune_sdk.predict.sagemaker import SageMakerTransport
from tests.conftest import COUNSEL

ROLE = "arn:aws:iam::123456789012:role/FineTuneSdkSageMaker"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _described(status: str, secondary: str, **extra) -> dict:
    return {"TrainingJobName": "finetune-sdk-job", "TrainingJobArn": f"{ARN}:training-job/x",
            "TrainingJobStatus": status, "SecondaryStatus": secondary, "CreationTime": T0,
            "AlgorithmSpecification": {"TrainingInputMode": "File"}, "ResourceConfig": {
                "InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "ModelArtifacts": {"S3ModelArtifacts": "s3://b/k"},
            **extra}


def _job_stub(statuses: list[dict]):
    backend = SageMakerBackend(region="us-east-1", role=ROLE)
    client = backend.clients.client("sagemaker")
    stub = Stubber(client)
    for described in statuses:
        stub.add_response("describe_training_job", described, {"TrainingJobName": "finetune-sdk-job"})
    return backend, stub


def test_wait_polls_a_job_in_progress_until_it_completes():
    backend, stub = _job_stub([
        _described("InProgress", "Downloading"),
        _described("InProgress", "Training", TrainingStartTime=T0),
        _described("Completed", "Completed", TrainingStartTime=T0, TrainingEndTime=T0,
                   SecondaryStatusTransitions=[{"Status": "Starting", "StartTime": T0, "StatusMessage": "Preparing"},
                                               {"Status": "Training", "StartTime": T0, "StatusMessage": "Training"}])])
    seen, sleeps = [], []
    job = TrainingJob("finetune-sdk-job", backend)
    with stub:
        seen.append(backend.retrieve(job.id).status)
        seen.append(backend.retrieve(job.id).status)
        job.wait(poll=30, sleep=sleeps.append)
    assert seen == ["queued", "running"] and sleeps == []
    assert job.status == "completed" and job.started_at == job.finished_at == "2026-01-02T03:04:05+00:00"
    assert job.output_dir == ""  # a job this backend did not start is not downloaded on its own
    stub.assert_no_pending_responses()


def test_wait_sleeps_between_polls():
    backend, stub = _job_stub([_described("InProgress", "Starting"), _described("InProgress", "Training"),
                               _described("Completed", "Completed")])
    sleeps = []
    with stub:
        TrainingJob("finetune-sdk-job", backend).wait(poll=30, sleep=sleeps.append)
    assert sleeps == [30, 30]


def test_a_failed_job_raises_with_its_failure_reason():
    backend, stub = _job_stub([_described("InProgress", "Training"), _described(
        "Failed", "Failed", FailureReason="AlgorithmError: CUDA out of memory. Tried to allocate 2.00 GiB")])
    job = TrainingJob("finetune-sdk-job", backend)
    with stub, pytest.raises(TrainingError, match="failed: AlgorithmError: CUDA out of memory"):
        job.wait(poll=1, sleep=lambda s: None)
    assert job.status == "failed"


def test_cancel_stops_the_job():
    backend, stub = _job_stub([])
    stub.add_response("stop_training_job", {}, {"TrainingJobName": "finetune-sdk-job"})
    stub.add_response("describe_training_job", _described("Stopped", "Stopped"),
                      {"TrainingJobName": "finetune-sdk-job"})
    job = TrainingJob("finetune-sdk-job", backend, status="running")
    with stub:
        job.cancel()
    assert job.status == "cancelled" and job.error == "Stopped"
    with pytest.raises(TrainingError, match="cancelled"):
        with Stubber(backend.clients.client("sagemaker")) as again:
            again.add_response("describe_training_job", _described("Stopped", "Stopped"),
                               {"TrainingJobName": "finetune-sdk-job"})
            job.wait(sleep=lambda s: None)


def test_list_jobs_pages_through_list_training_jobs():
    backend, stub = _job_stub([])
    summary = {"TrainingJobArn": f"{ARN}:training-job/x", "CreationTime": T0}
    stub.add_response("list_training_jobs", {"TrainingJobSummaries": [
        {**summary, "TrainingJobName": "finetune-sdk-b", "TrainingJobStatus": "InProgress",
         "SecondaryStatus": "Training"}],
        "NextToken": "page2"}, {"NameContains": "finetune-sdk", "SortBy": "CreationTime", "SortOrder": "Descending"})
    stub.add_response("list_training_jobs", {"TrainingJobSummaries": [
        {**summary, "TrainingJobName": "finetune-sdk-a", "TrainingJobStatus": "Failed", "TrainingEndTime": T0}]},
        {"NameContains": "finetune-sdk", "SortBy": "CreationTime", "SortOrder": "Descending", "NextToken": "page2"})
    with stub:
        jobs = backend.list_jobs()
    assert [(j.id, j.status, j.created_at) for j in jobs] == [
        ("finetune-sdk-b", "running", "2026-01-02T03:04:05+00:00"),
        ("finetune-sdk-a", "failed", "2026-01-02T03:04:05+00:00")]


def test_a_tuner_lists_its_sagemaker_jobs(tmp_path):
    backend, stub = _job_stub([])
    tuner = FineTuner("smollm2-135m-instruct", [{"questionText": f"q{i}", "topic": "sleep"} for i in range(4)],
                      COUNSEL, output_dir=tmp_path / "runs" / "out", backend=backend)
    stub.add_response("list_training_jobs", {"TrainingJobSummaries": [{
        "TrainingJobArn": f"{ARN}:training-job/x", "CreationTime": T0, "TrainingJobName": "finetune-sdk-a",
        "TrainingJobStatus": "Completed"}]},
        {"NameContains": "finetune-sdk", "SortBy": "CreationTime", "SortOrder": "Descending"})
    with stub:
        jobs = tuner.jobs()
    assert [(j.id, j.status) for j in jobs] == [("finetune-sdk-a", "completed")]


# -- invoking an endpoint -------------------------------------------------------------------------
def _runtime(max_retries: int = 3):
    import boto3

    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    sleeps: list[float] = []
    transport = SageMakerTransport("ep", client=client, max_retries=max_retries, sleep=sleeps.append)
    return Predictor(transport), Stubber(client), sleeps


def _reply(items: list[dict]) -> dict:
    raw = json.dumps(items).encode()
    return {"Body": StreamingBody(io.BytesIO(raw), len(raw)), "ContentType": "application/json"}


INVOKE = {"EndpointName": "ep", "ContentType": "application/json", "Accept": "application/json", "Body": ANY}


def test_an_unknown_aws_profile_is_a_config_error_saying_what_to_set(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(ConfigError, match="no-such-profile.*set AWS_PROFILE to a profile"):
        Predictor.from_sagemaker("ep", region="us-east-1")


def test_throttling_and_a_model_not_ready_are_retried_with_backoff():
    predictor, stub, sleeps = _runtime()
    stub.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded", 400, expected_params=INVOKE)
    stub.add_client_error("invoke_endpoint", "ModelNotReadyException", "Model is loading", 429, expected_params=INVOKE)
    stub.add_response("invoke_endpoint", _reply([{"generated_text": "sleep-improvement",
                                                  "details": {"finish_reason": "stop", "completion_tokens": 3}}]),
                      INVOKE)
    with stub:
        answer = predictor.predict("I can't sleep", max_new_tokens=8)
    assert answer.text == "sleep-improvement" and answer.completion_tokens == 3
    assert len(sleeps) == 2 and 0.3 < sleeps[0] <= 0.5 and 0.7 < sleeps[1] <= 1.0
    stub.assert_no_pending_responses()


def test_throttling_that_never_stops_raises_rate_limited():
    predictor, stub, sleeps = _runtime(max_retries=2)
    for _ in range(3):
        stub.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded", 400, expected_params=INVOKE)
    with stub, pytest.raises(RateLimited, match="throttling"):
        predictor.predict("hi")
    assert len(sleeps) == 2


@pytest.mark.parametrize("original, error", [(400, BadRequest), (500, EndpointError)])
def test_model_error_is_typed_and_not_retried(original, error):
    predictor, stub, sleeps = _runtime()
    stub.add_client_error("invoke_endpoint", "ModelError", "Received client error from model", 424,
                          expected_params=INVOKE, modeled_fields={
                              "OriginalStatusCode": original, "OriginalMessage": "max_new_tokens must be >= 1",
                              "LogStreamArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/"
                                              "Endpoints/ep"})
    with stub, pytest.raises(error, match="max_new_tokens must be >= 1; its logs are in arn:aws:logs") as raised:
        predictor.predict("hi")
    assert type(raised.value) is error and raised.value.status == original and sleeps == []


def test_a_delete_on_close_that_failed_is_tried_again_by_the_next_close():
    attempts = []

    def delete() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise CloudError("delete the endpoint ep failed (ThrottlingException): Rate exceeded",
                             code="ThrottlingException")

    predictor = Predictor(SageMakerTransport("ep", client=object(), on_close=delete))
    with pytest.raises(CloudError, match="Rate exceeded"):
        predictor.close()
    predictor.close()
    predictor.close()
    assert len(attempts) == 2  # once failed, once deleted, then nothing left to do


# -- endpoints ------------------------------------------------------------------------------------
@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "artifact"
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    write_manifest(path, {"base_model": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "source": "hub"},
                          "template": COUNSEL.to_dict()})
    return path


def _deployer_stubs():
    deployer = SageMakerDeployer(region="us-east-1", role=ROLE, bucket="my-bucket")
    return deployer, Stubber(deployer.clients.client("sagemaker")), Stubber(deployer.clients.client("s3"))


def _expect_model_and_config(sm: Stubber, s3: Stubber) -> None:
    s3.add_response("put_object", {}, {"Bucket": "my-bucket", "Key": ANY, "Body": ANY, "ChecksumAlgorithm": ANY})
    sm.add_response("create_model", {"ModelArn": f"{ARN}:model/m"},
                    {"ModelName": ANY, "ExecutionRoleArn": ROLE, "Tags": ANY, "PrimaryContainer": ANY})
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:x/c"},
                    {"EndpointConfigName": ANY, "Tags": ANY, "ProductionVariants": ANY})


def _expect_config_deleted(sm: Stubber, s3: Stubber, config: str = ANY) -> None:
    sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": "c", "EndpointConfigArn": f"{ARN}:x/c",
        "CreationTime": T0, "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m1"}]},
        {"EndpointConfigName": config})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": config})
    sm.add_response("describe_model", {"ModelName": "m1", "ModelArn": f"{ARN}:model/m1",
                                       "CreationTime": T0, "PrimaryContainer": {
                                           "ModelDataUrl": "s3://my-bucket/finetune-sdk/endpoints/m1/model.tar.gz"}},
                    {"ModelName": "m1"})
    sm.add_response("delete_model", {}, {"ModelName": "m1"})
    s3.add_response("list_objects_v2", {"KeyCount": 1, "Contents": [{"Key": "finetune-sdk/endpoints/m1/model.tar.gz"}]},
                    {"Bucket": "my-bucket", "Prefix": "finetune-sdk/endpoints/m1/model.tar.gz"})
    s3.add_response("delete_objects", {}, {"Bucket": "my-bucket", "Delete": {
        "Objects": [{"Key": "finetune-sdk/endpoints/m1/model.tar.gz"}]}})


def _endpoint(status: str, **extra) -> dict:
    return {"EndpointName": "ep", "EndpointArn": f"{ARN}:endpoint/ep",
            "EndpointConfigName": "c", "EndpointStatus": status, "CreationTime": T0, "LastModifiedTime": T0, **extra}


def test_an_endpoint_that_never_comes_up_times_out_and_is_deleted(artifact):
    deployer, sm, s3 = _deployer_stubs()
    _expect_model_and_config(sm, s3)
    sm.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/ep"},
                    {"EndpointName": "ep", "EndpointConfigName": ANY, "Tags": ANY})
    for _ in range(4):  # at 0, 10, 20 and 30 s
        sm.add_response("describe_endpoint", _endpoint("Creating"), {"EndpointName": "ep"})
    sm.add_response("delete_endpoint", {}, {"EndpointName": "ep"})
    _expect_config_deleted(sm, s3)
    sleeps = []
    with sm, s3, pytest.raises(EndpointTimeout, match="still Creating after 30s; raise wait_timeout_s="):
        deployer.deploy(artifact, endpoint_name="ep", wait_timeout_s=30, poll_s=10, sleep=sleeps.append)
    assert sleeps == [10, 10, 10]
    sm.assert_no_pending_responses()
    s3.assert_no_pending_responses()


def test_a_failed_endpoint_raises_its_reason_and_is_deleted(artifact):
    deployer, sm, s3 = _deployer_stubs()
    _expect_model_and_config(sm, s3)
    sm.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/ep"},
                    {"EndpointName": "ep", "EndpointConfigName": ANY, "Tags": ANY})
    sm.add_response("describe_endpoint", _endpoint("Failed", FailureReason="The primary container did not pass the "
                                                   "ping health check"), {"EndpointName": "ep"})
    sm.add_response("delete_endpoint", {}, {"EndpointName": "ep"})
    _expect_config_deleted(sm, s3)
    with sm, s3, pytest.raises(EndpointError, match="is Failed: The primary container did not pass the ping"):
        deployer.deploy(artifact, endpoint_name="ep", sleep=lambda s: None)
    sm.assert_no_pending_responses()


def _update_stubs() -> tuple:
    """A deployer whose endpoint "ep" serves "old-config", expecting a new model, config and UpdateEndpoint."""
    deployer, sm, s3 = _deployer_stubs()
    sm.add_response("describe_endpoint", _endpoint("InService", EndpointConfigName="old-config"),
                    {"EndpointName": "ep"})
    _expect_model_and_config(sm, s3)
    sm.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/ep"},
                    {"EndpointName": "ep", "EndpointConfigName": ANY})
    return deployer, sm, s3


def test_update_serves_a_new_config_and_deletes_the_old_one(artifact):
    deployer, sm, s3 = _update_stubs()
    sm.add_response("describe_endpoint", _endpoint("Updating"), {"EndpointName": "ep"})
    sm.add_response("describe_endpoint", _endpoint("InService"), {"EndpointName": "ep"})
    _expect_config_deleted(sm, s3, "old-config")
    sleeps = []
    with sm, s3:
        deployer.update("ep", artifact, instance_type="ml.g5.2xlarge", poll_s=5, sleep=sleeps.append)
    assert sleeps == [5]
    sm.assert_no_pending_responses()
    s3.assert_no_pending_responses()


def test_a_failed_update_raises_and_keeps_the_config_the_endpoint_still_serves(artifact):
    deployer, sm, s3 = _update_stubs()
    sm.add_response("describe_endpoint", _endpoint("Updating", EndpointConfigName="old-config"),
                    {"EndpointName": "ep"})
    # SageMaker rolls a failed update back: InService again, on the old config, with the reason
    sm.add_response("describe_endpoint", _endpoint("InService", EndpointConfigName="old-config",
                                                   FailureReason="the new container failed its ping health check"),
                    {"EndpointName": "ep"})
    deleted = []
    sm.client.meta.events.register("before-parameter-build.sagemaker.DeleteEndpointConfig",
                                   lambda params, **kw: deleted.append(params["EndpointConfigName"]))
    _expect_config_deleted(sm, s3)  # the new config and model, nothing else
    with sm, s3, pytest.raises(EndpointError, match="still serves old-config: the new container failed its ping"):
        deployer.update("ep", artifact, poll_s=5, sleep=lambda s: None)
    sm.assert_no_pending_responses()
    assert len(deleted) == 1 and deleted[0] != "old-config"


def test_an_endpoint_name_in_use_is_refused_and_that_endpoint_is_left_alone(artifact):
    deployer, sm, s3 = _deployer_stubs()
    _expect_model_and_config(sm, s3)
    sm.add_client_error("create_endpoint", "ValidationException", 'Cannot create already existing endpoint "ep".',
                        400, expected_params={"EndpointName": "ep", "EndpointConfigName": ANY, "Tags": ANY})
    _expect_config_deleted(sm, s3)  # the config and model just created are ours
    calls = []
    sm.client.meta.events.register("before-parameter-build.sagemaker", lambda model, **kw: calls.append(model.name))
    with sm, s3, pytest.raises(ConfigError, match="Cannot create already existing endpoint"):
        deployer.deploy(artifact, endpoint_name="ep")
    sm.assert_no_pending_responses()
    assert "DeleteEndpoint" not in calls and calls[-1] == "DeleteModel"


@pytest.mark.parametrize("merged, options, error, message", [
    (False, {"max_retries": -1}, ConfigError, "max_retries=-1"),
    (True, {"container": "tgi"}, ModelError, "could not load the model in")])
def test_what_the_predictor_needs_is_checked_before_anything_is_created(artifact, merged, options, error, message):
    """A Predictor that cannot be built must fail before CreateModel, not leave an InService endpoint billing."""
    if merged:  # TGI serves merged/; with no tokenizer next to the artifact the prompts cannot be rendered
        (artifact / "merged").mkdir()
        (artifact / "merged" / "config.json").write_text("{}")
    deployer, sm, s3 = _deployer_stubs()
    _expect_model_and_config(sm, s3)
    sm.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/ep"},
                    {"EndpointName": "ep", "EndpointConfigName": ANY, "Tags": ANY})
    sm.add_response("describe_endpoint", _endpoint("InService"), {"EndpointName": "ep"})
    calls = []
    for client in (sm.client, s3.client):
        client.meta.events.register("before-parameter-build", lambda model, **kw: calls.append(model.name))
    with sm, s3, pytest.raises(error, match=message):
        deployer.deploy(artifact, endpoint_name="ep", sleep=lambda s: None, **options)
    assert calls == []
