"""The training program inside a SageMaker training container: SM_* variables and /opt/ml onto a JobSpec.

SageMaker's Hugging Face container unpacks ``sourcedir.tar.gz`` and runs
``train_entry.py --spec finetune_sdk_spec.json`` (that is ``python -m finetune_sdk.train``) with:

    SM_CHANNEL_TRAIN, SM_CHANNEL_EVAL   the uploaded JSONL files
    SM_CHANNEL_MODEL                    the base model folder, when the model was a local or embedded one
    SM_HPS / --key value arguments      overrides of TrainingSettings fields (e.g. epochs)
    SM_HOSTS, SM_CURRENT_HOST           the job's instances and this one (algo-1, algo-2, ...)
    SM_NUM_GPUS                         GPUs on this instance
    /opt/ml/checkpoints                 checkpoints, synced to S3; any found there are resumed (spot restarts)
    SM_MODEL_DIR                        the artifact, which SageMaker packs into model.tar.gz

With several GPUs or several instances the program starts torchrun on every instance (one process
per GPU; nnodes = the number of hosts, node_rank = this host's place in SM_HOSTS, master = the first
host, port 7777) unless it is already running under torchrun. SageMaker builds model.tar.gz from the
model directories of all instances together, so only the first process of the first host writes the
artifact, and only it writes checkpoints (every instance syncs /opt/ml/checkpoints to the same S3 prefix).

The artifact is written beside SM_MODEL_DIR (a mount point, so the staging rename cannot target it),
then moved in with the manifest last: a model directory without ``finetune_sdk.json`` is incomplete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..artifact import MANIFEST
from ..errors import ConfigError, TrainingError
from ..models import EMBEDDED_MODELS
from ..spec import JobSpec, TrainingSettings, settings
from .checkpoint import list_checkpoints

CHECKPOINT_DIR = "/opt/ml/checkpoints"
RESERVED_HPS = {"spec"}
MASTER_PORT = 7777  # the port SageMaker's training toolkit gives torchrun, so either launcher agrees
MASTER_ADDR_VAR, MASTER_PORT_VAR = "FINETUNE_SDK_MASTER_ADDR", "FINETUNE_SDK_MASTER_PORT"


@dataclass
class ContainerEnv:
    """What SageMaker tells the training program through the environment."""

    model_dir: Path
    output_data_dir: Path
    channels: dict[str, Path]
    hyperparameters: dict[str, Any]
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])
    current_host: str = "algo-1"
    num_gpus: int = 0
    checkpoint_dir: Path = Path(CHECKPOINT_DIR)
    master_addr: str | None = None
    master_port: int = MASTER_PORT

    @property
    def processes_per_host(self) -> int:
        return max(1, self.num_gpus)

    @property
    def distributed(self) -> bool:
        return self.processes_per_host > 1 or len(self.hosts) > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], argv: list[str] | None = None) -> "ContainerEnv":
        channels = {key.removeprefix("SM_CHANNEL_").lower(): Path(value)
                    for key, value in environ.items() if key.startswith("SM_CHANNEL_")}
        hps = {**_cli_hyperparameters(argv or []), **json.loads(environ.get("SM_HPS") or "{}")}
        hosts = json.loads(environ.get("SM_HOSTS") or '["algo-1"]')
        current = environ.get("SM_CURRENT_HOST") or hosts[0]
        if current not in hosts:
            raise ConfigError(f"SM_CURRENT_HOST={current!r} is not one of SM_HOSTS={hosts}")
        return cls(model_dir=Path(environ["SM_MODEL_DIR"]),
                   output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")),
                   channels=channels, hyperparameters=hps, hosts=hosts, current_host=current,
                   num_gpus=int(environ.get("SM_NUM_GPUS") or 0),
                   checkpoint_dir=Path(environ.get("FINETUNE_SDK_CHECKPOINT_DIR", CHECKPOINT_DIR)),
                   master_addr=environ.get(MASTER_ADDR_VAR),
                   master_port=int(environ.get(MASTER_PORT_VAR) or MASTER_PORT))

    def torchrun_options(self) -> list[str]:
        """torchrun's options for this host: one process per GPU, the first host as the rendezvous point."""
        options = ["--nnodes", str(len(self.hosts)), "--nproc_per_node", str(self.processes_per_host)]
        if len(self.hosts) == 1:
            return options + ["--standalone"]
        return options + ["--node_rank", str(self.hosts.index(self.current_host)),
                          "--master_addr", self.master_addr or self.hosts[0], "--master_port", str(self.master_port)]


