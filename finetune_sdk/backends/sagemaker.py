"""Train on AWS SageMaker with the SDK's one training program, in a Hugging Face training container.

``create`` uploads the data as JSONL channels (and a local or embedded base model as a ``model``
channel), packs the SDK's source, an entry script, ``requirements.txt`` and the job spec into
``sourcedir.tar.gz``, and calls CreateTrainingJob in script mode. When a job this backend started
completes, the first ``retrieve`` downloads its ``model.tar.gz`` and unpacks it (safely) into the
spec's ``output_dir``: the same artifact directory the local backend writes.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from ..artifact import MANIFEST, Artifact
from ..errors import ArtifactError, ConfigError
from ..models import check_model_name, resolve_model
from ..sagemaker.clients import AwsClients, aws_errors
from ..sagemaker.images import CONTAINER_REQUIREMENTS, TRAINING_IMAGE, image_uri
from ..sagemaker.settings import SageMakerSettings, unique_name
from ..sagemaker.tarball import pack, safe_extract, sdk_source
from ..spec import JobSpec
from .base import TrainingJob

JOB_PREFIX = "finetune-sdk"
ENTRY_FILE = "train_entry.py"
SPEC_FILE = "finetune_sdk_spec.json"
CHECKPOINT_PATH = "/opt/ml/checkpoints"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
ENDED = {"Completed", "Failed", "Stopped"}
STATUS = {"Completed": "completed", "Failed": "failed", "Stopped": "cancelled", "Stopping": "running"}
WAITING = {"Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack", "Downloading",
           "DownloadingTrainingImage", "Restarting"}


class SageMakerBackend:
    """Runs jobs as SageMaker training jobs. Settings come from the arguments, then the environment."""

    def __init__(self, settings: SageMakerSettings | None = None, **given: Any) -> None:
        self.settings = settings or SageMakerSettings.from_env(**given)
        self._clients: AwsClients | None = None
        self._outputs: dict[str, str] = {}
        self._downloaded: set[str] = set()

    @property
    def clients(self) -> AwsClients:
        if self._clients is None:
            self._clients = AwsClients(self.settings)
        return self._clients

    def create(self, spec: JobSpec, *, resume: bool = False) -> TrainingJob:
        """Upload the inputs and start a training job; every setting is checked before the first upload."""
        s = self.settings
        role = s.require_role()
        clients = self.clients
        clients.check_credentials()
        image = s.image_uri or image_uri(TRAINING_IMAGE, clients.region)
        model_dir = _local_model_dir(spec)
        if model_dir is not None and check_model_name(spec.model) == "local":
            # the artifact records the folder itself: "models/tiny" would read as a Hub id from any other directory
            spec = spec.model_copy(update={"model": str(model_dir)})
        if resume and not s.checkpoint_s3_uri:
            raise ConfigError("resume=True on SageMaker needs checkpoint_s3_uri= (the one the earlier job used)")
        if not resume and s.checkpoint_s3_uri and clients.has_objects(s.checkpoint_s3_uri):
            raise ConfigError(f"{s.checkpoint_s3_uri} already holds checkpoints; pass resume=True to continue "
                              "from them, or choose an empty checkpoint_s3_uri")
        bucket = s.bucket or clients.default_bucket()
        name = unique_name(Path(spec.model).name)
        root = f"{s.prefix}/{name}" if s.prefix else name
        try:
            with tempfile.TemporaryDirectory(prefix="finetune-sdk-upload-") as tmp:
                channels = self._upload_inputs(spec, model_dir, bucket, f"{root}/input")
                sourcedir = clients.upload(pack_sourcedir(spec, Path(tmp)), bucket, f"{root}/source/sourcedir.tar.gz")
            request = training_request(name=name, settings=s, role=role, image=image, region=clients.region,
                                       channels=channels, sourcedir=sourcedir, output=f"s3://{bucket}/{root}/output",
                                       checkpoints=s.checkpoint_s3_uri or f"s3://{bucket}/{root}/checkpoints")
            with aws_errors(f"create the training job {name}"):
                clients.client("sagemaker").create_training_job(**request)
        except BaseException:
            with suppress(Exception):  # no orphaned uploads for a job that never started; the first error wins
                clients.delete_prefix(bucket, f"{root}/")
            raise
        self._outputs[name] = spec.output_dir
        return job_from_description(self, self._describe(name), spec.output_dir)

    def _upload_inputs(self, spec: JobSpec, model_dir: Path | None, bucket: str, root: str) -> dict[str, str]:
        """Upload each channel's files under ``root/<channel>/`` and return the channel prefixes."""
        files = {"train": [(Path(spec.data.train_path), "train.jsonl")]}
        if spec.data.eval_path:
            files["eval"] = [(Path(spec.data.eval_path), "eval.jsonl")]
        if model_dir is not None:
            files["model"] = [(p, p.relative_to(model_dir).as_posix()) for p in sorted(model_dir.rglob("*"))
                              if p.is_file()]
        for channel, pairs in files.items():
            for path, key in pairs:
                self.clients.upload(path, bucket, f"{root}/{channel}/{key}")
        return {channel: f"s3://{bucket}/{root}/{channel}" for channel in files}

    def _describe(self, job_id: str) -> dict[str, Any]:
        with aws_errors(f"describe the training job {job_id}"):
            return self.clients.client("sagemaker").describe_training_job(TrainingJobName=job_id)

    def retrieve(self, job_id: str, output_dir: str | None = None) -> TrainingJob:
        """The job's state; the first call that sees a job this backend started completed downloads its artifact.

        ``output_dir`` adopts a job started elsewhere: its artifact is downloaded there too (FineTuner.attach).
        A job this backend started keeps the folder it was started with.
        """
        if output_dir:
            self._outputs.setdefault(job_id, output_dir)
        described = self._describe(job_id)
        job = job_from_description(self, described, self._outputs.get(job_id, ""))
        if job.status == "completed" and job.output_dir:
            if job_id not in self._downloaded:
                self.download(job_id, job.output_dir, described["ModelArtifacts"]["S3ModelArtifacts"])
            job.metrics = Artifact.load(job.output_dir).metrics
        return job

    def download(self, job_id: str, output_dir: str | Path, model_uri: str | None = None) -> Artifact:
        """Fetch a completed job's model.tar.gz and unpack it into ``output_dir`` as an artifact directory."""
        model_uri = model_uri or self._describe(job_id)["ModelArtifacts"]["S3ModelArtifacts"]
        with tempfile.TemporaryDirectory(prefix="finetune-sdk-download-") as tmp:
            archive = Path(tmp) / "model.tar.gz"
            self.clients.download(model_uri, archive)
            safe_extract(archive, Path(output_dir))
        if not (Path(output_dir) / MANIFEST).is_file():
            raise ArtifactError(f"the model.tar.gz of job {job_id} has no {MANIFEST}; it was not written by "
                                "finetune_sdk's training program")
        self._downloaded.add(job_id)
        return Artifact.load(output_dir)

    def list_events(self, job_id: str) -> list[dict[str, Any]]:
        """SageMaker's status transitions, oldest first, in the local backend's event shape."""
        transitions = self._describe(job_id).get("SecondaryStatusTransitions", [])
        return [{"time": _iso(t.get("StartTime")), "event": "status", "status": t["Status"],
                 "message": t.get("StatusMessage", "")} for t in transitions]

    def logs(self, job_id: str) -> list[str]:
        """The job's CloudWatch log lines so far, oldest first (none until the container has started)."""
        return self._new_log_lines(job_id, {})

    def follow_logs(self, job_id: str, *, poll: float = 10.0,
                    sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
        """Yield the job's log lines as CloudWatch receives them, until the job has ended."""
        tokens: dict[str, str] = {}
        while True:
            ended = self._describe(job_id)["TrainingJobStatus"] in ENDED
            yield from self._new_log_lines(job_id, tokens)
            if ended:
                return
            sleep(poll)

    def _new_log_lines(self, job_id: str, tokens: dict[str, str]) -> list[str]:
        """The lines of each of the job's log streams (one per instance) after its token in ``tokens``, stream
        by stream; ``tokens`` is moved on to where each stream now ends."""
        logs = self.clients.client("logs")
        try:
            streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job_id}/")["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            return []
        lines: list[str] = []
        with aws_errors(f"read the logs of {job_id}"):
            for stream in streams:
                name = stream["logStreamName"]
                while True:  # a page holds at most 10,000 events; the token repeats at the end
                    token = tokens.get(name)
                    page = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=name, startFromHead=True,
                                               **({"nextToken": token} if token else {}))
                    lines += [event["message"] for event in page["events"]]
                    if not page["events"] or page.get("nextForwardToken") == token:
                        break
                    tokens[name] = page["nextForwardToken"]
        return lines

    def cancel(self, job_id: str) -> None:
        with aws_errors(f"stop the training job {job_id}"):
            self.clients.client("sagemaker").stop_training_job(TrainingJobName=job_id)

    def list_jobs(self, scope: str | None = None) -> list[TrainingJob]:
        """This account's finetune_sdk training jobs in the region, newest first. ``scope`` (the local folder
        of a FineTuner's runs) has no SageMaker counterpart, so every such job is listed whatever it is."""
        jobs: list[TrainingJob] = []
        paginator = self.clients.client("sagemaker").get_paginator("list_training_jobs")
        with aws_errors("list training jobs"):
            for page in paginator.paginate(NameContains=JOB_PREFIX, SortBy="CreationTime", SortOrder="Descending"):
                jobs += [job_from_description(self, summary, self._outputs.get(summary["TrainingJobName"], ""))
                         for summary in page["TrainingJobSummaries"]]
        return jobs


