"""Where a cohort's files live: a local folder or an ``s3://bucket/prefix`` (all the I/O).

S3 goes through boto3 with the project's ``storage`` settings (endpoint, region); credentials
come from boto3's usual chain, never from here.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cerebrascan.settings import StorageSettings


class MissingObjectError(FileNotFoundError):
    """A manifest path or S3 object does not exist."""


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an ``s3://`` location."""
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key).

    Raises:
        ValueError: not an ``s3://bucket/...`` URI.
    """
    if not is_s3(uri):
        raise ValueError(f"expected s3://bucket/key, got {uri[:80]!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri[:80]!r}")
    return bucket, key


def s3_client(storage: StorageSettings) -> Any:
    """A boto3 S3 client on ``storage.s3_endpoint_url`` / ``s3_region``.

    Its own session: boto3's default session keeps the first credentials it finds for the
    whole process, so a client made on it would pin them for MLflow's later clients too.
    """
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=storage.s3_endpoint_url, region_name=storage.s3_region or None
    )


def read_uri(uri: str, storage: StorageSettings) -> bytes:
    """The bytes of a local path or an S3 object.

    Raises:
        MissingObjectError: no such file or object.
    """
    if not is_s3(uri):
        path = Path(uri)
        if not path.is_file():
            raise MissingObjectError(f"no such file {uri}")
        return path.read_bytes()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        body = s3_client(storage).get_object(Bucket=bucket, Key=key)["Body"]
        data: bytes = body.read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound"):
            raise MissingObjectError(f"no such S3 object {uri}") from None
        raise
    return data


@dataclass(frozen=True)
class OutputLocation:
    """The ``--out`` of a cohort: a folder, or an S3 prefix, addressed by relative names."""

    uri: str
    storage: StorageSettings

    @property
    def on_s3(self) -> bool:
        return is_s3(self.uri)

    def _key(self, name: str) -> tuple[str, str]:
        bucket, prefix = split_s3(self.uri)
        prefix = prefix.strip("/")
        return bucket, f"{prefix}/{name}" if prefix else name

    def child(self, name: str) -> str:
        """The full URI or path of ``name`` under this location."""
        if self.on_s3:
            return self.uri.rstrip("/") + "/" + name
        return str(Path(self.uri) / name)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` whole: a reader sees the old file or the new one, never a part."""
        if self.on_s3:
            bucket, key = self._key(name)
            s3_client(self.storage).put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = Path(self.uri) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def read_bytes(self, name: str) -> bytes:
        """The bytes of ``name``.

        Raises:
            MissingObjectError: no such file.
        """
        return read_uri(self.child(name), self.storage)

    def list_names(self, folder: str) -> list[str]:
        """Names (relative to this location) of the files directly in ``folder``."""
        if self.on_s3:
            bucket, key = self._key(folder.rstrip("/") + "/")
            names: list[str] = []
            paginator = s3_client(self.storage).get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
                for item in page.get("Contents", []):
                    names.append(folder.rstrip("/") + "/" + item["Key"][len(key) :])
            return sorted(names)
        path = Path(self.uri) / folder
        if not path.is_dir():
            return []
        return sorted(
            f"{folder.rstrip('/')}/{p.name}"
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".")
        )
