"""Serve an artifact from a SageMaker real-time (or serverless) endpoint in a Hugging Face inference container.

``deploy`` packs ``model.tar.gz`` (the artifact, its base model when that is a local folder, and
``code/inference.py`` with the SDK's source and ``requirements.txt``), uploads it, creates the model,
endpoint config and endpoint, and waits for InService. If the endpoint fails or does not come up in
time, all three are deleted again. The Predictor it returns deletes the endpoint when closed, as the
local deployer's Predictor stops its server; pass ``delete_on_close=False`` to keep it running.

With ``container="tgi"`` the tarball holds the merged model instead, Text Generation Inference serves
it, and the Predictor renders prompts itself (:mod:`finetune_sdk.predict.tgi`).
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable

from ..artifact import MANIFEST, Artifact
from ..errors import ArtifactError, ConfigError, EndpointError, EndpointTimeout, ModelError
from ..predict import Predictor
from ..predict.retry import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ..predict.sagemaker import SageMakerTransport
from ..predict.tgi import TgiTransport
from ..sagemaker.clients import AwsClients, aws_errors, split_s3_uri
from ..sagemaker import images
from ..sagemaker.settings import SageMakerSettings, check_instance_type, unique_name
from ..sagemaker.tarball import pack, sdk_source

DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
CONTAINERS = ("huggingface", "tgi")
TGI_GENERATION_ROOM = 1024  # MAX_TOTAL_TOKENS = the training max_length + this many new tokens


class SageMakerDeployer:
    """Creates, updates and deletes endpoints; settings as for SageMakerBackend (role, region, bucket...)."""

    def __init__(self, settings: SageMakerSettings | None = None, **given: Any) -> None:
        self.settings = settings or SageMakerSettings.from_env(**given)
        self._clients: AwsClients | None = None

    @property
    def clients(self) -> AwsClients:
        if self._clients is None:
            self._clients = AwsClients(self.settings)
        return self._clients

    def deploy(self, artifact: Artifact | str | Path, *, endpoint_name: str | None = None,
               instance_type: str = DEFAULT_INSTANCE_TYPE, instance_count: int = 1,
               serverless: dict[str, int] | None = None, image_uri: str | None = None, use_merged: bool = False,
               volume_size_gb: int | None = None, startup_timeout_s: int | None = None,
               container: str = "huggingface", environment: dict[str, str] | None = None,
               wait_timeout_s: float = 1800, poll_s: float = 15, delete_on_close: bool = True,
               timeout: float = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
               sleep: Callable[[float], None] = time.sleep) -> Predictor:
        """Create an endpoint serving ``artifact``, wait until it is InService and return its Predictor.

        ``container``: ``"huggingface"`` (the SDK's handler in the Hugging Face inference DLC) or ``"tgi"``
        (Text Generation Inference serving the merged model); ``environment`` adds to or overrides the
        container's variables (e.g. ``{"SM_NUM_GPUS": "4"}`` for TGI on a 4-GPU instance).
        """
        artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        name = endpoint_name or unique_name(Path(artifact.base_model).name)
        # built first: a bad argument or a missing tokenizer fails before anything is created and billed
        transport = SageMakerTransport(name, region=self.clients.region, endpoint_url=self.settings.endpoint_url,
                                       timeout=timeout, max_retries=max_retries,
                                       on_close=(lambda: self.delete(name)) if delete_on_close else None)
        predictor = Predictor(TgiTransport.for_artifact(transport, artifact) if container == "tgi" else transport)
        config = self._create_model_and_config(artifact, Path(artifact.base_model).name, instance_type=instance_type,
                                               instance_count=instance_count, serverless=serverless,
                                               image_uri=image_uri, use_merged=use_merged,
                                               volume_size_gb=volume_size_gb,
                                               startup_timeout_s=startup_timeout_s, container=container,
                                               environment=environment)
        sm = self.clients.client("sagemaker")
        try:
            with aws_errors(f"create the endpoint {name}"):
                sm.create_endpoint(EndpointName=name, EndpointConfigName=config, Tags=self._tags())
        except BaseException:
            self._delete_quietly(config)  # the name may belong to an endpoint that is not ours: leave it be
            raise
        try:
            self.wait_in_service(name, wait_timeout_s, poll_s, sleep)
        except BaseException:
            self._delete_quietly(config, endpoint_name=name)
            raise
        return predictor

    def update(self, endpoint_name: str, artifact: Artifact | str | Path, *, wait_timeout_s: float = 1800,
               poll_s: float = 15, sleep: Callable[[float], None] = time.sleep, **options: Any) -> None:
        """Serve ``artifact`` from an existing endpoint (new model and config; the old ones are deleted)."""
        artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        sm = self.clients.client("sagemaker")
        with aws_errors(f"describe the endpoint {endpoint_name}"):
            old_config = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
        config = self._create_model_and_config(artifact, Path(artifact.base_model).name, **{
            "instance_type": DEFAULT_INSTANCE_TYPE, "instance_count": 1, "serverless": None, "image_uri": None,
            "use_merged": False, "volume_size_gb": None, "startup_timeout_s": None, "container": "huggingface",
            "environment": None, **options})
        try:
            with aws_errors(f"update the endpoint {endpoint_name}"):
                sm.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=config)
            described = self.wait_in_service(endpoint_name, wait_timeout_s, poll_s, sleep)
            if described["EndpointConfigName"] == old_config:  # a failed update rolls back and reports InService
                raise EndpointError(f"the update of {endpoint_name} failed and it still serves {old_config}: "
                                    f"{described.get('FailureReason') or 'no reason given'}; see its CloudWatch "
                                    f"logs under /aws/sagemaker/Endpoints/{endpoint_name}")
        except BaseException:
            self._delete_config(config)  # SageMaker keeps serving the old config when an update fails
            raise
        self._delete_config(old_config)

    def delete(self, endpoint_name: str) -> None:
        """Delete the endpoint, its config, its models and their uploaded model.tar.gz."""
        sm = self.clients.client("sagemaker")
        with aws_errors(f"describe the endpoint {endpoint_name}"):
            config = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
        with aws_errors(f"delete the endpoint {endpoint_name}"):
            sm.delete_endpoint(EndpointName=endpoint_name)
        self._delete_config(config)

    def wait_in_service(self, endpoint_name: str, timeout_s: float, poll_s: float,
                        sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Poll DescribeEndpoint until InService and return its description; raise on Failed or after ``timeout_s``."""
        sm = self.clients.client("sagemaker")
        status = "unknown"
        for attempt in range(max(1, math.ceil(timeout_s / poll_s)) + 1):
            if attempt:
                sleep(poll_s)
            with aws_errors(f"describe the endpoint {endpoint_name}"):
                described = sm.describe_endpoint(EndpointName=endpoint_name)
            status = described["EndpointStatus"]
            if status == "InService":
                return described
            if status in ("Failed", "OutOfService"):
                raise EndpointError(f"the endpoint {endpoint_name} is {status}: "
                                    f"{described.get('FailureReason') or 'no reason given'}; see its CloudWatch "
                                    f"logs under /aws/sagemaker/Endpoints/{endpoint_name}")
        raise EndpointTimeout(f"the endpoint {endpoint_name} was still {status} after {timeout_s:.0f}s; raise "
                              "wait_timeout_s= for big models, or check its CloudWatch logs")

    # -- building blocks --------------------------------------------------------------------------
    def _create_model_and_config(self, artifact: Artifact, stem: str, *, instance_type: str, instance_count: int,
                                 serverless: dict[str, int] | None, image_uri: str | None, use_merged: bool,
                                 volume_size_gb: int | None, startup_timeout_s: int | None, container: str,
                                 environment: dict[str, str] | None) -> str:
        """Check the options, upload model.tar.gz, create the model and endpoint config; return their name."""
        s = self.settings
        if container not in CONTAINERS:
            raise ConfigError(f"container={container!r}; use 'huggingface' (the SDK's handler in the Hugging Face "
                              "inference container) or 'tgi' (Text Generation Inference, serving the merged model)")
        tgi = container == "tgi"
        variant_options = _variant_options(instance_type, instance_count, serverless, volume_size_gb)
        role = s.require_role()
        clients = self.clients
        clients.check_credentials()
        image = image_uri or images.image_uri(images.TGI_IMAGE if tgi else images.INFERENCE_IMAGE, clients.region)
        env = tgi_environment(artifact) if tgi else {"SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                                                     "SAGEMAKER_REGION": clients.region,
                                                     "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
        env.update(environment or {})
        bucket = s.bucket or clients.default_bucket()
        name = unique_name(stem)
        key = f"{s.prefix}/endpoints/{name}/model.tar.gz".lstrip("/")
        with tempfile.TemporaryDirectory(prefix="finetune-sdk-model-") as tmp:
            archive = pack_merged_model(artifact, Path(tmp)) if tgi else pack_model(artifact, Path(tmp),
                                                                                      use_merged=use_merged)
            size_gb = archive.stat().st_size / 1e9
            model_data = clients.upload(archive, bucket, key)
        if serverless is None:
            startup = startup_timeout_s or startup_timeout_for(size_gb)
            variant_options.update(ContainerStartupHealthCheckTimeoutInSeconds=startup,
                                   ModelDataDownloadTimeoutInSeconds=startup)
        sm = clients.client("sagemaker")
        created_model = False
        try:
            with aws_errors(f"create the model {name}"):
                sm.create_model(ModelName=name, ExecutionRoleArn=role, Tags=self._tags(),
                                PrimaryContainer={"Image": image, "ModelDataUrl": model_data, "Environment": env},
                                **({"VpcConfig": {"Subnets": s.subnets, "SecurityGroupIds": s.security_group_ids}}
                                   if s.subnets else {}))
            created_model = True
            with aws_errors(f"create the endpoint config {name}"):
                sm.create_endpoint_config(
                    EndpointConfigName=name, Tags=self._tags(),
                    ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name, **variant_options}],
                    **({"KmsKeyId": s.kms_key_id} if s.kms_key_id and serverless is None else {}))
        except BaseException:
            with suppress(Exception):
                if created_model:
                    sm.delete_model(ModelName=name)
                clients.delete_prefix(bucket, key)
            raise
        return name

    def _delete_config(self, config: str) -> None:
        """Delete an endpoint config, the models it names and their model.tar.gz."""
        sm = self.clients.client("sagemaker")
        with aws_errors(f"describe the endpoint config {config}"):
            variants = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
        models = [v["ModelName"] for v in variants]
        with aws_errors(f"delete the endpoint config {config}"):
            sm.delete_endpoint_config(EndpointConfigName=config)
        for model in models:
            with aws_errors(f"delete the model {model}"):
                data = sm.describe_model(ModelName=model)["PrimaryContainer"].get("ModelDataUrl")
                sm.delete_model(ModelName=model)
            if data and f"/endpoints/{model}/" in data:  # only what deploy() uploaded
                self.clients.delete_prefix(*split_s3_uri(data))

    def _delete_quietly(self, config: str, endpoint_name: str | None = None) -> None:
        """Best-effort cleanup after a failed deploy; the original error is what the caller needs."""
        sm = self.clients.client("sagemaker")
        if endpoint_name is not None:
            with suppress(Exception):
                sm.delete_endpoint(EndpointName=endpoint_name)
        with suppress(Exception):
            self._delete_config(config)

    def _tags(self) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in {"finetune-sdk": "endpoint", **self.settings.tags}.items()]


