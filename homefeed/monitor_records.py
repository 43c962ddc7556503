"""What the staleness monitor keeps on disk: each version's daily records and the stale notice.

Below the monitor itself, so the run report reads a notice without importing the monitor (and
with it Spark and the evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from homefeed import storage
from homefeed.config import Config

MONITOR_DIR = "monitor"
STALE_FILE = "stale.json"


def monitor_root(cfg: Config) -> Path:
    return storage.local_path(cfg.storage.root) / MONITOR_DIR


def records(cfg: Config, version: str | None = None) -> list[dict[str, Any]]:
    pattern = f"v{version}/*.json" if version else "v*/*.json"
    return [json.loads(p.read_text()) for p in sorted(monitor_root(cfg).glob(pattern))]


def write_stale_notice(cfg: Config, decision: dict[str, Any]) -> None:
    storage.write_json(monitor_root(cfg) / STALE_FILE, decision)


def stale_notice(cfg: Config, version: str | None) -> dict[str, Any] | None:
    """The staleness record of ``version``, if the monitor marked it stale (the retrain report shows it)."""
    path = monitor_root(cfg) / STALE_FILE
    if version is None or not path.exists():
        return None
    notice = json.loads(path.read_text())
    return notice if notice.get("model_version") == version else None
