"""SageMaker end to end against a real moto server on 127.0.0.1, with real boto3 clients and a tiny model.

moto accepts the requests and keeps the resources, but it runs no containers: a training job is
Completed at once with no model.tar.gz, and InvokeEndpoint answers whatever was queued through moto's
API. So these tests play the containers' part with the SDK's own code, from what was uploaded:

- training: right after CreateTrainingJob, ``play_training_container`` downloads the job's channels and
  ``sourcedir.tar.gz`` from (moto's) S3 into a temporary ``/opt/ml`` layout, runs the shipped
  ``train_entry.py --spec ...`` with the SM_* variables in a child process whose only SDK is the
  shipped one, packs SM_MODEL_DIR into model.tar.gz and uploads it to the job's ModelArtifacts path.
- inference: just before each InvokeEndpoint, ``InferenceContainer`` downloads the endpoint's
  model.tar.gz, runs its ``code/inference.py`` (model_fn/input_fn/predict_fn/output_fn) in a child
  process on the exact request body, and queues that reply in moto, which InvokeEndpoint then returns.
"""

from __future__ import annotations

import io
import json
import logging
import os
import runpy
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import boto3
import httpx
import pytest
from moto.sagemaker.models import FakeEndpointConfig

from finetune_sdk import CloudError, ConfigError, FineTuner, TrainingSettings
from finetune_sdk.backends.sagemaker import SageMakerBackend
from finetune_sdk.deployers.sagemaker import SageMakerDeployer
from finetune_sdk.sagemaker.images import CONTAINER_REQUIREMENTS
from finetune_sdk.sagemaker.settings import instance_types
from finetune_sdk.sagemaker.tarball import safe_extract
from tests.conftest import COUNSEL
from tests.integration.secret_scan import SECRETS, occurrences, scan_bucket, scan_tree

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/FineTuneSdkSageMaker"
ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """Fake credentials, boto3 pointed at moto, a clean moto state, and no DNS lookup beyond loopback."""
    httpx.post(f"{moto_url}/moto-api/reset")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in SECRETS.items():  # fake, but distinctive: the end-to-end test searches its outputs for them
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("FINETUNE_SDK_SAGEMAKER_ROLE", ROLE)
    monkeypatch.setattr(FakeEndpointConfig, "validate_instance_type", _current_endpoint_instance_types)
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if str(host) not in LOOPBACK:
            lookups.append(str(host))
            raise OSError(f"test guard: DNS lookup of {host!r} beyond loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield moto_url
    assert not lookups, f"the code looked up non-loopback hosts: {lookups}"


def _current_endpoint_instance_types(config, instance_type: str) -> None:
    """moto's list of endpoint instance types predates ml.g5; check botocore's current one instead."""
    from moto.sagemaker.exceptions import ValidationError

    if instance_type not in instance_types("endpoint"):
        raise ValidationError(message=f"Value '{instance_type}' at 'instanceType' is not an instance type")


def _client(name: str):
    return boto3.client(name, region_name=REGION)


def _download_prefix(uri: str, folder: Path) -> None:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = _client("s3")
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
        target = folder / item["Key"][len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, item["Key"], str(target))


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a container process: no source checkout on the path, nothing from the network."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AWS_ENDPOINT_URL")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def play_training_container(job_name: str, opt_ml: Path) -> Path:
    """Do what the SageMaker training container would do for ``job_name``; return SM_MODEL_DIR."""
    job = _client("sagemaker").describe_training_job(TrainingJobName=job_name)
    hps = {key: json.loads(value) for key, value in job["HyperParameters"].items()}
    channels = {}
    for channel in job["InputDataConfig"]:
        folder = opt_ml / "input" / "data" / channel["ChannelName"]
        _download_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"], folder)
        channels[f"SM_CHANNEL_{channel['ChannelName'].upper()}"] = str(folder)
    code = opt_ml / "code"
    code.mkdir(parents=True)
    bucket, _, key = hps["sagemaker_submit_directory"].removeprefix("s3://").partition("/")
    _client("s3").download_file(bucket, key, str(opt_ml / "sourcedir.tar.gz"))
    with tarfile.open(opt_ml / "sourcedir.tar.gz") as tar:
        tar.extractall(code, filter="data")
    model_dir, checkpoints = opt_ml / "model", opt_ml / "checkpoints"
    model_dir.mkdir()
    checkpoints.mkdir()  # CheckpointConfig is set, so SageMaker mounts it
    user_hps = {k: v for k, v in hps.items() if not k.startswith("sagemaker_")}
    argv = [arg for k, v in user_hps.items() for arg in (f"--{k}", str(v))]
    env = _clean_env(SM_MODEL_DIR=str(model_dir), SM_OUTPUT_DATA_DIR=str(opt_ml / "output" / "data"),
                     SM_HPS=json.dumps(user_hps), SM_HOSTS='["algo-1"]', SM_CURRENT_HOST="algo-1", SM_NUM_GPUS="0",
                     FINETUNE_SDK_CHECKPOINT_DIR=str(checkpoints), **channels)
    subprocess.run([sys.executable, hps["sagemaker_program"], *argv], cwd=code, env=env, check=True, timeout=600)
    with tarfile.open(opt_ml / "model.tar.gz", "w:gz") as tar:
        for entry in sorted(model_dir.iterdir()):
            tar.add(entry, arcname=entry.name)
    bucket, _, key = job["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("s3://").partition("/")
    _client("s3").upload_file(str(opt_ml / "model.tar.gz"), bucket, key)
    return model_dir


class InferenceContainer:
    """Answers an endpoint's InvokeEndpoint calls with its own model.tar.gz's code/inference.py."""

    SCRIPT = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1] + "/code")
        import inference
        model = inference.model_fn(sys.argv[1])
        body = sys.stdin.read()
        print(inference.output_fn(inference.predict_fn(inference.input_fn(body, "application/json"), model),
                                  "application/json"))
    """)

    def __init__(self, moto_url: str, endpoint_name: str, folder: Path) -> None:
        sm = _client("sagemaker")
        config = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
        model = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]["ModelName"]
        uri = sm.describe_model(ModelName=model)["PrimaryContainer"]["ModelDataUrl"]
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        _client("s3").download_file(bucket, key, str(folder / "model.tar.gz"))
        self.model_dir = safe_extract(folder / "model.tar.gz", folder / "opt-ml-model")
        self.moto_url = moto_url
        self.replies: list[str] = []
        self.seen: set[bytes] = set()

    def attach(self, predictor) -> None:
        predictor.transport.client.meta.events.register("before-call.sagemaker-runtime.InvokeEndpoint", self.answer)

    def run(self, body: bytes) -> str:
        scratch = self.model_dir.parent / "container-tmp"
        scratch.mkdir(exist_ok=True)
        done = subprocess.run([sys.executable, "-c", self.SCRIPT, str(self.model_dir)], input=body.decode(),
                              capture_output=True, text=True, env=_clean_env(TMPDIR=str(scratch)),
                              cwd=self.model_dir.parent, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not list(scratch.iterdir()), "model_fn left temporary files behind"
        return done.stdout.strip()

    def answer(self, params, **kwargs) -> None:
        body = params["body"]
        if body in self.seen:  # moto replays its first answer for a body it has seen
            return
        self.seen.add(body)
        reply = self.run(body)
        self.replies.append(reply)
        httpx.post(f"{self.moto_url}/moto-api/static/sagemaker/endpoint-results",
                   json={"results": [{"Body": reply, "ContentType": "application/json"}]}).raise_for_status()


@pytest.fixture
def containers(aws, monkeypatch, tmp_path):
    """Play both containers whenever the SDK starts a training job or deploys an endpoint."""
    played: dict[str, list] = {"jobs": [], "endpoints": []}
    create, deploy = SageMakerBackend.create, SageMakerDeployer.deploy

    def create_and_train(self, spec, *, resume=False):
        job = create(self, spec, resume=resume)
        played["jobs"].append(play_training_container(job.id, tmp_path / f"job{len(played['jobs'])}" / "opt" / "ml"))
        return job

    def deploy_and_serve(self, artifact, **options):
        predictor = deploy(self, artifact, **options)
        folder = tmp_path / f"endpoint{len(played['endpoints'])}"
        folder.mkdir()
        container = InferenceContainer(aws, predictor.transport.endpoint_name, folder)
        container.attach(predictor)
        played["endpoints"].append(container)
        return predictor

    monkeypatch.setattr(SageMakerBackend, "create", create_and_train)
    monkeypatch.setattr(SageMakerDeployer, "deploy", deploy_and_serve)
    return played


def _resources() -> dict[str, list[str]]:
    sm = _client("sagemaker")
    return {"endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
            "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]],
            "models": [m["ModelName"] for m in sm.list_models()["Models"]]}


def test_train_deploy_predict_and_teardown(containers, tiny_model_dir, counsel_rows, tmp_path, aws, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "runs" / "tiny"
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:48], COUNSEL, output_dir=out, eval_fraction=0.25,
                      backend="sagemaker", training=TrainingSettings(epochs=1, batch_size=8, progress=False))
    artifact = tuner.train()

    # the request, field by field
    sm = _client("sagemaker")
    job = sm.describe_training_job(TrainingJobName=tuner.job.id)
    bucket = f"sagemaker-{REGION}-{ACCOUNT}"
    root = f"s3://{bucket}/finetune-sdk/{tuner.job.id}"
    assert tuner.job.id.startswith("finetune-sdk-") and len(tuner.job.id) <= 63
    assert job["RoleArn"] == ROLE
    assert job["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
        "2.3.0-transformers4.48.0-gpu-py311-cu121-ubuntu20.04")
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert {k: json.loads(v) for k, v in job["HyperParameters"].items()} == {
        "spec": "finetune_sdk_spec.json", "sagemaker_program": "train_entry.py",
        "sagemaker_submit_directory": f"{root}/source/sourcedir.tar.gz", "sagemaker_region": REGION,
        "sagemaker_container_log_level": 20, "sagemaker_job_name": tuner.job.id}
    assert [(c["ChannelName"], c["DataSource"]["S3DataSource"]["S3Uri"], c["ContentType"])
            for c in job["InputDataConfig"]] == [
        ("train", f"{root}/input/train", "application/jsonlines"),
        ("eval", f"{root}/input/eval", "application/jsonlines"),
        ("model", f"{root}/input/model", "application/octet-stream")]
    assert job["OutputDataConfig"] == {"S3OutputPath": f"{root}/output"}
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert job["EnableManagedSpotTraining"] is False
    assert job["CheckpointConfig"] == {"S3Uri": f"{root}/checkpoints", "LocalPath": "/opt/ml/checkpoints"}
    assert _client("sagemaker").list_tags(ResourceArn=job["TrainingJobArn"])["Tags"] == [
        {"Key": "finetune-sdk", "Value": "training"}]
    keys = {o["Key"] for o in _client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    job_keys = f"finetune-sdk/{tuner.job.id}"
    assert {f"{job_keys}/input/train/train.jsonl", f"{job_keys}/input/eval/eval.jsonl",
            f"{job_keys}/input/model/config.json", f"{job_keys}/source/sourcedir.tar.gz"} <= keys
    with tarfile.open(fileobj=_object(bucket, f"finetune-sdk/{tuner.job.id}/source/sourcedir.tar.gz")) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("requirements.txt").read().decode().split()
    assert {"train_entry.py", "finetune_sdk_spec.json", "requirements.txt", "finetune_sdk/train/program.py",
            "finetune_sdk/train/container.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert requirements == CONTAINER_REQUIREMENTS

    # the artifact came back from S3 in the local layout, pointing at the user's base model
    assert tuner.job.status == "completed" and tuner.job.finished_at
    assert artifact.path == out
    assert {"adapter_config.json", "adapter_model.safetensors", "finetune_sdk.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    assert artifact.base_model == str(tiny_model_dir) and artifact.manifest["base_model"]["source"] == "local"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert artifact.manifest["dataset"]["train_rows"] == 36 and artifact.metrics["steps"] == 5
    assert tuner.job.metrics == artifact.metrics
    assert [e["status"] for e in tuner.job.events()] == ["Starting"]
    assert [j.id for j in tuner.backend.list_jobs()] == [tuner.job.id]

    # deploy, predict through InvokeEndpoint, tear down
    predictor = tuner.deploy(deployer="sagemaker")  # ml.g5.xlarge by default
    endpoint = predictor.transport.endpoint_name
    config = sm.describe_endpoint(EndpointName=endpoint)
    assert config["EndpointStatus"] == "InService"
    variant = sm.describe_endpoint_config(EndpointConfigName=config["EndpointConfigName"])["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.xlarge" and variant["InitialInstanceCount"] == 1
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 720  # 600 s + 120 s per started GB
    container = containers["endpoints"][0]
    assert {"code", "base", "finetune_sdk.json", "adapter_model.safetensors"} <= {
        p.name for p in container.model_dir.iterdir()}
    assert (container.model_dir / "code" / "inference.py").is_file()
    assert (container.model_dir / "code" / "finetune_sdk" / "serve" / "engine.py").is_file()

    answer = predictor.predict("I haven't slept properly since March.", max_new_tokens=8)
    expected = json.loads(container.replies[0])[0]
    assert answer.text == expected["generated_text"]
    assert answer.completion_tokens == expected["details"]["completion_tokens"] > 0
    assert answer.prompt_tokens == expected["details"]["prompt_tokens"] > 10
    assert _resources() == {"endpoints": [endpoint], "configs": [variant["ModelName"]],
                            "models": [variant["ModelName"]]}

    # evaluate() runs unchanged over the endpoint, and scores as the same artifact does in this process
    on_endpoint = tuner.evaluate(predictor, max_new_tokens=4, batch_size=len(tuner.eval_rows), name="endpoint")
    in_process = tuner.evaluate(artifact, max_new_tokens=4, batch_size=len(tuner.eval_rows))
    assert len(container.replies) == 2 and on_endpoint.n == in_process.n == 12
    assert [r.prediction for r in on_endpoint.records] == [r.prediction for r in in_process.records]
    assert on_endpoint.metrics["stop_rate"] == in_process.metrics["stop_rate"] is not None

    # no credential in anything the run produced: files, uploads (inside tarballs too), output, logs
    out_text, err_text = capfd.readouterr()
    produced = {"files": scan_tree(tmp_path), "S3 objects": scan_bucket(_client("s3"), bucket),
                "stdout and stderr, containers included": occurrences((out_text + err_text).encode()),
                "log records": occurrences("\n".join(r.getMessage() for r in caplog.records  # botocore's own DEBUG
                                                      if not r.name.startswith(("botocore", "urllib3"))).encode())}
    assert len(caplog.records) > 0 and err_text and {k: v for k, v in produced.items() if v} == {}

    predictor.close()
    assert _resources() == {"endpoints": [], "configs": [], "models": []}
    keys = {o["Key"] for o in _client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert not [k for k in keys if "/endpoints/" in k]


def _object(bucket: str, key: str):
    import io

    return io.BytesIO(_client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


EXAMPLE = ROOT / "examples" / "sagemaker_train_and_deploy.py"


def test_the_example_runs_locally_and_on_sagemaker_with_one_argument_changed(
        containers, tiny_model_dir, counsel_rows, tmp_path, monkeypatch, capsys):
    source = EXAMPLE.read_text(encoding="utf-8")
    local = source.replace('backend="sagemaker"', 'backend="local"').replace('deployer="sagemaker"', 'deployer="local"')
    changed = [(a.strip(), b.strip()) for a, b in zip(source.splitlines(), local.splitlines()) if a != b]
    assert changed == [('backend="sagemaker",', 'backend="local",'),
                       ('with tuner.deploy(deployer="sagemaker") as predictor:',
                        'with tuner.deploy(deployer="local") as predictor:')]
    (tmp_path / "local_example.py").write_text(local, encoding="utf-8")
    data = tmp_path / "counsel.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in counsel_rows[:40]), encoding="utf-8")

    printed = {}
    for name, script in (("local", tmp_path / "local_example.py"), ("sagemaker", EXAMPLE)):
        monkeypatch.setattr(sys, "argv", [str(script), str(tiny_model_dir), str(data), str(tmp_path / name)])
        runpy.run_path(str(script), run_name="__main__")
        printed[name] = capsys.readouterr().out.splitlines()

    steps = {name: json.loads((tmp_path / name / "finetune_sdk.json").read_text())["metrics"]["steps"]
             for name in printed}
    assert steps["local"] == steps["sagemaker"] > 0
    summary = printed["sagemaker"][0]
    assert summary.startswith("job finetune-sdk-tiny-llama") and " completed: eval_loss=" in summary
    container = containers["endpoints"][0]
    replies = [json.loads(reply)[0]["generated_text"] for reply in container.replies]
    assert printed["sagemaker"][2::2] == [f"  -> {reply}" for reply in replies] and len(replies) == 2
    assert printed["local"][1::2] == printed["sagemaker"][1::2]  # the same questions were asked
    assert _resources() == {"endpoints": [], "configs": [], "models": []}


def test_a_two_instance_job_asks_for_torch_distributed(aws, tiny_model_dir, counsel_rows, tmp_path):
    """The request for two instances; what the two containers then do is tested in test_ddp.py."""
    backend = SageMakerBackend(instance_count=2, instance_type="ml.g5.12xlarge")
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=tmp_path / "out", backend=backend)
    tuner.train(wait=False)
    job_id = tuner.job.id
    job = _client("sagemaker").describe_training_job(TrainingJobName=job_id)
    root = f"s3://sagemaker-{REGION}-{ACCOUNT}/finetune-sdk/{job_id}"
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100}
    assert {k: json.loads(v) for k, v in job["HyperParameters"].items()} == {
        "spec": "finetune_sdk_spec.json", "sagemaker_program": "train_entry.py",
        "sagemaker_submit_directory": f"{root}/source/sourcedir.tar.gz", "sagemaker_region": REGION,
        "sagemaker_container_log_level": 20, "sagemaker_job_name": job_id,
        "sagemaker_torch_distributed_enabled": True, "sagemaker_instance_type": "ml.g5.12xlarge"}
    assert [c["DataSource"]["S3DataSource"]["S3DataDistributionType"] for c in job["InputDataConfig"]] == [
        "FullyReplicated"] * 3  # every instance gets all the data; each process trains on its share of a step
    assert job["CheckpointConfig"] == {"S3Uri": f"{root}/checkpoints", "LocalPath": "/opt/ml/checkpoints"}


def test_a_relative_model_path_goes_into_the_job_as_its_folder(aws, tiny_model_dir, counsel_rows, tmp_path,
                                                                monkeypatch):
    """The container records the spec's model as the artifact's base: "models/tiny" would read as a Hub id
    wherever the user later loads the artifact from, so the spec carries the folder itself."""
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    tuner = FineTuner("models/tiny", counsel_rows[:16], COUNSEL, output_dir="out", backend=SageMakerBackend())
    tuner.train(wait=False)
    source = _client("s3").get_object(Bucket=f"sagemaker-{REGION}-{ACCOUNT}",
                                      Key=f"finetune-sdk/{tuner.job.id}/source/sourcedir.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(source)) as tar:
        spec = json.loads(tar.extractfile("finetune_sdk_spec.json").read())
    assert spec["model"] == str((tmp_path / "models" / "tiny").resolve())


def test_logs_are_read_from_cloudwatch_once_the_container_writes_them(aws):
    backend = SageMakerBackend()
    assert backend.logs("finetune-sdk-job") == []  # no log group before any container has started
    logs = _client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="finetune-sdk-job/algo-1-1700")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="other-job/algo-1-1700")
    for stream, message in (("finetune-sdk-job/algo-1-1700", "finetune_sdk: training Qwen on 1 GPU(s)"),
                            ("other-job/algo-1-1700", "not ours")):
        logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream,
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": message}])
    assert backend.logs("finetune-sdk-job") == ["finetune_sdk: training Qwen on 1 GPU(s)"]


def test_follow_logs_yields_lines_until_the_job_has_ended(aws):
    from botocore.stub import Stubber

    backend = SageMakerBackend()
    logs = _client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="finetune-sdk-job/algo-1-1")

    def write(message: str) -> None:
        logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="finetune-sdk-job/algo-1-1",
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": message}])

    write("loading the model")
    base = {"TrainingJobName": "finetune-sdk-job", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/j",
            "AlgorithmSpecification": {"TrainingInputMode": "File"}, "ModelArtifacts": {"S3ModelArtifacts": "s3://b/k"},
            "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 60}, "CreationTime": "2026-01-01T00:00:00Z"}
    with Stubber(backend.clients.client("sagemaker")) as sm:  # moto completes jobs at once: script the states
        for status in ("InProgress", "InProgress", "Completed"):
            sm.add_response("describe_training_job",
                            {**base, "TrainingJobStatus": status, "SecondaryStatus": "Training"})
        lines = backend.follow_logs("finetune-sdk-job", poll=5, sleep=lambda s: write(f"slept {s}"))
        assert list(lines) == ["loading the model", "slept 5", "slept 5"]


def test_follow_logs_reads_each_instance_stream_from_where_it_left_off(aws):
    from botocore.stub import Stubber

    backend = SageMakerBackend()
    logs = _client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    logs.create_log_group(logGroupName=group)
    for host in ("algo-1", "algo-2"):
        logs.create_log_stream(logGroupName=group, logStreamName=f"finetune-sdk-job/{host}-1")

    def write(host: str, message: str) -> None:
        logs.put_log_events(logGroupName=group, logStreamName=f"finetune-sdk-job/{host}-1",
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": message}])

    write("algo-1", "algo-1 started")
    write("algo-2", "algo-2 started")
    steps = iter([lambda: write("algo-1", "algo-1 step 1"), lambda: (write("algo-2", "algo-2 step 1"),
                                                                     write("algo-1", "algo-1 step 2"))])
    base = {"TrainingJobName": "finetune-sdk-job", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/j",
            "AlgorithmSpecification": {"TrainingInputMode": "File"}, "ModelArtifacts": {"S3ModelArtifacts": "s3://b/k"},
            "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 60}, "CreationTime": "2026-01-01T00:00:00Z"}
    with Stubber(backend.clients.client("sagemaker")) as sm:
        for status in ("InProgress", "InProgress", "Completed"):
            sm.add_response("describe_training_job",
                            {**base, "TrainingJobStatus": status, "SecondaryStatus": "Training"})
        lines = list(backend.follow_logs("finetune-sdk-job", poll=5, sleep=lambda s: next(steps)()))
    assert lines == ["algo-1 started", "algo-2 started", "algo-1 step 1", "algo-1 step 2", "algo-2 step 1"]


def test_attach_downloads_a_job_started_elsewhere_into_the_tuners_output_dir(aws, counsel_rows, tmp_path):
    from finetune_sdk.artifact import write_manifest

    s3, sm = _client("s3"), _client("sagemaker")
    s3.create_bucket(Bucket="team-bucket")
    sm.create_training_job(  # by a colleague, or by this code in an earlier Python session
        TrainingJobName="finetune-sdk-elsewhere", RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "image", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://team-bucket/out"}, StoppingCondition={"MaxRuntimeInSeconds": 60},
        ResourceConfig={"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 1})
    trained = tmp_path / "trained"
    trained.mkdir()
    write_manifest(trained, {"base_model": {"name": "smollm2-135m-instruct", "source": "embedded"},
                             "template": COUNSEL.to_dict()})
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        tar.add(trained / "finetune_sdk.json", arcname="finetune_sdk.json")
    uri = sm.describe_training_job(TrainingJobName="finetune-sdk-elsewhere")["ModelArtifacts"]["S3ModelArtifacts"]
    s3.upload_file(str(tmp_path / "model.tar.gz"), "team-bucket", uri.removeprefix("s3://team-bucket/"))

    out = tmp_path / "runs" / "attached"
    tuner = FineTuner("smollm2-135m-instruct", counsel_rows[:16], COUNSEL, output_dir=out, backend="sagemaker")
    tuner.attach("finetune-sdk-elsewhere").wait()
    assert tuner.job.output_dir == str(out) and tuner.artifact.path == out
    assert tuner.artifact.manifest["base_model"]["name"] == "smollm2-135m-instruct"


def test_a_fresh_run_refuses_a_checkpoint_prefix_that_holds_checkpoints(aws, tiny_model_dir, counsel_rows, tmp_path):
    s3 = _client("s3")
    s3.create_bucket(Bucket="team-bucket")
    s3.put_object(Bucket="team-bucket", Key="ckpt/step-000050/state.json", Body=b"{}")
    backend = SageMakerBackend(bucket="team-bucket", checkpoint_s3_uri="s3://team-bucket/ckpt")
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=tmp_path / "out", backend=backend)
    with pytest.raises(ConfigError, match="s3://team-bucket/ckpt already holds checkpoints; pass resume=True"):
        tuner.train()
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="team-bucket")["Contents"]] == ["ckpt/step-000050/state.json"]
    assert _client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_a_rejected_request_leaves_no_uploads(aws, tiny_model_dir, counsel_rows, tmp_path):
    """The inputs go up to (moto's) S3 for real; CreateTrainingJob is refused; the uploads are deleted again."""
    from botocore.stub import Stubber

    _client("s3").create_bucket(Bucket="team-bucket")
    backend = SageMakerBackend(bucket="team-bucket")
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:16], COUNSEL, output_dir=tmp_path / "out", backend=backend)
    uploads = []
    backend.clients.client("s3").meta.events.register("after-call.s3.PutObject", lambda **kw: uploads.append(1))
    with Stubber(backend.clients.client("sagemaker")) as sm:
        sm.add_client_error("create_training_job", "ResourceLimitExceeded",
                            "The account-level service limit 'ml.g5.2xlarge for training job usage' is 0 Instances")
        with pytest.raises(CloudError, match="hit an account quota: The account-level service limit"):
            tuner.train()
    assert len(uploads) >= 4  # train, eval, model files, sourcedir
    assert "Contents" not in _client("s3").list_objects_v2(Bucket="team-bucket")


