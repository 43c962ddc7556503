"""Atomic publishing: staging directories, markers, and what a killed writer leaves behind."""

import json
import os
import signal
import subprocess
import sys

import pytest

from homefeed import schema, storage


def _staging_killed_mid_write(tmp_path, target):
    """A real writer process SIGKILLed inside publish_dataset, as a killed build is."""
    code = (
        "import sys, time\n"
        "from homefeed import storage\n"
        f"with storage.publish_dataset({str(target)!r}) as staging:\n"
        "    (staging / 'part-0.parquet').write_bytes(b'half')\n"
        "    print(staging, flush=True)\n"
        "    time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    staging = writer.stdout.readline().strip()
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    return storage.local_path(staging)


def test_a_killed_writers_staging_directory_is_removed_by_the_next_publish(tmp_path):
    target = tmp_path / "instances"
    abandoned = _staging_killed_mid_write(tmp_path, target)
    assert abandoned.exists()  # SIGKILL gave it no chance to clean up
    with storage.publish_dataset(target) as staging:
        (staging / "part-0.parquet").write_bytes(b"whole")
    assert not abandoned.exists()
    assert storage.is_published(target) and not (target / storage.WRITER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instances"]


def test_a_live_writers_staging_directory_is_left_alone(tmp_path):
    target = tmp_path / "instances"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / ".instances.tmp-live0001"
        live.mkdir()
        (live / storage.WRITER).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        unknown = tmp_path / ".instances.tmp-norecord"  # no writer record: not ours to judge
        unknown.mkdir()
        with storage.publish_dataset(target):
            pass
        assert live.exists() and unknown.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_failed_writer_removes_its_own_staging_and_keeps_the_old_dataset(tmp_path):
    target = tmp_path / "instances"
    with storage.publish_dataset(target) as staging:
        (staging / "v1").write_text("1")
    with pytest.raises(RuntimeError):
        with storage.publish_dataset(target) as staging:
            (staging / "v2").write_text("2")
            raise RuntimeError("boom")
    assert (target / "v1").exists() and not (target / "v2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instances"]


def test_an_intact_dataset_is_one_whose_listed_files_are_all_there_with_their_sizes(tmp_path):
    with storage.publish_dataset(tmp_path / "d") as staging:
        (staging / "rows").mkdir()
        (staging / "rows" / "part-0.parquet").write_bytes(b"x" * 10)
        storage.write_json(staging / schema.MANIFEST, {"fingerprint": "f", "files": storage.file_sizes(staging)})
    assert storage.intact_dataset(tmp_path / "d", "rows")["fingerprint"] == "f"
    (tmp_path / "d" / "rows" / "part-0.parquet").write_bytes(b"x" * 9)  # cut
    assert storage.intact_dataset(tmp_path / "d", "rows") is None
    storage.write_json(tmp_path / "d" / schema.MANIFEST, {"fingerprint": "f"})  # lists nothing: cannot be checked
    assert storage.intact_dataset(tmp_path / "d", "rows") is None
    (tmp_path / "d" / schema.MANIFEST).write_text("{not json")
    assert storage.intact_dataset(tmp_path / "d", "rows") is None
    assert storage.intact_dataset(tmp_path / "absent", "rows") is None