def pack_model(artifact: Artifact, folder: Path, *, use_merged: bool = False) -> Path:
    """model.tar.gz: the artifact at the root, ``base/`` when its base model is a local folder, and ``code/``."""
    if use_merged and artifact.merged_path is None:
        raise ArtifactError(f"{artifact.path} has no merged/ model; train with TrainingSettings(merge=True) or "
                            "deploy the adapter (use_merged=False)")
    skipped = set(ADAPTER_FILES) if use_merged else {"merged"}
    entries = [(p.name, p) for p in sorted(artifact.path.iterdir()) if p.name not in skipped]
    base = artifact.manifest["base_model"]
    if artifact.has_adapter and not use_merged and base.get("source") in ("local", "embedded"):
        try:
            entries.append(("base", Path(artifact.base_model_ref().path)))
        except ModelError as exc:
            raise ArtifactError(f"the base model {base['name']!r} is not on this machine, and a SageMaker endpoint "
                                "cannot reach it; deploy from where it is, or pass use_merged=True") from exc
    (folder / "requirements.txt").write_text("\n".join(images.CONTAINER_REQUIREMENTS) + "\n", encoding="utf-8")
    source = sdk_source()
    entries += [("code/inference.py", source / "sagemaker" / "inference.py"),
                ("code/requirements.txt", folder / "requirements.txt"), ("code/finetune_sdk", source)]
    if not any(name == MANIFEST for name, _ in entries):
        raise ArtifactError(f"{artifact.path} has no {MANIFEST}")
    return pack(folder / "model.tar.gz", entries)