def container_spec(spec: JobSpec, env: ContainerEnv) -> JobSpec:
    """The shipped spec with the container's paths and any hyperparameter overrides."""
    if "train" not in env.channels:
        raise ConfigError(f"no 'train' channel (SM_CHANNEL_TRAIN); the job has channels {sorted(env.channels)}")
    overrides = {k: v for k, v in env.hyperparameters.items()
                 if k not in RESERVED_HPS and not k.startswith("sagemaker_")}
    unknown = sorted(set(overrides) - set(TrainingSettings.model_fields))
    if unknown:
        raise ConfigError(f"unknown hyperparameters {unknown}; they must be TrainingSettings fields "
                          f"({sorted(TrainingSettings.model_fields)})")
    data = spec.data.model_copy(update={
        "train_path": str(env.channels["train"] / "train.jsonl"),
        "eval_path": str(env.channels["eval"] / "eval.jsonl") if "eval" in env.channels else None})
    return spec.model_copy(update={
        "model": str(env.channels["model"]) if "model" in env.channels else spec.model,
        "data": data,
        "training": settings(TrainingSettings, {**spec.training.model_dump(), **overrides}),
        "output_dir": str(env.output_data_dir / "artifact"),
        "checkpoint_dir": str(env.checkpoint_dir) if env.checkpoint_dir.is_dir() else None,
    })


def run_in_container(spec_path: Path, environ: Mapping[str, str], argv: list[str] | None = None) -> Path:
    """Train as SageMaker asked and leave a complete artifact in SM_MODEL_DIR."""
    from .program import run

    env = ContainerEnv.from_environ(environ, argv)
    original = JobSpec.load(spec_path)
    spec = container_spec(original, env)
    if env.distributed and "WORLD_SIZE" not in environ:
        return launch_torchrun(env, spec_path, argv or [], environ)
    resume = spec.checkpoint_dir is not None and bool(list_checkpoints(Path(spec.checkpoint_dir)))
    first = int(environ.get("RANK", "0")) == 0
    if first:
        print(f"finetune_sdk: training {original.model} on {env.num_gpus} GPU(s) x {len(env.hosts)} host(s)"
              f"{', resuming from ' + str(spec.checkpoint_dir) if resume else ''}", file=sys.stderr)
    artifact = run(spec, resume=resume)
    if not first:  # model.tar.gz gathers every host's model directory: one writer, no clashes
        return env.model_dir
    if "model" in env.channels:
        restore_base_model(artifact, original)
    publish(artifact, env.model_dir)
    return env.model_dir


def launch_torchrun(env: ContainerEnv, spec_path: Path, argv: list[str], environ: Mapping[str, str]) -> Path:
    """Run this same program under torchrun on this host and wait for it (every host does the same)."""
    package_parent = str(Path(__file__).resolve().parents[2])  # the shipped SDK, wherever the workers start
    path = os.pathsep.join(p for p in (package_parent, environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "torch.distributed.run", *env.torchrun_options(),
               "-m", "finetune_sdk.train", "--spec", str(spec_path), *argv]
    print(f"finetune_sdk: host {env.current_host} of {env.hosts} starts {env.processes_per_host} training "
          f"process(es): {' '.join(command[1:])}", file=sys.stderr)
    done = subprocess.run(command, env={**environ, "PYTHONPATH": path})
    if done.returncode != 0:
        raise TrainingError(f"the training processes on {env.current_host} exited with code {done.returncode}; "
                            "the first error is in the log above (every host's log is in CloudWatch)")
    return env.model_dir


def restore_base_model(artifact: Path, original: JobSpec) -> None:
    """Point the manifest and adapter config at the user's model, not the container's channel path."""
    source = "embedded" if original.model in EMBEDDED_MODELS else "local"
    manifest = json.loads((artifact / MANIFEST).read_text(encoding="utf-8"))
    manifest["base_model"] = {"name": original.model, "source": source, "path": original.model,
                              "revision": original.revision}
    (artifact / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    adapter_config = artifact / "adapter_config.json"
    if adapter_config.is_file():
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = original.model
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def publish(artifact: Path, model_dir: Path) -> None:
    """Move the artifact's files into ``model_dir``, the manifest last."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(artifact.iterdir(), key=lambda p: p.name == MANIFEST):
        shutil.move(str(entry), str(model_dir / entry.name))


def _cli_hyperparameters(argv: list[str]) -> dict[str, Any]:
    """``--epochs 3 --merge true`` as {"epochs": 3, "merge": True} (the toolkit passes hyperparameters so)."""
    values: dict[str, Any] = {}
    for flag, value in zip(argv[::2], argv[1::2]):
        if not flag.startswith("--"):
            raise ConfigError(f"unexpected argument {flag!r}; hyperparameters come as --name value pairs")
        try:
            values[flag[2:]] = json.loads(value)
        except json.JSONDecodeError:
            values[flag[2:]] = value
    return values
