"""Where datasets live, and how they are published atomically.

A dataset is a directory. It is written under a temporary sibling, finished with a
``_manifest.json`` and a ``_SUCCESS`` marker, then renamed into place, so a reader never sees a
half-written dataset and a failed writer leaves the previous version untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from homefeed.errors import PermanentError
from homefeed.schema import DT, IMPRESSIONS, LEGACY_MANIFEST, MANIFEST, SUCCESS_MARKER

log = logging.getLogger(__name__)


class StorageError(PermanentError, RuntimeError):
    """A dataset is missing, unpublished or unreadable."""


def local_path(uri: str | Path) -> Path:
    """The local path of a storage URI (plain paths and ``file://`` URIs)."""
    text = str(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        raise StorageError(f"{uri!r} is not a local path; remote storage goes through homefeed.storage S3 helpers")
    return Path(text)


def is_published(path: str | Path) -> bool:
    return (local_path(path) / SUCCESS_MARKER).exists()


def require_published(path: str | Path, what: str) -> Path:
    directory = local_path(path)
    if not directory.exists():
        raise StorageError(f"{what} not found at {directory}")
    if not is_published(directory):
        raise StorageError(f"{what} at {directory} has no {SUCCESS_MARKER} marker: it was never fully written")
    return directory


def read_manifest(path: str | Path) -> dict[str, Any]:
    manifest = local_path(path) / MANIFEST
    if not manifest.exists():
        manifest = local_path(path) / LEGACY_MANIFEST
    if not manifest.exists():
        raise StorageError(f"no {MANIFEST} in {local_path(path)}")
    try:
        return json.loads(manifest.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StorageError(f"{manifest} is damaged (not JSON: {exc}); rebuild the dataset") from None


def file_sizes(directory: Path) -> dict[str, int]:
    """Every Parquet file under ``directory`` (``_pin_features/`` included; hidden staging files not) → its size."""
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*.parquet"))
            if not any(part.startswith(".") for part in p.relative_to(directory).parts)}


def missing_files(directory: Path, listed: dict[str, int]) -> list[str]:
    """The listed files absent from ``directory`` or of another size (a damaged dataset)."""
    return [name for name, size in listed.items() if not (directory / name).is_file() or (directory / name).stat().st_size != size]


def intact_dataset(path: str | Path, what: str) -> dict[str, Any] | None:
    """A published dataset's manifest when every file it lists (``files``) is there with its size;
    None, said in a line, when the manifest is damaged or lists nothing, or a file is missing or cut:
    what a job checks before it skips rebuilding the same inputs."""
    if not is_published(path):
        return None
    try:
        manifest = read_manifest(path)
    except StorageError as exc:
        log.warning("%s at %s: %s; rebuilding", what, local_path(path), exc)
        return None
    listed = manifest.get("files")
    gone = missing_files(local_path(path), listed) if listed else ["(the manifest lists no files)"]
    if gone:
        log.warning("%s at %s: %d file(s) missing or changed (e.g. %s); rebuilding", what, local_path(path), len(gone), gone[0])
        return None
    return manifest


def write_text(path: Path, text: str) -> None:
    """Write a file through a temporary file and a rename: a reader sees the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read: created 0600 (never briefly world-readable, whatever
    the umask), and an older copy with wider bits is narrowed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.chmod(0o600)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def private_file(path: Path) -> Path:
    """Create ``path`` empty and owner-only if it does not exist, and narrow it if it does: for the
    SQLite stores (MLflow, Airflow, serving sequences), which hold run data, users' actions and
    Airflow's connections. SQLite gives its -wal/-shm/-journal files the database's mode.

    An existing file is never opened here: closing any descriptor of a database drops every POSIX
    lock this process holds on it, SQLite's included, and corrupts it under concurrent writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # created meanwhile by another writer
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


def file_digest(path: Path) -> str:
    """A short blake2b of a file's bytes: what says a raw or log file is the one seen before."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "blake2b").hexdigest()[:32]


def fingerprint(payload: Any) -> str:
    """A stable short hash of a JSON-able value (config, input listing)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


WRITER = "_writer.json"  # in a staging directory: which process is writing it


def _writer_gone(staging: Path) -> bool:
    """A staging directory whose writer died (killed before it could clean up) on this host.
    No record, another host, or a pid that exists: not ours to judge, so False."""
    try:
        writer = json.loads((staging / WRITER).read_text())
        if writer.get("host") != socket.gethostname():
            return False
        os.kill(int(writer["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, ValueError):
        pass
    return False


def remove_abandoned_staging(final: Path) -> list[Path]:
    """Delete the staging directories of ``final`` left by writers that were killed."""
    removed = []
    for staging in final.parent.glob(f".{final.name}.tmp-*"):
        if staging.is_dir() and _writer_gone(staging):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


@contextlib.contextmanager
def publish_dataset(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success publish it at ``target`` with a ``_SUCCESS`` marker.

    The caller writes its files (and ``_manifest.json``) into the yielded directory. An existing
    dataset at ``target`` is replaced only after the new one is complete. Staging directories of
    the same target whose writer process is gone (SIGKILL leaves no chance to clean up) are
    removed first; a live writer's are left alone.
    """
    final = local_path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(final)
    staging = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    (staging / WRITER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    try:
        yield staging
        (staging / WRITER).unlink(missing_ok=True)
        (staging / SUCCESS_MARKER).write_text("")
        retired = None
        if final.exists():
            retired = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(retired)
        staging.rename(final)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def list_files(root: Path, pattern: str = "*.parquet") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def landed_days(raw_root: str | Path, table: str = IMPRESSIONS) -> list[date]:
    """The days a raw table has landed (its ``dt=`` partitions), oldest first."""
    directory = local_path(raw_root) / table
    return sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in directory.glob(f"{DT}=*") if p.is_dir())