def pack_merged_model(artifact: Artifact, folder: Path) -> Path:
    """model.tar.gz for TGI: the merged model (a plain Hugging Face model folder) at the root, and the manifest.

    An adapter is merged first with :meth:`Artifact.merge`, which checks the merge against base + adapter.
    """
    if artifact.merged_path is None:
        if not artifact.has_adapter:
            raise ArtifactError(f"{artifact.path} has neither merged/ nor an adapter to merge; it is damaged")
        try:
            artifact.merge()
        except ConfigError as exc:  # no held-out rows next to the artifact to check the merge on
            raise ConfigError(f"container='tgi' serves the merged model, checked before it is written: {exc}; "
                              "or run artifact.merge(prompts=[...]) before deploying") from exc
    merged = artifact.path / "merged"
    return pack(folder / "model.tar.gz", [(p.name, p) for p in sorted(merged.iterdir())] +
                [(MANIFEST, artifact.path / MANIFEST)])


def tgi_environment(artifact: Artifact) -> dict[str, str]:
    """What the TGI container reads: the model in /opt/ml/model, one GPU, prompts up to the training length."""
    max_input = int(artifact.manifest.get("max_length", 1024))
    return {"HF_MODEL_ID": "/opt/ml/model", "SM_NUM_GPUS": "1", "MAX_INPUT_TOKENS": str(max_input),
            "MAX_TOTAL_TOKENS": str(max_input + TGI_GENERATION_ROOM)}


