"""An online experiment's readout: the statistics, the decision, and what is published.

The per-user table comes from the Spark job (``jobs/experiment_readout.py``); the statistics come
from **tea-tasting** (Welch's t-test on per-user means, the delta method for the ratio metric,
CUPED with the pre-period counts as covariates, the sample-ratio-mismatch test, power analysis),
never from formulas written here. The decision (:func:`decide`) applies ``experiments.decision``:

- ``promote``: the split is trustworthy (SRM p ≥ ``srm_alpha``), each arm has at least
  ``min_users_per_arm`` users over at least ``min_days`` days, the primary metric's interval is
  above 0 and no guardrail is harmed;
- ``keep champion``: the primary metric's interval is below 0, a guardrail is harmed (its
  increase is significant and larger than its tolerance), or the SRM alarm rings (the data are
  untrustworthy: find the logging bug before reading any metric);
- ``continue``: not enough users or days yet, or the primary interval spans 0.

Published under the readout's folder: ``readout.json`` (the names other checks read),
``readout.html`` (verdict first, nothing fetched), ``users/`` (the per-user table); the figures go
to MLflow as metrics on the challenger's version run (``online.<metric>.<figure>``).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homefeed import arms, schema, storage
from homefeed.config import Config, DecisionConfig
from homefeed.experiments import Experiment

log = logging.getLogger(__name__)

PROMOTE, KEEP, CONTINUE = "promote", "keep champion", "continue"
# metric → (numerator column, denominator column or None for a per-user mean)
METRIC_COLUMNS = {
    "repins_per_user": ("repins", None),
    "clicks_per_user": ("clicks", None),
    "closeups_per_user": ("closeups", None),
    "hides_per_user": ("hides", None),
    "repins_per_request": ("repins", "requests"),
}
assert tuple(METRIC_COLUMNS) == schema.EXPERIMENT_METRICS
VARIANT = "variant"


# --------------------------------------------------------------------------- statistics (tea-tasting)
def _metric(name: str, cuped: bool, alpha: float):
    import tea_tasting as tt

    numer, denom = METRIC_COLUMNS[name]
    level = 1 - alpha
    if denom is None:
        return tt.Mean(numer, covariate=f"{numer}_pre" if cuped else None, confidence_level=level, alpha=alpha)
    return tt.RatioOfMeans(numer, denom, f"{numer}_pre" if cuped else None, f"{denom}_pre" if cuped else None,
                           confidence_level=level, alpha=alpha)


def _figures(result) -> dict[str, float]:
    return {
        "abs_effect": float(result.effect_size), "abs_effect_lo": float(result.effect_size_ci_lower),
        "abs_effect_hi": float(result.effect_size_ci_upper), "rel_effect": float(result.rel_effect_size),
        "rel_effect_lo": float(result.rel_effect_size_ci_lower), "rel_effect_hi": float(result.rel_effect_size_ci_upper),
        "p_value": float(result.pvalue),
    }


def _cuped_usable(frame: pd.DataFrame, name: str) -> bool:
    """CUPED needs a covariate with variance (and, for a ratio, a pre-period denominator)."""
    numer, denom = METRIC_COLUMNS[name]
    columns = [f"{numer}_pre"] + ([f"{denom}_pre"] if denom else [])
    return all(frame[c].std() > 0 and frame[c].mean() > 0 for c in columns)


def compare_arms(frame: pd.DataFrame, control: str, treatment: str, alpha: float,
                 metrics: tuple[str, ...] = schema.EXPERIMENT_METRICS) -> dict[str, dict[str, Any]]:
    """Per metric: control, treatment, effects with intervals and p-value, plain and with CUPED."""
    import tea_tasting as tt

    data = frame[frame["arm"].isin([control, treatment])].assign(**{VARIANT: lambda f: f["arm"]})
    if data[VARIANT].nunique() < 2 or data.groupby(VARIANT).size().min() < 2:
        return {}
    plain = tt.Experiment({m: _metric(m, False, alpha) for m in metrics}, variant=VARIANT).analyze(data, control=control)
    usable = [m for m in metrics if _cuped_usable(data, m)]
    cuped = tt.Experiment({m: _metric(m, True, alpha) for m in usable}, variant=VARIANT).analyze(data, control=control) if usable else {}
    out = {}
    for m in metrics:
        result = plain[m]
        out[m] = {"control": float(result.control), "treatment": float(result.treatment), **_figures(result),
                  "cuped": _figures(cuped[m]) if m in usable else None}
    return out


def sample_ratio_p(frame: pd.DataFrame) -> float:
    """The SRM test's p-value: control vs treatment users against the configured 1:1 split."""
    import tea_tasting as tt

    data = frame[frame["arm"].isin([arms.CONTROL, arms.TREATMENT])].assign(**{VARIANT: lambda f: f["arm"]})
    if data[VARIANT].nunique() < 2:
        return 0.0 if len(data) else 1.0
    return float(tt.Experiment({"srm": tt.SampleRatio()}, variant=VARIANT).analyze(data, control=arms.CONTROL)["srm"].pvalue)


