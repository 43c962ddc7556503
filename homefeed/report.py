"""One self-contained HTML report per retraining run (plots embedded as PNG, a small inline
stylesheet: nothing is fetched, so it reads the same offline and as an e-mail attachment).

It opens with the verdict (promoted, registered, stopped by the gate, or failed at a stage with
its error), then the lineage (data window, raw root, MLflow run and model version, config, commit,
stage timings), what each stage recorded (data volumes and checks with Data Docs links, training
curves, challenger vs champion per head and slice with intervals and the paired change, calibration,
the gate's checks with their reasons) and the registry after the run. Stages that did not run are
listed as such, so a failed run still gets a report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import subprocess
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homefeed import monitor_records, schema
from homefeed.config import Config


# One colour per head in every plot (matplotlib's cycle would give a head another colour in each).
HEAD_COLOURS = {head: f"C{i}" for i, head in enumerate(schema.HEADS)}


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"/>'


def _training_plot(history: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(10, 3))
    epochs = [h["epoch"] + 1 for h in history]  # epochs as people count them: 1, 2, …
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", color="black")
    loss_ax.set(title="train loss", xlabel="epoch")
    for head in schema.HEADS:
        auc_ax.plot(epochs, [h["val_auc"].get(head) for h in history], marker="o", label=head, color=HEAD_COLOURS[head])
    auc_ax.set(title="validation AUC", xlabel="epoch")
    for ax in (loss_ax, auc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(epochs) + 0.5)  # one epoch: a point in the middle, not an axis of 0.945 … 1.050
    auc_ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the lines, never over them
    out = _png(fig)
    plt.close(fig)
    return out


def _calibration_plot(calibration: dict[str, list[dict[str, float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(calibration), figsize=(3 * len(calibration), 3))
    for ax, (head, rows) in zip(axes, calibration.items()):
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", color=HEAD_COLOURS.get(head, "C0"))
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
        ax.plot(curve["fpr"], curve["tpr"], label=head, color=HEAD_COLOURS.get(head, "C0"))
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


LOWER_IS_BETTER = {schema.NEGATIVE_HEAD}  # HIT@k of hide: a hidden pin ranked in the top k is a miss


def _delta(paired: dict[str, Any] | None, head: str, metric: str) -> str:
    if not paired or head not in paired:
        return "-"
    change, low, high = paired[head][metric]
    if change != change:
        return "-"
    return f"{change:+.4f} [{low:+.4f}, {high:+.4f}]" if low == low else f"{change:+.4f}"


def _comparison(evaluation: dict[str, Any]) -> str:
    challenger, champion = evaluation["challenger"], evaluation.get("champion")
    paired = evaluation.get("paired_vs_champion")
    k = challenger["hit_k"]
    rows = []
    for scope, metrics in [("overall", challenger["overall"]), *challenger["slices"].items()]:
        champ = (champion["overall"] if scope == "overall" else champion["slices"][scope]) if champion else {}
        intervals = challenger["intervals"][scope]
        for head in schema.HEADS:
            overall = scope == "overall"
            lower = " (lower is better)" if head in LOWER_IS_BETTER else ""
            against_auc = [champ.get(head, {}).get("auc", "-"), _delta(paired, head, "auc") if overall else ""]
            against_hit = [champ.get(head, {}).get("hit", "-"), _delta(paired, head, "hit") if overall else ""]
            rows.append([scope, head,
                         _with_interval(metrics[head]["auc"], intervals[head]["auc"]), *(against_auc if champion else []),
                         _with_interval(metrics[head]["hit"], intervals[head]["hit"]) + lower, *(against_hit if champion else []),
                         _with_interval(metrics[head]["gauc"], intervals[head]["gauc"]) if "gauc" in metrics[head] else "-",
                         _with_interval(metrics[head]["logloss"], intervals[head]["logloss"])])
    against_auc = ["AUC champion", "AUC change [95%, paired]"]
    against_hit = [f"HIT@{k} champion", f"HIT@{k} change [95%, paired]"]
    header = ["slice", "head", "AUC challenger [95%]", *(against_auc if champion else []),
              f"HIT@{k} challenger [95%]", *(against_hit if champion else []),
              "AUC within requests challenger [95%]", "log loss challenger [95%]"]
    first = "" if champion else "<p>No champion yet: this is the first model, so there is nothing to compare it with.</p>"
    note = ("<p>Intervals: percentile bootstrap over requests. A change's interval is paired: both models scored on the "
            "same resampled requests, so it is narrower than the two separate intervals suggest. AUC is higher-is-better "
            f"for every head; HIT@{k} is too, except for <b>hide</b>, where a hidden pin in the top {k} is a miss. "
            "AUC within requests: each request's candidates ordered by the head's score, averaged over the requests "
            "with a positive and a negative (what orders one feed, which a user's overall propensity cannot move). "
            "Every metric's interval is in evaluate.json.</p>")
    return first + _table(rows, header) + note


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


# What to do next, by the failure's type (``<stage>.failed.json`` records it).
NEXT_STEP = {
    "ValidationFailed": "the data broke the suite named above: its Data Docs page shows each failed expectation; fix "
                        "the data (or the suite's bounds in the config, if the data is right) and run again",
    "StorageError": "a dataset is missing or damaged, as named above: rebuild it (re-run the stage that writes it)",
    "PromotionRefused": "the registry refused the change, as said above: `homefeed registry show`, then promote by hand if intended",
    "RegistryUnavailable": "MLflow could not be reached: check registry.tracking_uri (or MLFLOW_TRACKING_URI) and run again",
}
DEFAULT_NEXT_STEP = "the stage's log has the whole error (run.log in this run's directory, or the task's log in Airflow); run again once fixed"


def next_step(failure: dict[str, Any]) -> str:
    return NEXT_STEP.get(failure.get("type") or "", DEFAULT_NEXT_STEP)


def _status(stage: str, results: dict[str, Any], failures: dict[str, Any], timings: dict[str, Any]) -> list[str]:
    timing = timings.get(stage)
    when = [_when(timing["started_at"]), f"{timing['seconds']:.1f} s"] if timing else ["", ""]
    if stage in results:
        return ["done", *when]
    if stage in failures:
        return [f"FAILED: {failures[stage]['error'].splitlines()[0] if failures[stage]['error'] else ''}", *when]
    return ["did not run", "", ""]


def _when(value: Any) -> str:
    """A timestamp people read: ISO text or epoch milliseconds → "2026-11-30 08:02:29 UTC"."""
    moment = datetime.fromtimestamp(value / 1000, timezone.utc) if isinstance(value, (int, float)) else datetime.fromisoformat(str(value))
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def verdict(results: dict[str, Any], failures: dict[str, Any], stages: tuple[str, ...]) -> tuple[str, str]:
    """(css class, headline) of the whole run: what a reader needs first."""
    if failures:
        stage = next(s for s in stages if s in failures)
        return "failed", f"FAILED at {stage}: {(failures[stage]['error'] or 'unknown error').splitlines()[0]}"
    if "promote" in results:
        promoted = results["promote"]
        if promoted["promoted"]:
            return "passed", f"PASSED: v{promoted['version']} is the champion"
        return "passed", f"PASSED: v{promoted['version']} registered as challenger ({promoted.get('reason', 'not promoted')})"
    if "gate" in results and not results["gate"]["passed"]:
        return "stopped", f"NOT PROMOTED: {results['gate']['summary']}"
    if not results:
        return "stopped", "DID NOT RUN: no stage ran (a skipped run says why in its task log)"
    last = [s for s in stages if s in results][-1]
    return "stopped", f"INCOMPLETE: the last stage done is {last}"


def _commit() -> str:
    """The code's git commit (with "+changes" when the tree differs), or "unknown" outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" +changes" if dirty.stdout.strip() else "")