def training_request(*, name: str, settings: SageMakerSettings, role: str, image: str, region: str,
                     channels: dict[str, str], sourcedir: str, output: str, checkpoints: str) -> dict[str, Any]:
    """The CreateTrainingJob request: script mode in a Hugging Face training container.

    Several instances also carry ``sagemaker_torch_distributed_enabled``, as the SageMaker Python SDK's
    ``distribution={"torch_distributed": ...}`` does; the entry script starts torchrun itself when the
    container's toolkit has not (see finetune_sdk/train/container.py).
    """
    hyperparameters = {"spec": SPEC_FILE, "sagemaker_program": ENTRY_FILE, "sagemaker_submit_directory": sourcedir,
                       "sagemaker_region": region, "sagemaker_container_log_level": 20, "sagemaker_job_name": name}
    if settings.instance_count > 1:
        hyperparameters.update(sagemaker_torch_distributed_enabled=True, sagemaker_instance_type=settings.instance_type)
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "HyperParameters": {key: json.dumps(value) for key, value in hyperparameters.items()},
        "InputDataConfig": [
            {"ChannelName": channel, "InputMode": "File",
             "ContentType": "application/octet-stream" if channel == "model" else "application/jsonlines",
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                             "S3DataDistributionType": "FullyReplicated"}}}
            for channel, uri in channels.items()],
        "OutputDataConfig": {"S3OutputPath": output,
                             **({"KmsKeyId": settings.kms_key_id} if settings.kms_key_id else {})},
        "ResourceConfig": {"InstanceType": settings.instance_type, "InstanceCount": settings.instance_count,
                           "VolumeSizeInGB": settings.volume_size_gb,
                           **({"VolumeKmsKeyId": settings.kms_key_id} if settings.kms_key_id else {})},
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_s,
                              **({"MaxWaitTimeInSeconds": settings.max_wait_s or settings.max_runtime_s}
                                 if settings.spot else {})},
        "EnableManagedSpotTraining": settings.spot,
        "CheckpointConfig": {"S3Uri": checkpoints, "LocalPath": CHECKPOINT_PATH},
        "Tags": [{"Key": key, "Value": value} for key, value in {"finetune-sdk": "training", **settings.tags}.items()],
    }
    if settings.subnets:
        request["VpcConfig"] = {"Subnets": settings.subnets, "SecurityGroupIds": settings.security_group_ids}
    return request


