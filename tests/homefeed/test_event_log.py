"""The service's event log: acknowledged events reach Parquet in the raw `actions` form, a dead
writer's journal is recovered, a live one is left alone, and nothing is duplicated."""

import fcntl
import json
import subprocess
import sys

import pyarrow.parquet as pq

from homefeed import schema
from homefeed.event_log import JOURNAL_DIR, EventLog, read_events, recover

DAY_MS = 86_400_000
JAN_5 = 1_767_571_200_000  # 2026-01-05T00:00Z


def _keys(table):
    return sorted(zip(*(table[c].to_pylist() for c in ("user_id", "pin_id", "ts", "action"))))


def test_events_are_published_by_dt_in_the_raw_actions_schema(tmp_path):
    log = EventLog(tmp_path, roll_events=1000)
    log.append(1, 2, "click", JAN_5 + 5)
    log.append(1, 3, "repin", JAN_5 + DAY_MS + 5)
    assert read_events(tmp_path).num_rows == 0  # journaled, not yet published
    log.close()
    parts = sorted((tmp_path / schema.ACTIONS).glob("dt=*/part-*.parquet"))
    assert [p.parent.name for p in parts] == ["dt=2026-01-05", "dt=2026-01-06"]
    assert pq.read_schema(parts[0]) == schema.arrow_schema(schema.ACTIONS, with_dt=False)
    assert _keys(read_events(tmp_path)) == [(1, 2, JAN_5 + 5, "click"), (1, 3, JAN_5 + DAY_MS + 5, "repin")]
    assert not list((tmp_path / JOURNAL_DIR).glob("*.jsonl"))


def test_the_journal_rolls_every_roll_events(tmp_path):
    log = EventLog(tmp_path, roll_events=3)
    for i in range(7):
        log.append(1, i, "click", JAN_5 + i)
    assert read_events(tmp_path).num_rows == 6
    log.close()
    assert read_events(tmp_path).num_rows == 7


def test_a_killed_writers_journal_is_recovered_once_without_its_torn_line(tmp_path):
    # A real process appends, then dies by SIGKILL without closing: its flock goes with it.
    script = (
        "import os, signal\n"
        "from homefeed.event_log import EventLog\n"
        f"log = EventLog({str(tmp_path)!r})\n"
        f"for i in range(5): log.append(9, i, 'hide', {JAN_5} + i)\n"
        "log._handle.write(b'{\"user_id\": 9, \"pin')\n"  # cut mid-line, as a crash would
        "log._handle.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert read_events(tmp_path).num_rows == 0
    assert recover(tmp_path) == 5
    assert _keys(read_events(tmp_path)) == [(9, i, JAN_5 + i, "hide") for i in range(5)]
    assert recover(tmp_path) == 0  # the journal is gone: nothing is published twice


def test_a_live_writers_journal_is_left_alone(tmp_path):
    log = EventLog(tmp_path)
    log.append(1, 2, "click", JAN_5)
    assert recover(tmp_path) == 0
    journal = next((tmp_path / JOURNAL_DIR).glob("*.jsonl"))
    with open(journal, "ab") as handle:  # the writer still holds it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = False
        except BlockingIOError:
            locked = True
    assert locked
    log.close()
    assert read_events(tmp_path).num_rows == 1


def test_a_retried_event_is_published_once(tmp_path):
    log = EventLog(tmp_path)
    for _ in range(3):
        log.append(1, 2, "click", JAN_5)
    log.close()
    assert read_events(tmp_path).num_rows == 1


def test_the_exposure_log_rolls_off_the_request_path_and_publishes_every_answer(tmp_path):
    from homefeed.event_log import ExposureLog, read_served

    log = ExposureLog(tmp_path, roll_requests=50)
    for i in range(120):
        log.append(f"r{i}", 7, JAN_5 + i, "control", "exp", "3", [1, 2, 3], [0.3, 0.2, 0.1])
    log.close()  # waits for the rolls in flight
    served = read_served(tmp_path).to_pandas()
    assert sorted(served["request_id"]) == sorted(f"r{i}" for i in range(120))
    assert list(served.iloc[0]["pin_ids"]) == [1, 2, 3] and set(served["arm"]) == {"control"}
    assert not list((tmp_path / "served" / JOURNAL_DIR).glob("*.jsonl"))


def test_invalid_lines_of_a_dead_writer_s_journal_are_quarantined_and_the_rest_published(tmp_path):
    journal_dir = tmp_path / JOURNAL_DIR
    journal_dir.mkdir()
    good = {"user_id": 3, "pin_id": 4, "ts": JAN_5 + 9, "action": "click"}
    (journal_dir / "dead.jsonl").write_text("\n".join(json.dumps(r) for r in (good, {"user_id": "x"}, {**good, "ts": "soon"})) + "\n")
    log = EventLog(tmp_path)  # a service's start: recovers without failing
    assert log.recovered == 1 and _keys(read_events(tmp_path)) == [(3, 4, JAN_5 + 9, "click")]
    quarantined = (journal_dir / "_quarantine" / "dead.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in quarantined] == [{"user_id": "x"}, {**good, "ts": "soon"}]
    assert not (journal_dir / "dead.jsonl").exists()