def _lineage(cfg: Config, directory: Path, results: dict[str, Any]) -> str:
    from homefeed import registry

    rows = [["run directory", str(directory.resolve())]]
    if "check_raw" in results:
        rows.append(["raw data", results["check_raw"]["raw"]])
    if "build_instances" in results:
        built = results["build_instances"]
        rows += [["data window", f"{built['window']['start']} .. {built['window']['end']}"], ["instances", built["instances"]]]
    marker = directory / "mlflow_run.json"
    if marker.exists():
        run_id = json.loads(marker.read_text())["run_id"]
        rows += [["MLflow", f"{registry.tracking_uri(cfg)} (experiment {cfg.registry.experiment})"], ["MLflow run", run_id]]
    if "register" in results:
        rows.append(["model version", f"{cfg.registry.model_name} v{results['register']['version']}"])
    rows += [["config", '<a href="config.json">config.json</a> (the whole typed config of this run)'], ["code commit", _commit()]]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v if k == 'config' else html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Lineage</h2><table class='lineage'>{body}</table>"


def _promotion(record: dict[str, Any]) -> str:
    rows = [[k, _when(v) if k == "at_ms" else v] for k, v in record.items()]
    return "<h2>Promotion</h2>" + _table([[("at" if k == "at_ms" else k), v] for k, v in rows], ["", ""])