def test_a_serverless_endpoint_and_its_teardown(aws, tmp_path):
    from finetune_sdk.artifact import write_manifest

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "adapter_config.json").write_text("{}")
    write_manifest(artifact, {"base_model": {"name": "Qwen/Qwen2.5-0.5B-Instruct", "source": "hub"},
                              "template": COUNSEL.to_dict()})
    deployer = SageMakerDeployer(tags={"team": "care"})
    with deployer.deploy(artifact, serverless={"memory_mb": 4096, "max_concurrency": 2}, poll_s=1) as predictor:
        sm = _client("sagemaker")
        endpoint = sm.describe_endpoint(EndpointName=predictor.transport.endpoint_name)
        config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        variant = config["ProductionVariants"][0]
        assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 2}
        assert "InstanceType" not in variant and "ContainerStartupHealthCheckTimeoutInSeconds" not in variant
        model = sm.describe_model(ModelName=variant["ModelName"])
        assert model["PrimaryContainer"]["Image"] == (
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.3.0-transformers4.48.0-"
            "gpu-py311-cu121-ubuntu22.04")
        assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"
        assert {"Key": "team", "Value": "care"} in sm.list_tags(ResourceArn=endpoint["EndpointArn"])["Tags"]
    assert _resources() == {"endpoints": [], "configs": [], "models": []}