def pack_sourcedir(spec: JobSpec, folder: Path) -> Path:
    """sourcedir.tar.gz: the SDK's source, the entry script, requirements.txt and the job spec."""
    (folder / SPEC_FILE).write_text(spec.to_json(), encoding="utf-8")
    (folder / "requirements.txt").write_text("\n".join(CONTAINER_REQUIREMENTS) + "\n", encoding="utf-8")
    source = sdk_source()
    return pack(folder / "sourcedir.tar.gz", [
        ("finetune_sdk", source), (ENTRY_FILE, source / "sagemaker" / "entry.py"),
        (SPEC_FILE, folder / SPEC_FILE), ("requirements.txt", folder / "requirements.txt")])


def job_from_description(backend: SageMakerBackend, described: dict[str, Any], output_dir: str) -> TrainingJob:
    """A TrainingJob from DescribeTrainingJob's answer or a ListTrainingJobs summary."""
    sm_status = described["TrainingJobStatus"]
    status = STATUS.get(sm_status) or ("queued" if described.get("SecondaryStatus") in WAITING else "running")
    error = described.get("FailureReason") or (described.get("SecondaryStatus") if sm_status == "Stopped" else None)
    return TrainingJob(id=described["TrainingJobName"], backend=backend, status=status, output_dir=output_dir,
                       created_at=_iso(described.get("CreationTime")),
                       started_at=_iso(described.get("TrainingStartTime")),
                       finished_at=_iso(described.get("TrainingEndTime")), error=error)


def _local_model_dir(spec: JobSpec) -> Path | None:
    """The folder to upload as the ``model`` channel: local and embedded models are not on the Hub."""
    if check_model_name(spec.model) == "hub":
        return None
    return Path(resolve_model(spec.model, spec.revision).path)


def _iso(value: Any) -> str | None:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds") if isinstance(value, datetime) else None
