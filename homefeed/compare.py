"""Model comparison: every architecture on the same instances, seeds, budget and test days.

Instances are built once from the raw root: training days are those before ``test_from``
(the last of them held out for validation and early stopping), test days those from it. Each
model is trained with the same config apart from ``train.model``, scored on the same unsampled
test split, and written to one table (``comparison.csv`` / ``.md`` / ``.png``) and one MLflow
experiment (a run per model). With ``seeds`` > 1 each neural model is also trained with that many
seeds (``train.seed`` + 0, 1, …): ``seeds.csv`` and an "Across seeds" table give the mean and the
spread, so that a seed's luck is not read as an architecture's merit.
"""

from __future__ import annotations

import csv
import math
import time
from datetime import date
from pathlib import Path
from typing import Any

from homefeed import schema, storage
from homefeed.config import Config

EXPERIMENT_SUFFIX = "-compare"
METRIC_COLUMNS = ("auc", "hit", "gauc", "logloss")
CONTROL = "none"  # the ranker without a sequence: what every other model is paired against by default


def paired_prefix(reference: str) -> str:
    """Column prefix of the differences against ``reference``: ``d_`` for the control, else ``d_vs_<model>_``."""
    return "d_" if reference == CONTROL else f"d_vs_{reference}_"


def raw_days(raw: str) -> list[date]:
    days = storage.landed_days(raw)
    if not days:
        raise storage.StorageError(f"no {schema.IMPRESSIONS} partitions under {raw}")
    return days


def split_config(cfg: Config, days: list[date], test_from: date) -> Config:
    """Instances config whose test split is exactly the days from ``test_from``."""
    test_days = sum(1 for d in days if d >= test_from)
    train_days = len(days) - test_days - 1
    if test_days == 0 or train_days < 1:
        raise ValueError(f"--test-from {test_from} leaves {test_days} test and {max(train_days, 0)} training days in {days[0]}..{days[-1]}; "
                         "need at least one of each plus one validation day")
    return cfg.with_overrides({"instances": {"test_days": test_days, "validation_days": 1}})