def minimum_detectable_effect(frame: pd.DataFrame, metric: str, alpha: float, power: float = 0.8) -> float | None:
    """The smallest relative effect on ``metric`` detectable with ``power`` at the current sample."""
    import tea_tasting as tt

    numer, denom = METRIC_COLUMNS[metric]
    data = frame[frame["arm"].isin([arms.CONTROL, arms.TREATMENT])]
    if len(data) < 4:
        return None
    test = tt.Mean(numer, alpha=alpha, power=power) if denom is None else tt.RatioOfMeans(numer, denom, alpha=alpha, power=power)
    solved = test.solve_power(data, "rel_effect_size")
    value = float(solved[0].rel_effect_size)
    return value if math.isfinite(value) else None


def lift_per_day(daily: pd.DataFrame, alpha: float) -> list[dict[str, Any]]:
    """The relative effect on repins per exposed user, each day on its own (novelty shows as a trend)."""
    import tea_tasting as tt

    out = []
    for day, rows in sorted(daily[daily["arm"].isin([arms.CONTROL, arms.TREATMENT])].groupby("day")):
        if rows["arm"].nunique() < 2 or rows.groupby("arm").size().min() < 2:
            continue
        result = tt.Mean("repins", confidence_level=1 - alpha).analyze(rows, control=arms.CONTROL, treatment=arms.TREATMENT, variant="arm")
        out.append({"day": datetime.fromtimestamp(int(day) * 86_400, tz=timezone.utc).strftime("%Y-%m-%d"),
                    "users": int(len(rows)), **_figures(result)})
    return out


def by_segment(frame: pd.DataFrame, alpha: float) -> dict[str, dict[str, Any]]:
    """The primary comparison within core and non-core users (the seed: gains were largest for non-core)."""
    if "segment" not in frame or frame["segment"].isna().all():
        return {}
    group = np.where(frame["segment"] == schema.CORE_SEGMENT, "core", "non_core")
    return {name: {"users": int((group == name).sum()), "metrics": compare_arms(frame[group == name], arms.CONTROL, arms.TREATMENT, alpha)}
            for name in ("core", "non_core")}


def holdout_lift(frame: pd.DataFrame, alpha: float) -> dict[str, dict[str, Any]]:
    """The champion's users (control and outside the experiment) against the holdout group: the
    long-term effect of ranking at all. Here control = holdout, treatment = the champion's users."""
    champion_users = frame["arm"].isin([arms.CONTROL, arms.NONE])
    data = frame[champion_users | (frame["arm"] == arms.HOLDOUT)].assign(arm=lambda f: np.where(f["arm"] == arms.HOLDOUT, "holdout", "champion"))
    return compare_arms(data, "holdout", "champion", alpha)


# --------------------------------------------------------------------------- the decision
def _decision_figures(metric: dict[str, Any], cuped: bool) -> dict[str, Any]:
    return metric["cuped"] if cuped and metric.get("cuped") else metric


