import os
import stat

from finetune_sdk.artifact import Artifact, staged_directory, write_manifest


def test_a_staged_folder_gets_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        with staged_directory(tmp_path / "artifact") as stage:
            (stage / "model.safetensors").write_bytes(b"weights")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "artifact").stat().st_mode) == 0o755
    assert (tmp_path / "artifact" / "model.safetensors").read_bytes() == b"weights"
    assert os.listdir(tmp_path) == ["artifact"]  # no staging folder left behind


def test_an_artifact_loaded_by_a_relative_path_keeps_its_folder_after_a_chdir(tmp_path, monkeypatch):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    write_manifest(tmp_path / "runs" / "a", {"base_model": {"name": "x", "source": "hub", "path": "x"}})
    monkeypatch.chdir(tmp_path)
    artifact = Artifact.load("runs/a")
    monkeypatch.chdir("/")
    assert artifact.path == tmp_path / "runs" / "a" and (artifact.path / "finetune_sdk.json").is_file()
