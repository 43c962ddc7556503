"""S3 as the storage of record, through boto3.

A dataset on S3 is a prefix of objects, published the same way as on disk: every data object is
uploaded first, then ``_manifest.json``, then ``_SUCCESS`` last. Readers check for ``_SUCCESS``,
so a crash (or a server that goes away mid-upload) never leaves a dataset that looks complete.
Big files go up as multipart uploads; transient errors are retried with backoff by botocore's
``standard`` retry mode before a clear :class:`S3Error` is raised.

The endpoint and credentials come from the usual AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) or the ``storage.s3`` config section.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from homefeed.errors import PermanentError
from homefeed.schema import MANIFEST, SUCCESS_MARKER

MiB = 1024 * 1024


class S3Error(RuntimeError):
    """An S3 call failed after its retries; the message names the object and the cause."""


class NotPublished(PermanentError, S3Error):
    """The prefix has no ``_SUCCESS``: never written, or written only in part."""


def split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    return parsed.netloc, parsed.path.lstrip("/").rstrip("/")


def client(endpoint_url: str | None = None, max_attempts: int = 5, timeout_s: float = 10.0,
           access_key: str | None = None, secret_key: str | None = None):
    """A boto3 S3 client with retries and timeouts; credentials from the environment unless given."""
    import boto3
    from botocore.config import Config

    retries = Config(retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=timeout_s, read_timeout=timeout_s,
                     s3={"addressing_style": "path"})
    # A session of its own: boto3's default session keeps the first credentials it resolved.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), config=retries,
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def _transfer_config(multipart_threshold: int):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=max(5 * MiB, multipart_threshold), use_threads=False)


def _call(what: str, function, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return function(*args, **kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise S3Error(f"{what}: {exc}") from exc


def publish_directory(s3, local_dir: str | Path, uri: str, multipart_threshold: int = 64 * MiB, exclude: tuple[str, ...] = ()) -> int:
    """Upload a local dataset directory to ``uri``: data objects, then manifest, then ``_SUCCESS``.

    Returns the number of objects written. Re-publishing first removes the old ``_SUCCESS``, so
    readers never see a mix of old and new objects as complete. Top-level entries named in
    ``exclude`` stay local.
    """
    bucket, prefix = split_uri(uri)
    local = Path(local_dir)
    marker, manifest = local / SUCCESS_MARKER, local / MANIFEST
    files = sorted(
        p for p in local.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p != marker and p.relative_to(local).parts[0] not in exclude
    )
    data = [p for p in files if p != manifest]
    last = [p for p in files if p == manifest]
    _call(f"unpublish s3://{bucket}/{prefix}", s3.delete_object, Bucket=bucket, Key=f"{prefix}/{SUCCESS_MARKER}")
    keep = {f"{prefix}/{p.relative_to(local).as_posix()}" for p in files}
    for stale in set(_keys(s3, bucket, prefix)) - keep:  # objects of an older version of the dataset
        _call(f"delete s3://{bucket}/{stale}", s3.delete_object, Bucket=bucket, Key=stale)
    transfer = _transfer_config(multipart_threshold)
    for path in data + last:
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        _call(f"upload {path} to s3://{bucket}/{key}", s3.upload_file, str(path), bucket, key, Config=transfer)
    _call(f"mark s3://{bucket}/{prefix} published", s3.put_object, Bucket=bucket, Key=f"{prefix}/{SUCCESS_MARKER}", Body=b"")
    return len(files) + 1


def is_published(s3, uri: str) -> bool:
    from botocore.exceptions import ClientError

    bucket, prefix = split_uri(uri)
    try:
        s3.head_object(Bucket=bucket, Key=f"{prefix}/{SUCCESS_MARKER}")
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise S3Error(f"check s3://{bucket}/{prefix}/{SUCCESS_MARKER}: {exc}") from exc


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return [item["Key"] for page in _call(f"list s3://{bucket}/{prefix}", list, pages) for item in page.get("Contents", [])]


def list_keys(s3, uri: str) -> list[str]:
    """Every object key under a prefix (published or not)."""
    bucket, prefix = split_uri(uri)
    return _keys(s3, bucket, prefix)


def fetch_directory(s3, uri: str, local_dir: str | Path) -> Path:
    """Download a published dataset; refuses one without ``_SUCCESS``."""
    if not is_published(s3, uri):
        raise NotPublished(f"{uri} has no {SUCCESS_MARKER}: it was never fully published")
    bucket, prefix = split_uri(uri)
    local = Path(local_dir)
    for key in _keys(s3, bucket, prefix):
        target = local / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        _call(f"download s3://{bucket}/{key}", s3.download_file, bucket, key, str(target))
    return local


def read_manifest(s3, uri: str) -> dict[str, Any]:
    if not is_published(s3, uri):
        raise NotPublished(f"{uri} has no {SUCCESS_MARKER}: it was never fully published")
    bucket, prefix = split_uri(uri)
    body = _call(f"read s3://{bucket}/{prefix}/{MANIFEST}", s3.get_object, Bucket=bucket, Key=f"{prefix}/{MANIFEST}")["Body"].read()
    return json.loads(body)


# --------------------------------------------------------------------------- the pipeline on S3
RUN_INSTANCES = "instances"


def publish_run(s3_uri: str, directory: str | Path) -> None:
    """A pipeline run so far, onto ``<s3_uri>/runs/<run>/``: the instances once as their own
    dataset, everything else (stage results, checks, model, report) re-published after each stage."""
    from homefeed import storage

    directory = Path(directory)
    s3 = client()
    base = f"{s3_uri.rstrip('/')}/runs/{directory.name}"
    instances = directory / RUN_INSTANCES
    if storage.is_published(instances) and not is_published(s3, f"{base}/{RUN_INSTANCES}"):
        publish_directory(s3, instances, f"{base}/{RUN_INSTANCES}")
    publish_directory(s3, directory, f"{base}/records", exclude=(RUN_INSTANCES,))


def fetch_cached(uri: str, cache_root: str | Path) -> Path:
    """A local copy of a published dataset, fetched again only when its manifest changed."""
    import shutil
    import uuid

    s3 = client()
    bucket, prefix = split_uri(uri)
    local = Path(cache_root) / bucket / prefix
    remote_manifest = read_manifest(s3, uri)
    if (local / SUCCESS_MARKER).exists() and json.loads((local / MANIFEST).read_text()) == remote_manifest:
        return local
    staging = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fetch_directory(s3, uri, staging)
        if local.exists():
            shutil.rmtree(local)
        staging.rename(local)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local