def decide(readout: dict[str, Any], decision: DecisionConfig) -> dict[str, Any]:
    """``{verdict, promote, reasons}`` from a readout's arms, SRM and metrics (see the module doc)."""
    reasons: list[str] = []
    srm = readout["srm"]
    if not srm["ok"]:
        return {"verdict": KEEP, "promote": False, "reasons": [
            f"sample ratio mismatch: p = {srm['p_value']:.2g} < {decision.srm_alpha} against the configured 1:1 split "
            f"({readout['arms']['control']['users']} control vs {readout['arms']['treatment']['users']} treatment users): "
            "the data are untrustworthy (lost exposures or actions, a bot, a broken assignment); find the cause before reading any metric"]}
    metrics = readout["metrics"]
    if decision.primary_metric not in metrics:
        return {"verdict": CONTINUE, "promote": False, "reasons": ["not enough users in both arms to compare yet"]}
    primary = _decision_figures(metrics[decision.primary_metric], decision.cuped)
    harmed = []
    for name, tolerance in decision.guardrails.items():
        figures = _decision_figures(metrics[name], decision.cuped)
        if figures["rel_effect_lo"] > 0 and figures["rel_effect"] > tolerance:
            harmed.append(f"guardrail {name} harmed: {figures['rel_effect']:+.1%} [{figures['rel_effect_lo']:+.1%}, "
                          f"{figures['rel_effect_hi']:+.1%}] (tolerated: {tolerance:+.1%})")
    interval = f"{decision.primary_metric} {primary['rel_effect']:+.2%} [{primary['rel_effect_lo']:+.2%}, {primary['rel_effect_hi']:+.2%}], p = {primary['p_value']:.3g}"
    if primary["rel_effect_hi"] < 0:
        return {"verdict": KEEP, "promote": False, "reasons": [f"the challenger loses: {interval}", *harmed]}
    if harmed:
        return {"verdict": KEEP, "promote": False, "reasons": harmed}
    users = min(readout["arms"]["control"]["users"], readout["arms"]["treatment"]["users"])
    if users < decision.min_users_per_arm:
        reasons.append(f"{users} users in the smaller arm; at least {decision.min_users_per_arm} are needed")
    if readout["days"] < decision.min_days:
        reasons.append(f"{readout['days']} days of data; at least {decision.min_days} are needed (novelty fades)")
    if primary["rel_effect_lo"] <= 0 or primary["p_value"] >= decision.alpha:
        reasons.append(f"no significant effect yet: {interval}")
    if reasons:
        return {"verdict": CONTINUE, "promote": False, "reasons": reasons}
    return {"verdict": PROMOTE, "promote": True, "reasons": [f"the challenger wins: {interval}; SRM p = {srm['p_value']:.2g}; "
                                                              f"no guardrail harmed ({', '.join(decision.guardrails) or 'none set'})"]}


# --------------------------------------------------------------------------- the whole readout
def summarize(experiment: Experiment, users: pd.DataFrame, daily: pd.DataFrame, end_ms: int, cfg: Config,
              mismatched: int = 0) -> dict[str, Any]:
    """``readout.json``'s content from the per-user frames."""
    decision = cfg.experiments.decision
    alpha = decision.alpha
    allocation = experiment.allocation()
    counts = {arm: {"users": int((users["arm"] == arm).sum()), "requests": int(users.loc[users["arm"] == arm, "requests"].sum()),
                    "allocation": allocation[arm]} for arm in (arms.CONTROL, arms.TREATMENT, arms.HOLDOUT)}
    srm_p = sample_ratio_p(users)
    days = int(daily["day"].nunique()) if len(daily) else 0
    readout = {
        "experiment": experiment.name, "champion_version": experiment.champion_version,
        "challenger_version": experiment.challenger_version, "aa_test": experiment.champion_version == experiment.challenger_version,
        "start": _iso(experiment.start_ms), "end": _iso(end_ms), "days": days, "arms": counts,
        "outside_users": int((users["arm"] == arms.NONE).sum()), "served_other_arm_users": mismatched,
        "srm": {"p_value": srm_p, "ok": srm_p >= decision.srm_alpha},
        "metrics": compare_arms(users, arms.CONTROL, arms.TREATMENT, alpha),
        "mde": {"metric": decision.primary_metric, "power": 0.8,
                "rel_effect": minimum_detectable_effect(users, decision.primary_metric, alpha)},
        "daily": lift_per_day(daily, alpha),
        "segments": by_segment(users, alpha),
        "holdout_lift": holdout_lift(users, alpha),
    }
    readout["decision"] = decide(readout, decision)
    return readout


