import json

from homefeed import report
from homefeed.pipeline import STAGE_NAMES


def test_report_of_a_partial_run_under_a_relative_root(tmp_path, monkeypatch, base_config):
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / ".homefeed" / "runs" / "r1"
    directory.mkdir(parents=True)
    relative = directory.relative_to(tmp_path)
    (directory / "validate_raw.json").write_text(json.dumps({"suites": ["suite 'pins': passed"], "data_docs": str(relative / "data_docs" / "index.html")}))
    path = report.write(base_config, relative, {"champion": None}, STAGE_NAMES)
    text = path.read_text()
    assert 'href="data_docs/index.html"' in text
    assert "did not run" in text and "suite &#x27;pins&#x27;: passed" in text


def test_a_failed_stage_is_marked_failed_with_its_error_and_a_retried_one_is_not(tmp_path, base_config):
    from homefeed import pipeline

    directory = tmp_path / "run"
    directory.mkdir()
    pipeline.log_task_failure("check_raw", FileNotFoundError("raw data not found at /nowhere"), directory)
    text = report.write(base_config, directory, {"champion": None}, STAGE_NAMES).read_text()
    assert "FAILED at check_raw" in text and "FAILED: raw data not found at /nowhere" in text
    assert text.count("did not run") == len(STAGE_NAMES) - 1
    # The same stage succeeding on a retry: done, and no failure header.
    (directory / "check_raw.json").write_text(json.dumps({"raw": "/data", "tables": []}))
    text = report.write(base_config, directory, {"champion": None}, STAGE_NAMES).read_text()
    assert "FAILED" not in text
