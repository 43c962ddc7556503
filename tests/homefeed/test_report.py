import json

from homefeed import report


def test_report_of_a_partial_run_under_a_relative_root(tmp_path, monkeypatch, base_config):
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / ".homefeed" / "runs" / "r1"
    directory.mkdir(parents=True)
    relative = directory.relative_to(tmp_path)
    (directory / "validate_raw.json").write_text(json.dumps({"suites": ["suite 'pins': passed"], "data_docs": str(relative / "data_docs" / "index.html")}))
    path = report.write(base_config, relative, {"champion": None})
    text = path.read_text()
    assert 'href="data_docs/index.html"' in text
    assert "did not run" in text and "suite &#x27;pins&#x27;: passed" in text
