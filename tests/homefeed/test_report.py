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
    pipeline.record_failure(directory, "check_raw", FileNotFoundError("raw data not found at /nowhere"))
    text = report.write(base_config, directory, {"champion": None}, STAGE_NAMES).read_text()
    assert "FAILED at check_raw" in text and "FAILED: raw data not found at /nowhere" in text
    assert text.count("did not run") == len(STAGE_NAMES) - 1
    # The same stage succeeding on a retry: done, and no failure header.
    (directory / "check_raw.json").write_text(json.dumps({"raw": "/data", "tables": []}))
    text = report.write(base_config, directory, {"champion": None}, STAGE_NAMES).read_text()
    assert "FAILED" not in text


def test_a_failed_stage_shows_when_it_started_how_long_it_took_and_what_to_do_next(tmp_path, base_config):
    """Before: a failed stage's row had no start and no duration, and nothing said what to do (issue 33, item 7)."""
    import pytest

    from homefeed import pipeline, storage

    directory = tmp_path / "run"
    directory.mkdir()
    with pytest.raises(storage.StorageError):  # the runner records the failure, its start and its duration
        pipeline.run_stage(pipeline.stage("check_raw"), pipeline.RunContext(base_config, directory, str(tmp_path / "nowhere")))
    text = report.write(base_config, directory, {"champion": None}, STAGE_NAMES).read_text()
    row = text[text.index("<td>check_raw</td>"):].split("</tr>")[0]
    assert " UTC</td>" in row and " s</td>" in row
    assert f"What to do next:</b> {report.NEXT_STEP['StorageError']}" in text


def test_a_first_model_says_no_champion_once_instead_of_empty_columns(tmp_path, base_config):
    evaluation = _evaluation(champion=None)
    text = report._comparison(evaluation)
    assert text.count("No champion yet") == 1 and "AUC champion" not in text and "change [95%, paired]" not in text
    with_champion = report._comparison(_evaluation(champion=evaluation["challenger"]))
    assert "No champion yet" not in with_champion and "AUC champion" in with_champion


def test_each_head_has_one_colour_in_every_plot(monkeypatch):
    from homefeed import schema

    figures = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "")
    history = [{"epoch": e, "train_loss": 0.5, "val_auc": {h: 0.6 for h in schema.HEADS}} for e in range(2)]
    report._training_plot(history)
    report._roc_plot({h: {"fpr": [0, 1], "tpr": [0, 1]} for h in schema.HEADS})
    report._calibration_plot({h: [{"predicted": 0.1, "observed": 0.1}] for h in schema.HEADS})
    colours: dict[str, set] = {}
    for fig in figures:
        for ax in fig.axes:
            title = ax.get_title()
            for line in ax.get_lines():
                head = line.get_label() if line.get_label() in schema.HEADS else title.removeprefix("calibration: ")
                if head in schema.HEADS and line.get_linestyle() != "--":
                    colours.setdefault(head, set()).add(line.get_color())
    assert set(colours) == set(schema.HEADS)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(schema.HEADS)  # and the heads tell apart


def _evaluation(champion):
    from homefeed import schema

    metrics = {h: {"auc": 0.7, "hit": 0.3, "logloss": 0.4} for h in schema.HEADS}
    interval = {h: {"auc": [0.6, 0.8], "hit": [0.2, 0.4], "logloss": [0.3, 0.5]} for h in schema.HEADS}
    challenger = {"hit_k": 3, "overall": metrics, "slices": {}, "intervals": {"overall": interval}}
    paired = {h: {"auc": [0.01, 0.0, 0.02], "hit": [0.01, 0.0, 0.02]} for h in schema.HEADS} if champion else None
    return {"challenger": challenger, "champion": champion, "paired_vs_champion": paired}
