"""Packing the tarballs SageMaker reads, and unpacking the one it writes without trusting it.

``safe_extract`` checks every member before writing anything: absolute paths, ``..``, links and
devices are refused, and the files land in a staging folder that replaces the target in one rename.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from ..artifact import staged_directory
from ..errors import ArtifactError

SKIPPED = {"__pycache__", ".pytest_cache"}
FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python's own check, where it has one


def sdk_source() -> Path:
    """The installed ``finetune_sdk`` package folder (shipped into containers that do not have it)."""
    return Path(__file__).resolve().parent.parent


def pack(archive: Path, entries: Iterable[tuple[str, Path]]) -> Path:
    """Write a gzipped tar of ``(name in the archive, file or folder)`` pairs; caches are left out."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if SKIPPED & set(PurePosixPath(info.name).parts) or info.name.endswith(".pyc") else info

    with tarfile.open(archive, "w:gz") as tar:
        for name, path in entries:
            tar.add(str(path), arcname=name, filter=keep)
    return archive


def check_members(members: list[tarfile.TarInfo], archive: str) -> None:
    """Raise ArtifactError naming the first member that could write outside the target or is not a plain file."""
    for member in members:
        path = PurePosixPath(member.name)
        if member.name.startswith(("/", "\\")) or path.is_absolute() or (path.parts and ":" in path.parts[0]):
            problem = "has an absolute path"
        elif ".." in path.parts:
            problem = "climbs out of the target with '..'"
        elif member.issym() or member.islnk():
            problem = f"is a link (to {member.linkname!r})"
        elif not (member.isfile() or member.isdir()):
            problem = "is a device, FIFO or other special file"
        else:
            continue
        raise ArtifactError(f"refusing to extract {archive}: member {member.name!r} {problem}; the archive is "
                            "damaged or was not written by finetune_sdk")


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target`` (replacing it whole), or raise and write nothing."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            check_members(members, archive.name)
            with staged_directory(target) as stage:
                for member in members:
                    tar.extract(member, stage, set_attrs=False, **FILTER)
    except tarfile.TarError as exc:
        raise ArtifactError(f"{archive.name} is not a readable tar.gz ({exc}); download it again") from exc
    return target