def aa_false_positive_rate(experiment: Experiment, users: pd.DataFrame, repeats: int, cfg: Config, seed: int = 0) -> dict[str, Any]:
    """Re-randomise the same users ``repeats`` times with fresh salts (every one of them was served
    the champion in an A/A test) and count how often the primary metric and the SRM check fire."""
    decision = cfg.experiments.decision
    pool = users[users["arm"] != arms.HOLDOUT].copy()
    rng = np.random.default_rng(seed)
    primary_hits = srm_alarms = 0
    p_values = []
    for _ in range(repeats):
        salt = f"aa-{rng.integers(1 << 62)}-{secrets.token_hex(4)}"
        pool["arm"] = [arms.arm_of(u, 0.0, experiment.holdout_salt, experiment.traffic, salt) for u in pool["user_id"]]
        figures = compare_arms(pool, arms.CONTROL, arms.TREATMENT, decision.alpha, (decision.primary_metric,))
        if figures:
            p = _decision_figures(figures[decision.primary_metric], decision.cuped)["p_value"]
            p_values.append(p)
            primary_hits += p < decision.alpha
        srm_alarms += sample_ratio_p(pool) < decision.srm_alpha
    return {"repeats": repeats, "false_positive_rate": primary_hits / max(len(p_values), 1), "alpha": decision.alpha,
            "srm_alarms": int(srm_alarms), "users": int(len(pool))}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def publish(readout: dict[str, Any], users: pd.DataFrame, out: Path) -> None:
    """``readout.json``, ``readout.html`` and the per-user table under ``out``, each replaced whole."""
    from jobs.experiment_readout import write_users

    out.mkdir(parents=True, exist_ok=True)
    write_users(users, out)
    storage.write_json(out / "readout.json", readout)
    staging = out / ".readout.html.tmp"
    staging.write_text(render_html(readout))
    staging.replace(out / "readout.html")


def mlflow_metrics(readout: dict[str, Any]) -> dict[str, float]:
    """The figures as ``online.<metric>.<figure>`` (CUPED's as ``online_cuped.…``)."""
    values: dict[str, float] = {"online.srm_p_value": readout["srm"]["p_value"],
                                "online.promote": 1.0 if readout["decision"]["promote"] else 0.0}
    for arm in (arms.CONTROL, arms.TREATMENT):
        values[f"online.users_{arm}"] = readout["arms"][arm]["users"]
    for name, m in readout["metrics"].items():
        for key in ("rel_effect", "rel_effect_lo", "rel_effect_hi", "p_value"):
            values[f"online.{name}.{key}"] = m[key]
            if m.get("cuped"):
                values[f"online_cuped.{name}.{key}"] = m["cuped"][key]
    return values


