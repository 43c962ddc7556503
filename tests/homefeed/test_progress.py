import io
import logging
import time

from homefeed import progress

STRUCTLOG = "2026-11-30T07:57:23.958033Z [info     ] train: epoch 1/2 done [homefeed.progress] loc=progress.py:56\n"
AIRFLOW = "2026-11-30T07:56:35.741053Z [info     ] Pushing xcom                   [task] loc=task_runner.py:2280\n"
WORKER_LIVE = "train: epoch 1/2, batch 3/40 (7%) [homefeed.progress.live]\n"


def test_own_lines_are_homefeeds_whatever_wrote_them_and_nothing_else_is():
    assert progress.own_line(STRUCTLOG) == ("info", "train: epoch 1/2 done", False)
    assert progress.own_line(WORKER_LIVE) == ("info", "train: epoch 1/2, batch 3/40 (7%)", True)
    assert progress.own_line("2026-11-30T07:56:35Z [error    ] homefeed task x failed: boom [homefeed] loc=p.py:1") == ("error", "homefeed task x failed: boom", False)
    assert progress.own_line(AIRFLOW) is None
    assert progress.own_line("Using incubator modules: jdk.incubator.vector\n") is None
    # A tqdm bar ends in \r, with no newline: the line after it is read on its own.
    assert progress.own_line("Calculating Metrics: 28%|██▊ | 18/65\r" + STRUCTLOG) == ("info", "train: epoch 1/2 done", False)


def test_follow_keeps_every_line_in_the_log_and_shows_only_homefeeds():
    lines = [AIRFLOW, "Calculating Metrics: 28%|██▊ | 18/65\r" + STRUCTLOG, "Spark notice\n", WORKER_LIVE]
    log, out = io.StringIO(), io.StringIO()
    progress.follow(lines, log, out)
    assert log.getvalue() == "".join(lines)
    shown = out.getvalue().splitlines()
    assert len(shown) == 2 and shown[0].endswith("] train: epoch 1/2 done") and "batch 3/40" in shown[1]
    verbose = io.StringIO()
    progress.follow(lines, io.StringIO(), verbose, verbose=True)
    assert verbose.getvalue() == "".join(lines)


def test_a_terminal_overwrites_live_lines(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(out, "isatty", lambda: True)
    progress.follow([WORKER_LIVE, WORKER_LIVE, STRUCTLOG], io.StringIO(), out)
    assert out.getvalue().count("\n") == 1 and out.getvalue().count("\r\033[K") == 2


def test_the_heartbeat_speaks_only_when_the_work_is_silent(caplog):
    with caplog.at_level(logging.INFO, logger="homefeed.progress"):
        with progress.heartbeat("quiet", lambda: "stage 3: 1/8 tasks", every_s=0.05):
            time.sleep(0.3)
        beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quiet: running for")]
        assert beats and beats[-1].endswith("(stage 3: 1/8 tasks)")
        caplog.clear()
        with progress.heartbeat("chatty", every_s=0.2):
            for _ in range(6):
                progress.report("chatty: batch")
                time.sleep(0.05)
        assert not [r for r in caplog.records if "running for" in r.getMessage()]


def test_a_failing_probe_never_stops_the_work(caplog):
    def broken():
        raise RuntimeError("no Spark")

    with caplog.at_level(logging.INFO, logger="homefeed.progress"):
        with progress.heartbeat("probe", broken, every_s=0.05):
            time.sleep(0.2)
    assert any(r.getMessage().startswith("probe: running for") for r in caplog.records)


def test_durations_and_etas_read_like_people_write_them():
    assert progress.duration(12.34) == "12.3 s" and progress.duration(245) == "4 min 05 s" and progress.duration(3720) == "1 h 02 min"
    assert progress.eta(0, 10, 5.0) == "?" and progress.eta(5, 10, 10.0) == "10.0 s"
    ticker = progress.Ticker(every_s=0.05)
    assert not ticker.due()
    time.sleep(0.06)
    assert ticker.due() and not ticker.due()
