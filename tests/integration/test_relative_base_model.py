"""An artifact trained on a relative local model path ("models/tiny") loads from any working directory:
every loader uses the folder recorded at training time, not the name, which elsewhere reads as a Hub id."""

import shutil
import tarfile

import huggingface_hub.constants
import pytest

from finetune_sdk import FineTuner, TrainingSettings
from finetune_sdk.artifact import Artifact, write_manifest
from finetune_sdk.backends.local import LocalBackend
from finetune_sdk.deployers.sagemaker import pack_model
from finetune_sdk.merge import reference_model
from finetune_sdk.serve.engine import GenerationEngine
from tests.conftest import COUNSEL


@pytest.fixture()
def artifact(tiny_model_dir, tmp_path, counsel_rows, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny_model_dir, project / "models" / "tiny")
    monkeypatch.chdir(project)
    tuner = FineTuner("models/tiny", counsel_rows[:16], COUNSEL, output_dir=project / "runs" / "relative",
                      eval_fraction=0.25, backend=LocalBackend(in_process=True),
                      training=TrainingSettings(max_steps=1, batch_size=8, progress=False))
    return tuner.train()


def test_an_artifact_on_a_relative_model_path_loads_from_another_directory(artifact, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no Hub: reading the name fails at once
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert artifact.manifest["base_model"]["name"] == "models/tiny"

    engine = GenerationEngine.from_artifact(artifact.path, device="cpu")
    assert len(engine.generate(["I can't sleep."], max_new_tokens=2)) == 1
    assert type(reference_model(artifact).base_model).__name__ == "LoraModel"
    with tarfile.open(pack_model(artifact, elsewhere)) as tar:
        assert "base/config.json" in tar.getnames()


def test_eval_base_loads_the_recorded_folder_from_another_directory(artifact, tmp_path, monkeypatch, capsys):
    from finetune_sdk.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(artifact.path), "--base", "--max-new-tokens", "2"]) == 0
    assert "base (4)" in capsys.readouterr().out


def test_the_recorded_name_is_used_when_the_recorded_folder_is_gone(tiny_model_dir, tmp_path):
    """Say, on another machine: the folder the base was trained from is not there, the name may be."""
    write_manifest(tmp_path, {"base_model": {"name": str(tiny_model_dir), "source": "local",
                                             "path": str(tmp_path / "gone"), "revision": None}})
    assert Artifact.load(tmp_path).base_model_ref().path == str(tiny_model_dir)