# --------------------------------------------------------------------------- the HTML report
def _plot_daily(daily: list[dict[str, Any]]) -> str:
    """The lift per day with its interval band, as an inline PNG (nothing fetched)."""
    if not daily:
        return "<p>No day with users in both arms yet.</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(daily)))
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.fill_between(x, [100 * d["rel_effect_lo"] for d in daily], [100 * d["rel_effect_hi"] for d in daily], alpha=0.25, color="#1f77b4")
    ax.plot(x, [100 * d["rel_effect"] for d in daily], marker="o", color="#1f77b4")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [d["day"][5:] for d in daily], fontsize=8)
    ax.set_ylabel("repins per user: treatment vs control (%)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return f'<img alt="relative lift per day" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _metric_rows(metrics: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, m in metrics.items():
        cuped = m.get("cuped")
        rows.append(
            f"<tr><td>{name}</td><td>{m['control']:.4g}</td><td>{m['treatment']:.4g}</td><td>{m['abs_effect']:+.4g}</td>"
            f"<td>{m['rel_effect']:+.2%} [{m['rel_effect_lo']:+.2%}, {m['rel_effect_hi']:+.2%}]</td><td>{m['p_value']:.3g}</td>"
            + (f"<td>{cuped['rel_effect']:+.2%} [{cuped['rel_effect_lo']:+.2%}, {cuped['rel_effect_hi']:+.2%}]</td><td>{cuped['p_value']:.3g}</td>"
               if cuped else "<td>–</td><td>–</td>") + "</tr>")
    return ("<table><tr><th>metric</th><th>control</th><th>treatment</th><th>abs. effect</th><th>rel. effect [95% CI]</th>"
            "<th>p</th><th>with CUPED</th><th>p (CUPED)</th></tr>" + "".join(rows) + "</table>")


def render_html(readout: dict[str, Any]) -> str:
    d = readout["decision"]
    colour = {PROMOTE: "#1a7f37", KEEP: "#cf222e"}.get(d["verdict"], "#9a6700")
    arms_rows = "".join(f"<tr><td>{arm}</td><td>{a['users']}</td><td>{a['requests']}</td><td>{a['allocation']:.2%}</td></tr>"
                        for arm, a in readout["arms"].items())
    segments = "".join(f"<h3>{html.escape(name)} users ({s['users']})</h3>{_metric_rows(s['metrics'])}" for name, s in readout["segments"].items())
    mde = readout["mde"]["rel_effect"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Experiment {html.escape(readout['experiment'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1 style="color:{colour}">Verdict: {html.escape(d['verdict'])}</h1>
<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in d['reasons'])}</ul>
<p>Experiment <b>{html.escape(readout['experiment'])}</b>: challenger v{html.escape(readout['challenger_version'])} against champion
v{html.escape(readout['champion_version'])}{' (an A/A test)' if readout['aa_test'] else ''}, {readout['start']} → {readout['end']},
{readout['days']} days. SRM p = {readout['srm']['p_value']:.3g} ({'ok' if readout['srm']['ok'] else 'ALARM'}).
Minimum detectable effect on {readout['mde']['metric']} at 80% power: {'–' if mde is None else f'{mde:.1%}'}.</p>
<h2>Lift per day</h2>{_plot_daily(readout['daily'])}
<h2>Metrics (treatment vs control)</h2>{_metric_rows(readout['metrics'])}
<h2>Arms</h2><table><tr><th>arm</th><th>users</th><th>requests</th><th>configured share</th></tr>{arms_rows}</table>
<h2>By segment</h2>{segments or '<p>No users snapshot: segments unknown.</p>'}
<h2>Holdout: the champion's users vs the holdout group</h2>{_metric_rows(readout['holdout_lift']) if readout['holdout_lift'] else '<p>Too few holdout users.</p>'}
</body></html>"""


def run(cfg: Config, experiment: Experiment, spark, log_root: str, raw_root: str | None, out: Path,
        end_ms: int | None = None, log_to_mlflow: bool = True) -> dict[str, Any]:
    """The readout end to end: Spark's tables → statistics → decision → published files → MLflow."""
    from homefeed import registry
    from jobs import experiment_readout as job

    end_ms = end_ms or experiment.end_ms or int(datetime.now(timezone.utc).timestamp() * 1000)
    window = job.Window(experiment.name, experiment.holdout_fraction, experiment.holdout_salt, experiment.traffic, experiment.salt,
                        experiment.start_ms, end_ms, cfg.experiments.pre_period_days)
    tables = job.user_tables(spark, log_root, raw_root, window)
    readout = summarize(experiment, tables.users, tables.daily, end_ms, cfg, tables.mismatched)
    publish(readout, tables.users, out)
    if log_to_mlflow:
        registry.log_version_metrics(cfg, experiment.challenger_version, mlflow_metrics(readout))
    log.info("experiment %s: %s (%s)", experiment.name, readout["decision"]["verdict"], "; ".join(readout["decision"]["reasons"]))
    return readout



def read_out(cfg: Config, name: str | None = None, raw_root: str | None = None, out: Path | None = None) -> dict[str, Any] | None:
    """The readout of experiment ``name`` (default: the running one; None when none runs), with
    the service's exposure and event logs, and the champion's raw log unless ``raw_root`` is given."""
    from homefeed import experiments
    from homefeed.event_log import log_root
    from homefeed.spark import session

    experiment = experiments.get(cfg, name) if name else experiments.running(cfg)
    if experiment is None:
        return None
    raw_root = raw_root or experiments.default_raw_root(cfg, experiment)
    target = out or experiments.readout_dir(cfg, experiment.name)
    result = run(cfg, experiment, session(cfg, "experiment-readout"), str(log_root(cfg.serving.event_log, cfg.storage.root)), raw_root, target)
    return {**result, "report": str(target / "readout.html")}