def row(model: str, evaluation: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One table row: each metric per head with its 95% interval."""
    k = evaluation["hit_k"]
    out: dict[str, Any] = {"model": model}
    for head in schema.HEADS:
        for metric in METRIC_COLUMNS:
            name = f"{'hit%d' % k if metric == 'hit' else metric}_{head}"
            lo, hi = evaluation["intervals"]["overall"][head][metric]
            out[name], out[f"{name}_lo"], out[f"{name}_hi"] = evaluation["overall"][head][metric], lo, hi
        out[f"hit{k}_requests_{head}"] = evaluation["overall"][head].get("hit_requests", 0)
        out[f"gauc_requests_{head}"] = evaluation["overall"][head].get("gauc_requests", 0)
    out["train_seconds"] = round(seconds, 1)
    return out


def with_paired_differences(rows: list[dict[str, Any]], differences: dict[str, dict[str, dict[str, list[float]]]], k: int,
                            reference: str = CONTROL) -> None:
    """Add ``d_auc_<head>`` / ``d_hit<k>_<head>`` / ``d_gauc_<head>`` (minus ``reference``, paired) with
    ``_lo``/``_hi``; against another reference than the control the names start ``d_vs_<reference>_``."""
    prefix = paired_prefix(reference)
    for r in rows:
        for head in schema.HEADS:
            for metric in ("auc", "hit", "gauc"):
                name = f"{prefix}{'hit%d' % k if metric == 'hit' else metric}_{head}"
                value = differences.get(r["model"], {}).get(head, {}).get(metric, [0.0, 0.0, 0.0] if r["model"] == reference else [math.nan] * 3)
                r[name], r[f"{name}_lo"], r[f"{name}_hi"] = value


def _metric_columns(k: int) -> list[str]:
    """What the tables show: AUC per head, HIT@k for the primary and the negative head, and the
    primary head's AUC within requests (what orders one request's candidates, with many more
    requests than HIT@k counts)."""
    return [f"auc_{h}" for h in schema.HEADS] + [f"hit{k}_{schema.PRIMARY_HEAD}", f"hit{k}_{schema.NEGATIVE_HEAD}",
                                                 f"gauc_{schema.PRIMARY_HEAD}"]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)


def write_tables(rows: list[dict[str, Any]], out: Path, k: int, title: str, references: tuple[str, ...] = (CONTROL,)) -> None:
    with (out / "comparison.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    columns = _metric_columns(k)
    lines = [f"# {title}", "", "95% intervals: percentile bootstrap over requests. "
             f"HIT@{k} counts requests with a positive and more than {k} candidates; n = how many. "
             f"HIT@{k} {schema.NEGATIVE_HEAD}: lower is better (ranked by the feed utility). "
             "gauc: the AUC within requests (each request's candidates by the head's score, averaged over requests "
             "with a positive and a negative, weighted by their candidates); n = how many.", "",
             "| model | " + " | ".join(columns) + " | train s |", "| --- |" + " ---: |" * (len(columns) + 1)]

    def cell(r: dict[str, Any], c: str) -> str:
        text = f"{_fmt(r[c])} [{_fmt(r[c + '_lo'])}, {_fmt(r[c + '_hi'])}]"
        for counted in (f"hit{k}_", "gauc_"):
            if c.startswith(counted):
                text += f" n={r.get(c.replace(counted, counted + 'requests_'), '?')}"
        return text

    for r in rows:
        cells = [cell(r, c) for c in columns]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['train_seconds']} |")
    for reference in references:
        if any(f"{paired_prefix(reference)}auc_{schema.PRIMARY_HEAD}" in r for r in rows):
            lines += _paired_table(rows, k, reference)
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "comparison.png", k)


def _paired_table(rows: list[dict[str, Any]], k: int, reference: str = CONTROL) -> list[str]:
    prefix = paired_prefix(reference)
    columns = [f"{prefix}{c}" for c in _metric_columns(k)]
    what = " (the ranker without a sequence)" if reference == CONTROL else ""
    lines = ["", f"## Paired difference against `{reference}`{what}", "",
             f"Model minus `{reference}` on the same bootstrap replicates of the scored requests; an interval that excludes 0 "
             "is a difference the test days can tell apart. `*` marks it.", "",
             "| model | " + " | ".join("d_" + c.removeprefix(prefix) for c in columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for r in rows:
        if r["model"] == reference:
            continue
        cells = []
        for c in columns:
            lo, hi = r[c + "_lo"], r[c + "_hi"]
            mark = "*" if (lo > 0 or hi < 0) else ""
            cells.append(f"{r[c]:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines


def _plot(rows: list[dict[str, Any]], path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [f"auc_{schema.PRIMARY_HEAD}", f"gauc_{schema.PRIMARY_HEAD}", f"hit{k}_{schema.PRIMARY_HEAD}", f"hit{k}_{schema.NEGATIVE_HEAD}"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.5 * len(rows) + 2))
    names = [r["model"] for r in rows]
    for axis, metric in zip(axes, metrics):
        values = [r[metric] for r in rows]
        errors = [[v - r[f"{metric}_lo"] for v, r in zip(values, rows)], [r[f"{metric}_hi"] - v for v, r in zip(values, rows)]]
        axis.barh(names, values, xerr=errors, color="#4c72b0", capsize=3)
        axis.set_title(metric + (" (lower is better)" if metric.endswith(schema.NEGATIVE_HEAD) else ""))
        low = min(r[f"{metric}_lo"] for r in rows)
        axis.set_xlim(max(0.0, low - 0.02), None)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


BASELINES = ("lr", "gbdt")  # deterministic given the data: one seed is all they have


def seed_spread(seed_rows: dict[str, list[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """Per model: mean, min and max over its seeds of each AUC and HIT@k (a seed's luck, visible)."""
    columns = _metric_columns(k)
    out = []
    for model, rows in seed_rows.items():
        summary: dict[str, Any] = {"model": model, "seeds": len(rows)}
        for c in columns:
            values = [r[c] for r in rows if not math.isnan(r[c])]
            summary[c] = sum(values) / len(values) if values else math.nan
            summary[f"{c}_min"], summary[f"{c}_max"] = (min(values), max(values)) if values else (math.nan, math.nan)
        out.append(summary)
    return out


def _seed_table(spread: list[dict[str, Any]], k: int) -> list[str]:
    columns = _metric_columns(k)
    lines = ["", "## Across seeds", "", "Mean over the seeds [lowest, highest]; the tables above are seed 0's. A gap between "
             "two models smaller than their seed spread is luck, whatever the bootstrap interval says.", "",
             "| model | seeds | " + " | ".join(columns) + " |", "| --- | ---: |" + " ---: |" * len(columns)]
    for r in spread:
        cells = [f"{_fmt(r[c])} [{_fmt(r[c + '_min'])}, {_fmt(r[c + '_max'])}]" for c in columns]
        lines.append(f"| {r['model']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return lines


SEQUENCE_AT = ("impression", "request")


def _check_arguments(models: list[str], split: str, sequence_at: str, paired_against: list[str] | None) -> tuple[str, ...]:
    """Refuse what cannot be compared; the reference models (``none`` by default, when compared)."""
    from models import MODEL_NAMES

    if split not in ("test", "validation"):
        raise ValueError(f"--split must be test or validation, got {split!r}")
    if sequence_at not in SEQUENCE_AT:
        raise ValueError(f"--sequence-at must be one of {', '.join(SEQUENCE_AT)}, got {sequence_at!r}")
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {list(MODEL_NAMES)}")
    references = tuple(paired_against) if paired_against is not None else tuple(m for m in models if m == CONTROL)
    if not set(references) <= set(models):
        raise ValueError(f"--paired-against {[r for r in references if r not in models]} must be among --models {models}")
    return references


def _build(raw: str, out: Path, cfg: Config, split: str, sequence_at: str):
    """The instances, built once for every model, and the split they are scored on."""
    from homefeed.data import read_instances, with_request_sequences
    from homefeed.spark import session
    from jobs import build_instances as job

    days = raw_days(raw)
    out.mkdir(parents=True, exist_ok=True)
    instances, spark = out / "instances", session(cfg, "compare")
    job.run(spark, raw, str(instances), cfg, days[0], days[-1], pin_embeddings=_pin_embeddings(spark, raw, out, cfg, days[-1]))
    scored = read_instances(str(instances), split)
    return instances, with_request_sequences(scored) if sequence_at == "request" else scored


def _pin_embeddings(spark, raw: str, out: Path, cfg: Config, last_day: date) -> str | None:
    """With ``embeddings.method`` set, the pins' embeddings learned before the first validation day
    (as the pipeline's embed_pins stage learns them); None: the content vectors."""
    if cfg.embeddings.method == "none":
        return None
    from jobs import build_instances, embed_pins

    cutoff = build_instances.last_training_day(last_day, cfg.instances)
    embed_pins.run(spark, raw, str(out / "pin_embeddings"), cfg, cutoff)
    return str(out / "pin_embeddings")


def _train_and_score(model: str, seeds: int, instances: Path, test, out: Path, cfg: Config) -> tuple[list[dict[str, Any]], Any, Config]:
    """One model, each seed trained and scored: (a row per seed, the first seed's scores, its config)."""
    from homefeed import evaluate, train as trainer
    from models.zoo import load_scorer

    rows, first_scores, model_cfg = [], None, cfg
    for seed in range(1 if model in BASELINES else seeds):
        model_cfg = cfg.with_overrides({"train": {"model": model, "seed": cfg.train.seed + seed}})
        started = time.perf_counter()
        result = trainer.train(str(instances), str(out / "models" / (model if seed == 0 else f"{model}-seed{seed}")), model_cfg)
        seconds = time.perf_counter() - started
        scores = load_scorer(result.model_dir).predict(test)
        rows.append(row(model, evaluate.evaluate_probabilities(test, scores, model_cfg), seconds))
        first_scores = scores if seed == 0 else first_scores
    return rows, first_scores, model_cfg


def _log_model_run(tracking: Config, parent: str, model: str, model_cfg: Config, first_row: dict[str, Any], out: Path, started_ms: int) -> str:
    """The model's MLflow run, nested under the comparison's and lasting its training; its id."""
    from homefeed import registry

    run_id = registry.start_run(tracking, model, {"homefeed.compare": str(out)}, started_ms=started_ms, parent_run_id=parent)
    registry.log_train_params(tracking, run_id, model_cfg.train)
    registry.log_metrics(tracking, run_id, {key.replace("@", ""): value for key, value in first_row.items()
                                            if isinstance(value, float)})  # NaN left out there
    registry.end_run(tracking, run_id)
    return run_id


def _write_seed_spread(rows: list[dict[str, Any]], seed_rows: dict[str, list[dict[str, Any]]], out: Path, hit_k: int) -> None:
    spread = seed_spread(seed_rows, hit_k)
    with (out / "comparison.md").open("a") as handle:
        handle.write("\n".join(_seed_table(spread, hit_k)) + "\n")
    with (out / "seeds.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["seed", *rows[0]])
        writer.writeheader()
        writer.writerows({"seed": i, **r} for per_model in seed_rows.values() for i, r in enumerate(per_model))


def _compare_models(raw: str, models: list[str], test_from: date, out: Path, cfg: Config, seeds: int, split: str,
                    sequence_at: str, references: tuple[str, ...], tracking: Config, parent: str) -> list[dict[str, Any]]:
    from homefeed import evaluate, registry

    instances, test = _build(raw, out, cfg, split, sequence_at)
    rows, probs, runs, seed_rows = [], {}, {}, {}
    for model in models:
        started_ms = int(time.time() * 1000)
        seed_rows[model], probs[model], model_cfg = _train_and_score(model, seeds, instances, test, out, cfg)
        rows.append(seed_rows[model][0])
        runs[model] = _log_model_run(tracking, parent, model, model_cfg, rows[-1], out, started_ms)
    if len(probs) > 1 and references:
        for reference, differences in evaluate.paired_differences_against(test, probs, references, cfg).items():
            with_paired_differences(rows, differences, cfg.evaluation.hit_k, reference)
        for r in rows:
            registry.log_metrics(tracking, runs[r["model"]], {key: value for key, value in r.items()
                                                               if key.startswith("d_") and isinstance(value, float)})
    scored = f"scored on the {split} split" + (", each request with its first candidate's sequence" if sequence_at == "request" else "")
    write_tables(rows, out, cfg.evaluation.hit_k, f"homefeed compare: {raw} (test from {test_from}; {scored})", references)
    if seeds > 1:
        _write_seed_spread(rows, seed_rows, out, cfg.evaluation.hit_k)
    return rows


def compare(raw: str, models: list[str], test_from: date, out: Path, cfg: Config, seeds: int = 1,
            split: str = "test", sequence_at: str = "impression", paired_against: list[str] | None = None) -> list[dict[str, Any]]:
    """``split="validation"`` scores the validation day instead: for choosing knobs without
    touching the test days (every table then describes the validation day).

    ``sequence_at="request"`` scores every candidate of a request with the sequence as of the
    request's first candidate (:func:`homefeed.data.with_request_sequences`), as a feed request
    is served; "impression" (the default) with each row's own. Training is the same either way.

    ``paired_against``: the models every other is paired against (one table each); by default the
    control, ``none``, when it is compared."""
    from homefeed import registry

    references = _check_arguments(models, split, sequence_at, paired_against)
    cfg = split_config(cfg, raw_days(raw), test_from)
    tracking = cfg.with_overrides({"registry": {"experiment": cfg.registry.experiment + EXPERIMENT_SUFFIX}})
    # One parent run per comparison, each model's run nested under it with its true training time.
    parent = registry.start_run(tracking, out.name, {"homefeed.compare": str(out)})
    try:
        rows = _compare_models(raw, models, test_from, out, cfg, seeds, split, sequence_at, references, tracking, parent)
    except BaseException as exc:
        registry.end_run(tracking, parent, error=f"{type(exc).__name__}: {exc}")
        raise
    registry.log_artifact(tracking, parent, out / "comparison.md")
    registry.end_run(tracking, parent)
    return rows
