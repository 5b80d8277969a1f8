"""model.tar.gz from S3 is not trusted: a member that could write outside the target is refused, and
then nothing at all is written."""

from __future__ import annotations

import io
import tarfile

import pytest

from finetune_sdk import ArtifactError
from finetune_sdk.sagemaker.tarball import pack, safe_extract


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _archive(path, members) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


GOOD = [_file("finetune_sdk.json", b"{}"), _file("adapter_config.json", b"{}")]
BAD = [
    ("parent directory", _file("../escaped.txt"), "climbs out of the target with '..'"),
    ("parent inside a path", _file("merged/../../escaped.txt"), "climbs out of the target with '..'"),
    ("absolute path", _file("/tmp/escaped.txt"), "has an absolute path"),
    ("symlink", _special("tokenizer.json", tarfile.SYMTYPE, "/etc/passwd"), "is a link (to '/etc/passwd')"),
    ("relative symlink", _special("merged", tarfile.SYMTYPE, "../.."), "is a link"),
    ("hard link", _special("weights.bin", tarfile.LNKTYPE, "/etc/shadow"), "is a link"),
    ("character device", _special("dev", tarfile.CHRTYPE), "is a device, FIFO or other special file"),
    ("fifo", _special("pipe", tarfile.FIFOTYPE), "is a device, FIFO or other special file"),
]


@pytest.mark.parametrize("member, phrase", [(m, p) for _, m, p in BAD], ids=[b[0] for b in BAD])
def test_dangerous_members_are_refused_and_nothing_is_written(member, phrase, tmp_path):
    archive = tmp_path / "model.tar.gz"
    _archive(archive, [*GOOD, member])  # the good members come first: they must not be written either
    box = tmp_path / "box"
    box.mkdir()
    target = box / "artifact"
    with pytest.raises(ArtifactError, match="refusing to extract model.tar.gz") as raised:
        safe_extract(archive, target)
    assert phrase in str(raised.value)
    assert list(box.iterdir()) == []  # no target, no staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "model.tar.gz"]


def test_a_good_archive_replaces_the_target_whole(tmp_path):
    archive = tmp_path / "model.tar.gz"
    _archive(archive, [*GOOD, _file("merged/config.json", b"{}")])
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    safe_extract(archive, target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "adapter_config.json", "finetune_sdk.json", "merged", "merged/config.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_damaged_archive_is_an_artifact_error(tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ArtifactError, match="is not a readable tar.gz"):
        safe_extract(archive, tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


def test_pack_leaves_out_caches(tmp_path):
    source = tmp_path / "pkg"
    (source / "__pycache__").mkdir(parents=True)
    (source / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"")
    (source / "m.py").write_text("x = 1\n")
    with tarfile.open(pack(tmp_path / "out.tar.gz", [("finetune_sdk", source)])) as tar:
        assert tar.getnames() == ["finetune_sdk", "finetune_sdk/m.py"]
