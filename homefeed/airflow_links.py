"""Links from each homefeed_retrain task in the Airflow UI to the run's MLflow run and its report.

Airflow 3 asks a task's links when the task ends, in the task's own process, and keeps their
URLs as XComs the UI shows as buttons. Both point at MLflow's UI (the report is an artifact of
the run): a browser does not follow a page on http:// to a file:// report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperatorLink


def _run_directory(ti_key: Any) -> tuple[Any, Path]:
    """(config, run directory) of the task's run."""
    from homefeed import orchestration, pipeline

    params = dict(ti_key.get_template_context()["params"])
    cfg = orchestration.config_from_params(params)
    return cfg, pipeline.run_dir(cfg, params.get("run_label") or ti_key.run_id)


def _mlflow_run(ti_key: Any) -> tuple[Any, str, Path] | None:
    """(config, MLflow run id, run directory) once the run has an MLflow run (from training on)."""
    from homefeed import pipeline

    cfg, directory = _run_directory(ti_key)
    run_id = pipeline.RunContext(cfg, directory).existing_mlflow_run()
    return (cfg, run_id, directory) if run_id else None


class MlflowRunLink(BaseOperatorLink):
    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:
        from homefeed import registry

        found = _mlflow_run(ti_key)
        return registry.run_page(found[0], found[1]) if found else ""


class RunReportLink(BaseOperatorLink):
    name = "Run report"

    def get_link(self, operator, *, ti_key) -> str:
        from homefeed import registry

        found = _mlflow_run(ti_key)
        if not found or not (found[2] / "report.html").exists():
            return ""  # the report task writes it and attaches it to the MLflow run
        return registry.run_page(found[0], found[1], artifact="report/report.html")


LINKS = (MlflowRunLink(), RunReportLink())
