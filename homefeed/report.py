"""One self-contained HTML report per retraining run (plots embedded as PNG).

It shows what each stage recorded: data volumes and checks (with Data Docs links), training
curves, challenger vs champion per head and per slice with intervals, calibration, the gate
decision with reasons, and the registry state after the run. Stages that did not run are listed
as such, so a failed run still gets a report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from homefeed import monitor, schema
from homefeed.config import Config

STAGES = ("check_raw", "validate_raw", "build_instances", "validate_instances", "train", "evaluate", "gate", "register", "promote")


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"/>'


def _training_plot(history: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(9, 3))
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(title="train loss", xlabel="epoch")
    for head in schema.HEADS:
        auc_ax.plot(epochs, [h["val_auc"].get(head) for h in history], marker="o", label=head)
    auc_ax.set(title="validation AUC", xlabel="epoch")
    auc_ax.legend(fontsize=7)
    out = _png(fig)
    plt.close(fig)
    return out


def _calibration_plot(calibration: dict[str, list[dict[str, float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(calibration), figsize=(3 * len(calibration), 3))
    for ax, (head, rows) in zip(axes, calibration.items()):
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o")
        top = max([r["predicted"] for r in rows] + [r["observed"] for r in rows] + [1e-3])
        ax.plot([0, top], [0, top], linestyle="--", color="grey")
        ax.set(title=f"calibration: {head}", xlabel="predicted", ylabel="observed")
    out = _png(fig)
    plt.close(fig)
    return out


def _roc_plot(curves: dict[str, dict[str, list[float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    for head, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], label=head)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(title="ROC (challenger)", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=7)
    out = _png(fig)
    plt.close(fig)
    return out


def _table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _with_interval(value: float, interval: list[float] | None) -> str:
    if interval is None or interval[0] != interval[0]:
        return f"{value:.4f}"
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _comparison(evaluation: dict[str, Any]) -> str:
    challenger, champion = evaluation["challenger"], evaluation.get("champion")
    k = challenger["hit_k"]
    rows = []
    for scope, metrics in [("overall", challenger["overall"]), *challenger["slices"].items()]:
        champ = (champion["overall"] if scope == "overall" else champion["slices"][scope]) if champion else {}
        intervals = challenger["intervals"][scope]
        for head in schema.HEADS:
            rows.append([scope, head,
                         _with_interval(metrics[head]["auc"], intervals[head]["auc"]), champ.get(head, {}).get("auc", "-"),
                         _with_interval(metrics[head]["hit"], intervals[head]["hit"]), champ.get(head, {}).get("hit", "-"),
                         _with_interval(metrics[head]["logloss"], intervals[head]["logloss"])])
    header = ["slice", "head", "AUC challenger [95%]", "AUC champion", f"HIT@{k} challenger [95%]", f"HIT@{k} champion", "log loss challenger [95%]"]
    note = "<p>Intervals: percentile bootstrap over requests; every metric's interval is in evaluate.json.</p>"
    return _table(rows, header) + note


def _drift(saved: dict[str, Any]) -> str:
    """The statistics that moved most against their limits, failures first."""
    if saved["comparison"] is None:
        return "<h2>Drift</h2><p>No previous run to compare with; this run's profile is the baseline.</p>"
    outcomes = [o for o in saved["comparison"]["outcomes"] if "change" in o["expected"]]
    outcomes.sort(key=lambda o: o["expected"]["change"] / o["expected"]["max_change"], reverse=True)
    rows = [[o["expectation"].removeprefix("drift:"), o["success"], o["expected"]["previous"], o["observed"],
             o["expected"]["change"], f'{o["expected"]["max_change"]} ({o["expected"]["measured_as"]})'] for o in outcomes[:12]]
    verdict = "passed" if saved["comparison"]["success"] else "FAILED"
    return (f"<h2>Drift vs run {html.escape(str(saved['previous_run']))}: {verdict}</h2>"
            + _table(rows, ["statistic", "passed", "previous", "now", "change", "limit"]))


def _status(stage: str, results: dict[str, Any], failures: dict[str, Any]) -> str:
    if stage in results:
        return "done"
    if stage in failures:
        return f"FAILED: {failures[stage]['error'].splitlines()[0] if failures[stage]['error'] else ''}"
    return "did not run"


def write(cfg: Config, directory: Path, registry_state: dict[str, Any]) -> Path:
    results = {s: json.loads((directory / f"{s}.json").read_text()) for s in STAGES if (directory / f"{s}.json").exists()}
    parts = [f"<h1>homefeed retraining run {html.escape(directory.name)}</h1>"]
    notice = monitor.stale_notice(cfg, results.get("evaluate", {}).get("champion_version"))
    if notice:
        parts.append(f"<h2>Why this run</h2><p>The staleness monitor marked champion v{html.escape(notice['model_version'])} "
                     f"stale on {html.escape(notice['day'])}: {html.escape(notice['reason'])}</p>")
    # A stage that failed and then succeeded on a retry is done, not failed.
    failures = {s: json.loads((directory / f"{s}{schema.STAGE_FAILED_SUFFIX}").read_text()) for s in STAGES
                if s not in results and (directory / f"{s}{schema.STAGE_FAILED_SUFFIX}").exists()}
    if failures:
        first = next(s for s in STAGES if s in failures)
        parts.append(f'<h2 class="failed">FAILED at {html.escape(first)}</h2><pre>{html.escape(failures[first]["error"])}</pre>')
    parts.append("<h2>Stages</h2>" + _table([[s, _status(s, results, failures)] for s in STAGES], ["stage", "status"]))
    if "build_instances" in results:
        built = results["build_instances"]
        parts.append("<h2>Data</h2>" + _table(
            [[split, info["rows"], *[info["label_rates"][h] for h in schema.HEADS]] for split, info in sorted(built["splits"].items())],
            ["split", "rows", *[f"rate {h}" for h in schema.HEADS]],
        ))
    for stage in ("validate_raw", "validate_instances"):
        if stage in results:
            docs = os.path.relpath(results[stage]["data_docs"], directory)  # the report sits in the run directory
            parts.append(f"<h2>Checks: {stage}</h2><pre>{html.escape(chr(10).join(results[stage]['suites']))}</pre>"
                         f'<p><a href="{html.escape(docs)}">Data Docs</a></p>')
    if (directory / "drift.json").exists():
        parts.append(_drift(json.loads((directory / "drift.json").read_text())))
    if "train" in results:
        train = results["train"]
        parts.append(f"<h2>Training: {html.escape(train['model'])}</h2><p>{train['examples_per_second']:.0f} examples/s</p>")
        if train["history"]:
            parts.append(_training_plot(train["history"]))
    if "evaluate" in results:
        parts.append("<h2>Challenger vs champion (test split)</h2>" + _comparison(results["evaluate"]))
        challenger = results["evaluate"]["challenger"]
        if challenger.get("roc"):
            parts.append(_roc_plot(challenger["roc"]))
        parts.append("<h3>Calibration (challenger)</h3>" + _calibration_plot(challenger["calibration"]))
    if "gate" in results:
        gate = results["gate"]
        parts.append(f"<h2>Gate: {'passed' if gate['passed'] else 'FAILED'}</h2><p>{html.escape(gate['summary'])}</p>")
        parts.append(_table([[c["name"], c["passed"], c["observed"], c["reason"] if not c["passed"] else ""] for c in gate["checks"]],
                            ["check", "passed", "observed", "reason"]))
    if "promote" in results:
        parts.append(f"<h2>Promotion</h2><pre>{html.escape(json.dumps(results['promote'], indent=2))}</pre>")
    parts.append(f"<h2>Registry after the run ({html.escape(cfg.registry.model_name)})</h2><pre>{html.escape(json.dumps(registry_state, indent=2))}</pre>")
    style = "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style>"
    path = directory / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>homefeed run</title>{style}</head><body>{''.join(parts)}</body></html>")
    tmp.replace(path)
    return path
