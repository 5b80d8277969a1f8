"""The training program under a temporary /opt/ml layout, as SageMaker's training container runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune_sdk import ConfigError, FineTuner, TrainingSettings
from finetune_sdk.artifact import MANIFEST, Artifact
from finetune_sdk.spec import JobSpec
from finetune_sdk.train import container
from finetune_sdk.train.container import ContainerEnv, container_spec, run_in_container
from tests.conftest import COUNSEL, fake_opt_ml


@pytest.fixture
def shipped(tmp_path, tiny_model_dir, counsel_rows):
    """The spec as the backend ships it, and an /opt/ml layout with the channels it uploads."""
    tuner = FineTuner(str(tiny_model_dir), counsel_rows[:24], COUNSEL, output_dir=tmp_path / "user" / "out",
                      eval_fraction=0.25, training=TrainingSettings(batch_size=4, progress=False))
    opt = tmp_path / "opt" / "ml"
    environ = fake_opt_ml(opt, tuner, tiny_model_dir)
    spec = JobSpec.load(opt / "code" / "finetune_sdk_spec.json")
    return spec, opt, environ


def test_the_environment_maps_onto_the_spec(shipped):
    spec, opt, environ = shipped
    env = ContainerEnv.from_environ({**environ, "SM_HPS": json.dumps({"epochs": 3, "spec": "finetune_sdk_spec.json"})},
                                    ["--learning_rate", "0.001", "--merge", "true"])
    mapped = container_spec(spec, env)
    assert mapped.model == str(opt / "input" / "data" / "model")
    assert mapped.data.train_path == str(opt / "input" / "data" / "train" / "train.jsonl")
    assert mapped.data.eval_path == str(opt / "input" / "data" / "eval" / "eval.jsonl")
    assert mapped.data.fingerprint == spec.data.fingerprint
    assert mapped.output_dir == str(opt / "output" / "data" / "artifact")
    assert (mapped.training.epochs, mapped.training.learning_rate, mapped.training.merge) == (3, 0.001, True)
    assert mapped.checkpoint_dir is None  # no CheckpointConfig, no /opt/ml/checkpoints
    (opt / "checkpoints").mkdir()
    assert container_spec(spec, env).checkpoint_dir == str(opt / "checkpoints")


@pytest.mark.parametrize("change, phrase", [
    ({"SM_HPS": '{"epoch": 3}'}, "unknown hyperparameters ['epoch']; they must be TrainingSettings fields"),
    ({"SM_HPS": '{"learning_rate": -1}'}, "learning_rate"),
    ({"SM_HOSTS": '["algo-1", "algo-2"]', "SM_CURRENT_HOST": "algo-3"},
     "SM_CURRENT_HOST='algo-3' is not one of SM_HOSTS=['algo-1', 'algo-2']"),
    ({"SM_CHANNEL_TRAIN": None}, "no 'train' channel (SM_CHANNEL_TRAIN); the job has channels ['eval', 'model']"),
])
def test_bad_container_inputs_are_config_errors(shipped, change, phrase):
    spec, opt, environ = shipped
    environ = {k: v for k, v in {**environ, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as raised:
        run_in_container(opt / "code" / "finetune_sdk_spec.json", environ)
    assert phrase in str(raised.value)
    assert not (opt / "model").exists() or not list((opt / "model").iterdir())


def test_a_restarted_job_resumes_from_the_checkpoints_and_fills_the_model_dir(shipped, tiny_model_dir, monkeypatch):
    spec, opt, environ = shipped
    (opt / "checkpoints").mkdir()
    spec_path = opt / "code" / "finetune_sdk_spec.json"
    # a first instance leaves checkpoints at steps 1 and 2 in /opt/ml/checkpoints (synced to S3), as a
    # reclaimed spot instance would; the restarted job finds them there and continues from step 2
    run_in_container(spec_path, {**environ, "SM_HPS": json.dumps({"max_steps": 3, "save_every": 1})})
    assert [p.name for p in sorted((opt / "checkpoints").glob("step-*"))] == ["step-000001", "step-000002"]
    shutil.rmtree(opt / "model")
    shutil.rmtree(opt / "output")
    moves: list[str] = []
    real_move = shutil.move
    monkeypatch.setattr(container.shutil, "move", lambda src, dst: moves.append(Path(src).name) or real_move(src, dst))
    run_in_container(spec_path, {**environ, "SM_HPS": json.dumps({"max_steps": 4, "save_every": 1})})

    events = [json.loads(line) for line in (opt / "output" / "data" / "artifact.work" / "events.jsonl").read_text()
              .splitlines()]
    assert [e for e in events if e["event"] == "resumed"][0]["step"] == 2
    artifact = Artifact.load(opt / "model")
    assert artifact.metrics["steps"] == 4
    assert artifact.manifest["base_model"] == {"name": str(tiny_model_dir), "source": "local",
                                               "path": str(tiny_model_dir), "revision": None}
    adapter_config = json.loads((opt / "model" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert moves[-1] == MANIFEST and len(moves) == len(list((opt / "model").iterdir()))
    assert list((opt / "output" / "data" / "artifact").iterdir()) == []
    assert JobSpec.load(spec_path) == spec  # the shipped spec is not modified


@pytest.mark.parametrize("change, options", [
    ({}, None),
    ({"SM_NUM_GPUS": "1"}, None),
    ({"SM_NUM_GPUS": "4"}, ["--nnodes", "1", "--nproc_per_node", "4", "--standalone"]),
    ({"SM_HOSTS": '["algo-1", "algo-2", "algo-3"]', "SM_CURRENT_HOST": "algo-2", "SM_NUM_GPUS": "8"},
     ["--nnodes", "3", "--nproc_per_node", "8", "--node_rank", "1", "--master_addr", "algo-1",
      "--master_port", "7777"]),
    ({"SM_HOSTS": '["algo-1", "algo-2"]', "SM_CURRENT_HOST": "algo-1", "FINETUNE_SDK_MASTER_ADDR": "127.0.0.1",
      "FINETUNE_SDK_MASTER_PORT": "29411"},
     ["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", "0", "--master_addr", "127.0.0.1",
      "--master_port", "29411"]),
])
def test_torchrun_runs_one_process_per_gpu_on_every_host(shipped, change, options):
    env = ContainerEnv.from_environ({**shipped[2], **change})
    assert env.distributed == (options is not None)
    if options is not None:
        assert env.torchrun_options() == options
