import os
import stat

from finetune_sdk.artifact import staged_directory


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