def test_a_tgi_endpoint_serves_the_merged_model(aws, tiny_model_dir, counsel_rows, tmp_path):
    """container="tgi": the request field by field, model.tar.gz a plain model folder that reproduces base +
    adapter, and the Predictor sending TGI's payload (moto returns a queued TGI answer; no TGI runs here)."""
    from transformers import AutoModelForCausalLM

    from finetune_sdk.artifact import Artifact
    from finetune_sdk.backends.local import LocalBackend
    from finetune_sdk.merge import verify_merge

    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:24], COUNSEL, output_dir=tmp_path / "out", max_length=256,
                      eval_fraction=0.25, backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=2, batch_size=8, learning_rate=1e-2, progress=False))
    artifact = tuner.train()
    predictor = SageMakerDeployer().deploy(artifact, container="tgi", instance_type="ml.g5.12xlarge", poll_s=1,
                                           environment={"SM_NUM_GPUS": "4"})
    sm = _client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName=predictor.transport.inner.endpoint_name)
    variant = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])["ProductionVariants"][0]
    model = sm.describe_model(ModelName=variant["ModelName"])
    bucket = f"sagemaker-{REGION}-{ACCOUNT}"
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:"
        "2.4.0-tgi3.0.1-gpu-py311-cu124-ubuntu22.04-v2.1")
    assert model["PrimaryContainer"]["ModelDataUrl"] == (
        f"s3://{bucket}/finetune-sdk/endpoints/{variant['ModelName']}/model.tar.gz")
    assert model["PrimaryContainer"]["Environment"] == {
        "HF_MODEL_ID": "/opt/ml/model", "SM_NUM_GPUS": "4", "MAX_INPUT_TOKENS": "256", "MAX_TOTAL_TOKENS": "1280"}
    assert variant["InstanceType"] == "ml.g5.12xlarge" and variant["InitialInstanceCount"] == 1

    archive = tmp_path / "model.tar.gz"
    _client("s3").download_file(bucket, f"finetune-sdk/endpoints/{variant['ModelName']}/model.tar.gz", str(archive))
    served = safe_extract(archive, tmp_path / "opt-ml-model")
    names = {p.name for p in served.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "finetune_sdk.json"} <= names and not names & {"adapter_config.json", "code", "base", "merged"}
    check = verify_merge(artifact, AutoModelForCausalLM.from_pretrained(served), ["I keep waking up at 4am."])
    assert check.passed and check.max_logit_diff < 1e-4, check.describe()
    assert Artifact.load(artifact.path).manifest["merge"]["prompts"] == 6  # deploy merged it, checked on the eval rows

    sent = []
    predictor.transport.inner.client.meta.events.register(
        "before-parameter-build.sagemaker-runtime.InvokeEndpoint", lambda params, **kw: sent.append(params["Body"]))
    reply = [{"generated_text": "This sounds like anxiety.", "details": {"finish_reason": "eos_token",
                                                                         "generated_tokens": 6}}]
    httpx.post(f"{aws}/moto-api/static/sagemaker/endpoint-results",
               json={"results": [{"Body": json.dumps(reply), "ContentType": "application/json"}]}).raise_for_status()
    answer = predictor.predict("I keep waking up at 4am.", max_new_tokens=16)
    assert (answer.text, answer.finish_reason, answer.completion_tokens) == ("This sounds like anxiety.", "stop", 6)
    body = json.loads(sent[0])
    assert body["inputs"].endswith("<|im_start|>user\nI keep waking up at 4am.<|im_end|>\n<|im_start|>assistant\n")
    assert body["parameters"] == {"max_new_tokens": 16, "stop": ["<|im_end|>"], "details": True,
                                  "return_full_text": False}
    predictor.close()
    assert _resources() == {"endpoints": [], "configs": [], "models": []}