def _registry(name: str, state: dict[str, Any]) -> str:
    rows = [[alias, "none" if state.get(alias) is None else f"v{state[alias]}"] for alias in ("champion", "challenger", "previous")]
    holdout = state.get("holdout") or {}
    rows += [[key, value] for key, value in holdout.items()]
    return f"<h2>Registry after the run ({html.escape(name)})</h2>" + _table(rows, ["", ""])


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.lineage th{width:12em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
.verdict{padding:.7em 1em;border-radius:4px;font-weight:600;font-size:1.1em}
.verdict.passed{background:#e3f4e6;border:1px solid #3a8a4a}.verdict.failed{background:#fbe4e4;border:1px solid #b33}
.verdict.stopped{background:#fdf3dc;border:1px solid #b8860b}
"""


@dataclass(frozen=True)
class RunRecords:
    """What a run directory holds, read once: each stage's result, timing and failure record."""

    cfg: Config
    directory: Path
    stages: tuple[str, ...]
    results: dict[str, Any]
    timings: dict[str, Any]
    failures: dict[str, Any]
    registry_state: dict[str, Any]

    @classmethod
    def read(cls, cfg: Config, directory: Path, stages: tuple[str, ...], registry_state: dict[str, Any]) -> "RunRecords":
        def load(path: Path) -> Any:
            return json.loads(path.read_text())

        results = {s: load(directory / f"{s}.json") for s in stages if (directory / f"{s}.json").exists()}
        timings = {s: load(directory / "timings" / f"{s}.json") for s in stages if (directory / "timings" / f"{s}.json").exists()}
        # A stage that failed and then succeeded on a retry is done, not failed.
        failures = {s: load(directory / f"{s}{schema.STAGE_FAILED_SUFFIX}") for s in stages
                    if s not in results and (directory / f"{s}{schema.STAGE_FAILED_SUFFIX}").exists()}
        return cls(cfg, directory, stages, results, timings, failures, registry_state)


def _why_this_run(run: RunRecords) -> str:
    notice = monitor_records.stale_notice(run.cfg, run.results.get("evaluate", {}).get("champion_version"))
    if not notice:
        return ""
    return (f"<h2>Why this run</h2><p>The staleness monitor marked champion v{html.escape(notice['model_version'])} "
            f"stale on {html.escape(notice['day'])}: {html.escape(notice['reason'])}</p>")


def _failure(run: RunRecords) -> str:
    if not run.failures:
        return ""
    first = next(s for s in run.stages if s in run.failures)
    return (f'<h2 class="failed">FAILED at {html.escape(first)}</h2><pre>{html.escape(run.failures[first]["error"])}</pre>'
            f'<p id="next-step"><b>What to do next:</b> {html.escape(next_step(run.failures[first]))}.</p>')


def _stages(run: RunRecords) -> str:
    rows = [[s, *_status(s, run.results, run.failures, run.timings)] for s in run.stages]
    return "<h2>Stages</h2>" + _table(rows, ["stage", "status", "started", "took"])


def _data(run: RunRecords) -> str:
    if "build_instances" not in run.results:
        return ""
    splits = sorted(run.results["build_instances"]["splits"].items())
    return "<h2>Data</h2>" + _table([[split, info["rows"], *[info["label_rates"][h] for h in schema.HEADS]] for split, info in splits],
                                    ["split", "rows", *[f"rate {h}" for h in schema.HEADS]])


def _checks(run: RunRecords) -> str:
    parts = []
    for stage in ("validate_raw", "validate_instances"):
        if stage in run.results:
            docs = os.path.relpath(run.results[stage]["data_docs"], run.directory)  # the report sits in the run directory
            parts.append(f"<h2>Checks: {stage}</h2><pre>{html.escape(chr(10).join(run.results[stage]['suites']))}</pre>"
                         f'<p><a href="{html.escape(docs)}">Data Docs</a> (every suite of the run)</p>')
    return "".join(parts)


def _drift_section(run: RunRecords) -> str:
    path = run.directory / "drift.json"
    return _drift(json.loads(path.read_text())) if path.exists() else ""


def _training(run: RunRecords) -> str:
    if "train" not in run.results:
        return ""
    train = run.results["train"]
    head = f"<h2>Training: {html.escape(train['model'])}</h2><p>{train['examples_per_second']:,.0f} examples/s</p>"
    return head + (_training_plot(train["history"]) if train["history"] else "")


def _evaluation(run: RunRecords) -> str:
    if "evaluate" not in run.results:
        return ""
    evaluation = run.results["evaluate"]
    champion_version = evaluation.get("champion_version")
    against = f"champion v{champion_version}" if champion_version else "no champion (first model)"
    challenger = evaluation["challenger"]
    return (f"<h2>Challenger vs {html.escape(against)} (test split)</h2>" + _comparison(evaluation)
            + (_roc_plot(challenger["roc"]) if challenger.get("roc") else "")
            + "<h3>Calibration (challenger)</h3>" + _calibration_plot(challenger["calibration"]))


def _gate(run: RunRecords) -> str:
    if "gate" not in run.results:
        return ""
    gate = run.results["gate"]
    return (f"<h2>Gate: {'passed' if gate['passed'] else 'FAILED'}</h2><p>{html.escape(gate['summary'])}</p>"
            + _table([[c["name"], c["passed"], c["observed"], c.get("reason", "")] for c in gate["checks"]],
                     ["check", "passed", "observed", "reason"]))


# The report, top to bottom: the verdict first, then what a reader looks for next.
SECTIONS = (_why_this_run, _failure, lambda run: _lineage(run.cfg, run.directory, run.results), _stages, _data, _checks,
            _drift_section, _training, _evaluation, _gate,
            lambda run: _promotion(run.results["promote"]) if "promote" in run.results else "",
            lambda run: _registry(run.cfg.registry.model_name, run.registry_state))


def write(cfg: Config, directory: Path, registry_state: dict[str, Any], stages: tuple[str, ...]) -> Path:
    """``stages``: the pipeline's stage names in order (``homefeed.pipeline.STAGE_NAMES``)."""
    from homefeed import storage

    run = RunRecords.read(cfg, directory, stages, registry_state)
    storage.write_json(directory / "config.json", cfg.redacted())
    kind, headline = verdict(run.results, run.failures, stages)
    body = (f"<h1>homefeed retraining run {html.escape(directory.name)}</h1>"
            f'<p class="verdict {kind}" id="verdict">{html.escape(headline)}</p>' + "".join(section(run) for section in SECTIONS))
    path = directory / "report.html"
    storage.write_text(path, f"<!doctype html><html><head><meta charset='utf-8'><title>homefeed run {html.escape(directory.name)}: "
                             f"{html.escape(headline)}</title><style>{STYLE}</style></head><body>{body}</body></html>")
    return path
