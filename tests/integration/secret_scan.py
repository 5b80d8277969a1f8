"""Fake secrets and a search for them in everything a run produced (files, S3 objects, output)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKE7SECRET9KEYID",
    "AWS_SECRET_ACCESS_KEY": "fAkEsEcReT/aCcEsS+kEy0123456789abcdefXYZ",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEFAKESESSIONTOKEN0987654321",
    "HF_TOKEN": "hf_FakeHuggingFaceToken1234567890abcd",
    "HUGGING_FACE_HUB_TOKEN": "hf_FakeHubToken0987654321zyxwvutsrq",
    "FINETUNE_SDK_API_KEY": "sk-fake-server-api-key-5f4e3d2c1b",
}


def occurrences(data: bytes) -> dict[str, int]:
    return {name: data.count(value.encode()) for name, value in SECRETS.items() if value.encode() in data}


def scan_tree(folder: Path) -> dict[str, dict[str, int]]:
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        hits = occurrences(path.read_bytes())
        if hits:
            found[str(path)] = hits
    return found


def scan_tar(data: bytes) -> dict[str, int]:
    """Occurrences inside every member of a tar(.gz) archive, plus the archive bytes themselves."""
    found = dict(occurrences(data))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                for name, count in occurrences(tar.extractfile(member).read()).items():
                    found[name] = found.get(name, 0) + count
    return found


def scan_bucket(s3, bucket: str) -> dict[str, dict[str, int]]:
    """Occurrences in every object of an S3 bucket, looking inside tarballs."""
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        data = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        hits = scan_tar(data) if item["Key"].endswith(".tar.gz") else occurrences(data)
        if hits:
            found[item["Key"]] = hits
    return found