def startup_timeout_for(size_gb: float) -> int:
    """Container start-up budget: 10 minutes plus 2 per GB of model.tar.gz, at most SageMaker's 60 minutes."""
    return int(min(3600, 600 + 120 * math.ceil(size_gb)))


def _variant_options(instance_type: str, instance_count: int, serverless: dict[str, int] | None,
                     volume_size_gb: int | None) -> dict[str, Any]:
    if serverless is not None:
        memory, concurrency = serverless.get("memory_mb", 6144), serverless.get("max_concurrency", 1)
        unknown = sorted(set(serverless) - {"memory_mb", "max_concurrency"})
        if unknown or memory not in SERVERLESS_MEMORY_MB or not 1 <= concurrency <= 200:
            raise ConfigError(f"serverless={serverless!r}; use {{'memory_mb': one of {list(SERVERLESS_MEMORY_MB)}, "
                              "'max_concurrency': 1 to 200}")
        return {"ServerlessConfig": {"MemorySizeInMB": memory, "MaxConcurrency": concurrency}}
    check_instance_type(instance_type, "endpoint")
    if instance_count < 1:
        raise ConfigError(f"instance_count={instance_count}; an endpoint needs at least 1 instance")
    return {"InstanceType": instance_type, "InitialInstanceCount": instance_count,
            **({"VolumeSizeInGB": volume_size_gb} if volume_size_gb else {})}
