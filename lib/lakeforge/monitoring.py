"""Monitoring: drift against the champion's training baseline, performance on matured labels, quality trends,
and the retraining policy. Pure functions on pandas/numpy (no Spark, no I/O), but for the two stages' work at
the end: `monitor` reads the tables, calls `night` (which applies the rest), writes `ops.monitoring` and
publishes the report; `retrain` records a retrain's outcome there.

Drift: the population stability index (PSI) of each feature, numeric features binned at the baseline's
deciles, categorical features by value; the two-sample Kolmogorov-Smirnov statistic of numeric features;
the same PSI for the model's predictions (prediction drift). The baseline is the training set's
distribution, stored with the model when it is trained, so drift is always measured against the
champion's own training data.

Performance: a prediction for score date d can be judged only once its label is known, at d + horizon.
Only those matured score dates ever enter a performance metric (`matured`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from lakeforge import catalog, estimation, metrics
from lakeforge.errors import DataError

MONITORING = catalog.MONITORING
SCHEMA = ("monitor_date date, pipeline string, model_version int, kind string, name string, segment string, "
          "window_start date, window_end date, metric string, value double, threshold double, breached boolean, "
          "rows bigint, detail string, run_id string")
COLUMNS = [part.strip().split(" ")[0] for part in SCHEMA.split(",")]

PSI_EPSILON = 1e-4   # an empty bin counts as this share, so one empty bin does not make PSI infinite
BASELINE_SAMPLE = 5000
DECILES = np.linspace(0.1, 0.9, 9)


# ---------------------------------------------------------------- drift statistics


def quantile_edges(baseline: np.ndarray, quantiles: np.ndarray = DECILES) -> list[float]:
    """Interior bin edges at the baseline's quantiles (duplicates dropped: a count feature has few distinct values)."""
    values = np.asarray(baseline, dtype="float64")
    values = values[~np.isnan(values)]
    if values.size == 0:
        return []
    return sorted(set(np.quantile(values, quantiles).tolist()))


def bin_shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Share of values in each bin (-inf, e1], (e1, e2], ..., (ek, inf); NaN values get a last bin of their own."""
    values = np.asarray(values, dtype="float64")
    missing = np.isnan(values)
    index = np.searchsorted(np.asarray(edges, dtype="float64"), values[~missing], side="left")
    counts = np.bincount(index, minlength=len(edges) + 1).astype("float64")
    counts = np.append(counts, missing.sum())
    total = counts.sum()
    return counts / total if total else counts


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two share vectors over the same bins: sum (a - e) * ln(a / e)."""
    e = np.clip(np.asarray(expected, dtype="float64"), epsilon, None)
    a = np.clip(np.asarray(actual, dtype="float64"), epsilon, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_numeric(baseline_shares: np.ndarray, edges: list[float], current: np.ndarray) -> float:
    """PSI of a numeric feature: the current values binned at the baseline's edges."""
    return psi(baseline_shares, bin_shares(current, edges))


def category_shares(values: pd.Series) -> dict[str, float]:
    """Share of each value (missing values as '<null>')."""
    counts = pd.Series(values).astype("object").where(pd.Series(values).notna(), "<null>").astype(str).value_counts()
    return {str(k): float(v) / float(counts.sum()) for k, v in counts.items()} if len(counts) else {}


def psi_categorical(baseline: dict[str, float], current: pd.Series) -> float:
    """PSI of a categorical feature over the union of the baseline's and the current values."""
    now = category_shares(current)
    keys = sorted(set(baseline) | set(now))
    return psi(np.array([baseline.get(k, 0.0) for k in keys]), np.array([now.get(k, 0.0) for k in keys]))


def ks_statistic(baseline: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (scipy's): the largest gap between the two empirical CDFs, missing
    values left out; NaN when either side has no value."""
    a, b = (np.asarray(x, dtype="float64") for x in (baseline, current))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(stats.ks_2samp(a, b).statistic)


# ---------------------------------------------------------------- the training baseline


def summarize_column(values: pd.Series, categorical: bool, seed: int = 0) -> dict:
    """What drift needs to know about one column of the training set (JSON-ready)."""
    if categorical:
        return {"kind": "categorical", "shares": category_shares(values)}
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    edges = quantile_edges(numbers)
    present = numbers[~np.isnan(numbers)]
    if present.size > BASELINE_SAMPLE:  # KS against a fixed random sample keeps the baseline small
        present = np.random.default_rng(seed).choice(present, BASELINE_SAMPLE, replace=False)
    return {"kind": "numeric", "edges": edges, "shares": bin_shares(numbers, edges).tolist(),
            "sample": np.sort(present).tolist()}


def build_baseline(train: pd.DataFrame, feature_cols: list[str], predictions,
                   categorical: set[str] | frozenset[str] = frozenset(), predicted_classes: bool = False,
                   seasonal: dict[str, str] | None = None) -> dict:
    """The training set's feature and prediction distributions (predicted classes: by value), stored with the model
    as `monitoring/baseline.json`. A seasonal feature (`{feature: period column}`) is also summarized per value of
    its period column, so a night is compared with the same period of the training set."""
    baseline = {"rows": int(len(train)),
                "features": {c: summarize_column(train[c], c in categorical) for c in feature_cols},
                "prediction": summarize_column(pd.Series(predictions), predicted_classes)}
    if seasonal:
        baseline["seasonal"] = {
            name: {"period": period,
                   "by": {period_key(value): {**summarize_column(part[name], name in categorical), "rows": len(part)}
                          for value, part in train.groupby(period, sort=True)}}
            for name, period in seasonal.items() if name in feature_cols}
    return baseline


def period_key(value) -> str:
    """A period value as a JSON key: 3, 3.0 and '3' are the same weekday."""
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return str(int(value))
    return str(value)


def same_period_summary(baseline: dict, name: str, current: pd.DataFrame) -> tuple[dict | None, str]:
    """What a seasonal feature is compared with tonight: the baseline's rows of tonight's periods pooled (None when
    the training set has none of them), and the sentence that says so; a non-seasonal feature: the whole baseline."""
    seasonal = baseline.get("seasonal", {}).get(name)
    if seasonal is None:
        return baseline["features"][name], ""
    period = seasonal["period"]
    tonight = sorted({period_key(v) for v in current[period].dropna()}) if period in current.columns else []
    parts = [seasonal["by"][p] for p in tonight if p in seasonal["by"]]
    where = f"{period} = {', '.join(tonight) or 'none'}"
    if not parts:
        return None, f"no training rows with {where} (monitoring.seasonal_features): not tested"
    note = f"against the baseline's rows with {where} (monitoring.seasonal_features)"
    if parts[0]["kind"] == "categorical":
        total = sum(p["rows"] for p in parts)
        keys = sorted({k for p in parts for k in p["shares"]})
        shares = {k: sum(p["shares"].get(k, 0.0) * p["rows"] for p in parts) / total for k in keys}
        return {"kind": "categorical", "shares": shares}, note
    pooled = pd.Series(np.concatenate([np.asarray(p["sample"], dtype="float64") for p in parts]))
    return summarize_column(pooled, False), note


def drift_rows(baseline: dict, current: pd.DataFrame, predictions: np.ndarray | None) -> pd.DataFrame:
    """PSI (every feature) and KS (numeric features) of the current rows, and PSI/KS of the predictions."""
    out = []
    for name in baseline["features"]:
        if name not in current.columns:
            continue
        summary, _ = same_period_summary(baseline, name, current)
        if summary is not None:
            out += _drift_of(name, "drift", summary, current[name])
    if predictions is not None and baseline.get("prediction"):
        out += _drift_of("prediction", "prediction_drift", baseline["prediction"], pd.Series(predictions))
    return pd.DataFrame(out, columns=["kind", "name", "metric", "value", "rows"])


def _drift_of(name: str, kind: str, summary: dict, values: pd.Series) -> list[tuple]:
    rows = int(len(values))
    if summary["kind"] == "categorical":
        return [(kind, name, "psi", psi_categorical(summary["shares"], values), rows)]
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    return [(kind, name, "psi", psi_numeric(np.array(summary["shares"]), summary["edges"], numbers), rows),
            (kind, name, "ks", ks_statistic(np.array(summary["sample"]), numbers), rows)]


# ---------------------------------------------------------------- performance on matured labels


def is_matured(score_date: dt.date, monitor_date: dt.date, horizon_days: int) -> bool:
    """A score date's labels are all known once its whole horizon has passed: d + horizon <= monitor date."""
    return score_date + dt.timedelta(days=horizon_days) <= monitor_date


def matured_window(monitor_date: dt.date, horizon_days: int, window_days: int) -> tuple[dt.date, dt.date]:
    """The newest `window_days` score dates whose labels have matured on the monitor date (inclusive bounds)."""
    end = monitor_date - dt.timedelta(days=horizon_days)
    return end - dt.timedelta(days=window_days - 1), end


def matured(predictions: pd.DataFrame, monitor_date: dt.date, horizon_days: int, window_days: int,
            date_column: str = "score_date") -> pd.DataFrame:
    """The prediction rows of the matured window; a score date whose horizon has not passed never gets in."""
    start, end = matured_window(monitor_date, horizon_days, window_days)
    dates = pd.to_datetime(predictions[date_column]).dt.date
    keep = (dates >= start) & (dates <= end) & dates.map(lambda d: is_matured(d, monitor_date, horizon_days))
    return predictions[keep.to_numpy()]


def metric_value(metric: str, labels, predictions, task: str | None = None) -> float | None:
    """The pipeline's metric (lakeforge.metrics); None when it is undefined for these rows (AUC of a single class,
    no rows). Multiclass `predictions` are one {class: probability} map per row."""
    task = task or metrics.lookup(metric).tasks[0]
    if task == metrics.MULTICLASS:
        maps = list(predictions)
        classes = sorted({c for row in maps if row for c in row})
        return metrics.value(metric, task, np.asarray(labels, dtype="object"), metrics.class_matrix(maps, classes),
                             classes)
    return metrics.value(metric, task, np.asarray(labels, dtype="float64"), np.asarray(predictions, dtype="float64"))


def performance_rows(scored: pd.DataFrame, label: str, metric: str, segments: list[str],
                     task: str | None = None) -> pd.DataFrame:
    """The metric per model version: overall (segment '') and per value of each segment column."""
    out = []
    scores = catalog.PROBABILITIES if task == metrics.MULTICLASS else "prediction"
    for version, rows in scored.groupby("model_version", sort=True):
        value = metric_value(metric, rows[label], rows[scores], task)
        out.append((int(version), "performance", "overall", "", metric, value, len(rows)))
        for column in segments:
            if column not in rows.columns:
                continue
            for key, part in rows.groupby(rows[column].astype(str), sort=True):
                out.append((int(version), "segment", column, str(key), metric,
                            metric_value(metric, part[label], part[scores], task), len(part)))
    return pd.DataFrame(out, columns=["model_version", "kind", "name", "segment", "metric", "value", "rows"])


# ---------------------------------------------------------------- data quality trend


def quality_trend(quality: pd.DataFrame, recent: int = 1) -> pd.DataFrame:
    """Per source and check: the failing share of the latest `recent` batches against all batches before them."""
    out = []
    if quality.empty:
        return pd.DataFrame(out, columns=["name", "metric", "value", "detail", "rows"])
    for (source, check), rows in quality.sort_values("checked_at", kind="mergesort").groupby(["source", "check"]):
        last, before = rows.tail(recent), rows.iloc[:-recent]
        now = float(last.rows_failing.sum()) / max(float(last.rows_checked.sum()), 1.0)
        then = float(before.rows_failing.sum()) / max(float(before.rows_checked.sum()), 1.0) if len(before) else None
        detail = f"before: {then:.4%} over {len(before)} batches" if then is not None else "first batch"
        out.append((f"{source}: {check}", "fail_share", now, detail, int(last.rows_checked.sum())))
    return pd.DataFrame(out, columns=["name", "metric", "value", "detail", "rows"])


# ---------------------------------------------------------------- the retraining policy


@dataclass(frozen=True)
class RetrainDecision:
    fire: bool
    trigger: str   # "drift", "performance", "" (none)
    reason: str


def decide_retrain(policy, monitor_date: dt.date, horizon_days: int, drift: pd.DataFrame, performance: pd.DataFrame,
                   champion_metric: float | None, metric: str, champion_trained_as_of: dt.date | None,
                   estimated: pd.DataFrame | None = None) -> RetrainDecision:
    """Apply the pipeline's `retrain` policy to the champion's monitoring history up to `monitor_date`.

    `drift`: monitor_date, name, value (PSI of features) under this champion. `performance`: window_end, value
    (the overall matured metric of this champion's own predictions), one row per monitor date.
    Drift fires when every `psi_days` last monitor dates have PSI >= threshold on a watched feature and the
    labels of the first drifted day have matured (a retrain can only learn the new world from labels after
    it). Performance fires when `breaches` of the last `windows` matured windows are worse than the
    champion's validation metric by more than `performance_margin`.
    `estimated`: monitor_date, value, threshold (the pipeline metric estimated from each night's scores, before
    labels). Tonight's estimate beyond its threshold fires only with `on_estimated_drop: true`; otherwise it is
    noted and the verdict makes it a WATCH. (A retrain then learns from the newest matured labels, which may still
    be from before the change.) When nothing fires, the reason names what each trigger saw.
    """
    if champion_trained_as_of is not None and (monitor_date - champion_trained_as_of).days < policy.cooldown_days:
        return RetrainDecision(False, "", f"champion trained as of {champion_trained_as_of}, within the "
                                          f"{policy.cooldown_days}-day cooldown")
    notes = []
    perf = performance.sort_values("window_end").dropna(subset=["value"]).tail(policy.windows)
    if champion_metric is not None and policy.breaches > 0 and len(perf):
        higher = metrics.higher_is_better(metric)
        floor = metrics.worse_than(metric, champion_metric, policy.performance_margin)
        worse = perf[[metrics.breaches(metric, v, floor) for v in perf.value]]
        breached = ", ".join(f"{d}: {v:.4f}" for d, v in zip(worse.window_end, worse.value))
        if len(worse) >= policy.breaches:
            return RetrainDecision(True, "performance",
                                   f"matured {metric} {'below' if higher else 'above'} {floor:.4f} (validation "
                                   f"{champion_metric:.4f} {'-' if higher else '+'} margin {policy.performance_margin}) "
                                   f"in {len(worse)} of the last {len(perf)} windows ({breached})")
        notes.append(f"{metric} breaches {len(worse)} of last {len(perf)} windows (need {policy.breaches})")
    if policy.psi_days > 0 and len(drift):
        dates = sorted(drift.monitor_date.unique())
        last_days = [d for d in dates if d <= monitor_date][-policy.psi_days:]
        for feature in policy.psi_features:
            history = drift[drift.name == feature].set_index("monitor_date").value
            run = _drifted_run(history, dates, monitor_date, policy.psi_threshold)
            if len(last_days) == policy.psi_days and run >= policy.psi_days:
                first = [d for d in dates if d <= monitor_date][-run]
                ripe = first + dt.timedelta(days=horizon_days)
                if ripe <= monitor_date:
                    return RetrainDecision(True, "drift", f"PSI of {feature} >= {policy.psi_threshold} on "
                                                          f"{run} monitored days since {first}, whose labels "
                                                          f"matured on {ripe}")
                notes.append(f"PSI of {feature} >= {policy.psi_threshold} for {run} days since {first}; "
                             f"the retrain waits for labels after it to mature ({ripe})")
            elif run:
                notes.append(f"PSI of {feature} >= {policy.psi_threshold} for {run} of {policy.psi_days} days")
    drop = estimated_drop(estimated, monitor_date, metric)
    if drop and policy.on_estimated_drop:
        return RetrainDecision(True, "estimated", f"{drop} (retrain.on_estimated_drop: true)")
    if drop:
        notes.append(f"{drop}: a warning, no retrain (retrain.on_estimated_drop: false)")
    return RetrainDecision(False, "", "; ".join(notes + _quiet_triggers(policy, notes, perf, metric, champion_metric)))


def estimated_drop(estimated: pd.DataFrame | None, monitor_date: dt.date, metric: str) -> str:
    """'estimated auc 0.7800 below 0.8100 tonight' when the monitor date's estimate is beyond its threshold, else ''."""
    if estimated is None or estimated.empty:
        return ""
    tonight = estimated[(estimated.monitor_date == monitor_date) & estimated.threshold.notna()
                        & estimated.value.notna()]
    for r in tonight.itertuples(index=False):
        if metrics.breaches(metric, r.value, r.threshold):
            side = "below" if metrics.higher_is_better(metric) else "above"
            return f"estimated {metric} {r.value:.4f} {side} {r.threshold:.4f} tonight (before labels)"
    return ""


def _quiet_triggers(policy, notes: list[str], perf: pd.DataFrame, metric: str, champion_metric: float | None
                    ) -> list[str]:
    """What the triggers without a note saw, so a 'no retrain' never reads as 'nothing moved' beside drifted
    features the policy does not watch."""
    said = " ".join(notes)
    out = []
    if policy.psi_days <= 0:
        out.append("drift trigger off (retrain.psi_days: 0)")
    elif not policy.psi_features:
        out.append("no watched feature (retrain.psi_features)")
    elif "PSI of" not in said:
        out.append(f"PSI of the watched features ({', '.join(policy.psi_features)}) below {policy.psi_threshold}")
    if policy.breaches <= 0:
        out.append("performance trigger off (retrain.breaches: 0)")
    elif champion_metric is None:
        out.append(f"no validation {metric} to compare with")
    elif perf.empty:
        out.append(f"no matured {metric} window yet")
    return out


def _drifted_run(history: pd.Series, dates: list, monitor_date: dt.date, threshold: float) -> int:
    """How many consecutive monitored days, ending on the monitor date, the value was >= threshold."""
    run = 0
    for d in reversed([d for d in dates if d <= monitor_date]):
        value = history.get(d)
        if value is None or (isinstance(value, float) and math.isnan(value)) or value < threshold:
            break
        run += 1
    return run


# ---------------------------------------------------------------- drift tests that fit the sample size


DRIFT_MIN_ROWS = 30      # below it a night's rows are too few for any test: the report says so instead of flagging
LARGE_SAMPLE = 1000      # above it p-values flag negligible shifts: a distance with a fixed threshold instead
P_VALUE = 0.05
DISTANCE = 0.1


@dataclass(frozen=True)
class DriftTest:
    """One feature's drift test for tonight's row count: the statistic, its threshold and which side breaches."""

    metric: str       # ks_pvalue | wasserstein | chi2_pvalue | jensenshannon
    threshold: float
    below: bool       # True: a value below the threshold is drift (a p-value); False: above (a distance)

    def breached(self, value: float) -> bool:
        return bool(value < self.threshold if self.below else value > self.threshold)

    def describe(self) -> str:
        return f"{self.metric} {'<' if self.below else '>'} {self.threshold:g}"


def drift_test(categorical: bool, rows: int) -> DriftTest:
    """Evidently's choice by feature type and sample size: KS / chi-square p-value up to LARGE_SAMPLE rows,
    normed Wasserstein / Jensen-Shannon distance beyond."""
    if rows <= LARGE_SAMPLE:
        return DriftTest("chi2_pvalue" if categorical else "ks_pvalue", P_VALUE, True)
    return DriftTest("jensenshannon" if categorical else "wasserstein", DISTANCE, False)


def test_statistic(test: DriftTest, summary: dict, values: pd.Series) -> float:
    """The value of the drift test on tonight's values against the baseline summary (NaN if undefined)."""
    if summary["kind"] == "categorical":
        now = category_shares(values)
        keys = sorted(set(summary["shares"]) | set(now))
        expected = np.array([summary["shares"].get(k, 0.0) for k in keys])
        observed = np.array([now.get(k, 0.0) for k in keys]) * len(values)
        if test.metric == "jensenshannon":
            from scipy.spatial import distance

            return float(distance.jensenshannon(expected, observed / max(observed.sum(), 1.0), base=2))
        if len(keys) < 2:  # one value in the baseline and tonight: nothing can have moved (chi-square has no df)
            return 1.0
        # A value the baseline never had gets the PSI floor as its expected share (chi-square needs e > 0).
        expected = np.clip(expected, PSI_EPSILON, None)
        expected = expected / expected.sum() * observed.sum()
        return float(stats.chisquare(observed, expected).pvalue)
    base = np.asarray(summary["sample"], dtype="float64")
    now = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    now = now[~np.isnan(now)]
    if base.size == 0 or now.size == 0:
        return float("nan")
    if test.metric == "ks_pvalue":
        return float(stats.ks_2samp(base, now).pvalue)
    spread = float(np.std(base))
    return float(stats.wasserstein_distance(base, now) / spread) if spread > 0 else float("nan")


def drift_tests(baseline: dict, current: pd.DataFrame, predictions: np.ndarray | None,
                leave_out: set[str] | frozenset[str] = frozenset(), min_rows: int = DRIFT_MIN_ROWS) -> pd.DataFrame:
    """One test row per feature (and the predictions): metric, value, threshold, breached, rows, detail.
    Fewer than `min_rows` rows: metric 'too_few_rows', nothing flagged; features in `leave_out` (calendar or
    seasonal, declared in the YAML) get metric 'left_out'; seasonal features in the baseline are tested against
    the baseline's rows of tonight's period (the detail says which), or left out when it has none."""
    out = []
    columns = [(name, "drift", *same_period_summary(baseline, name, current), current[name])
               for name in baseline["features"] if name in current.columns]
    if predictions is not None and baseline.get("prediction"):
        columns.append(("prediction", "prediction_drift", baseline["prediction"], "", pd.Series(predictions)))
    for name, kind, summary, against, values in columns:
        rows = int(len(values))
        if name in leave_out:
            out.append((kind, name, "left_out", None, None, None, rows,
                        "calendar/seasonal feature (monitoring.calendar_features): not tested against the baseline"))
        elif summary is None:
            out.append((kind, name, "left_out", None, None, None, rows, against))
        elif rows < min_rows:
            out.append((kind, name, "too_few_rows", None, None, None, rows,
                        f"too few rows: {rows} < {min_rows} (monitoring.drift_min_rows), not tested"))
        else:
            test = drift_test(summary["kind"] == "categorical", rows)
            value = test_statistic(test, summary, values)
            flagged = None if math.isnan(value) else test.breached(value)
            out.append((kind, name, test.metric, value, test.threshold, flagged, rows,
                        f"drift if {test.describe()}" + (f"; {against}" if against else "")))
    return pd.DataFrame(out, columns=["kind", "name", "metric", "value", "threshold", "breached", "rows", "detail"])


# ---------------------------------------------------------------- the verdict


VERDICTS = ("OK", "WATCH", "ACT")


def is_breached(value) -> bool:
    """A `breached` cell as read back from ops.monitoring: True, or None/NaN (no threshold) and False."""
    return value is not None and value == value and bool(value)


def verdict(today: pd.DataFrame) -> tuple[str, list[str]]:
    """OK, WATCH or ACT for one night's ops.monitoring rows, with a reason per finding, worst first.

    ACT: the retrain decision fires, or a quality limit that acts is breached (`max_quarantine_share`).
    WATCH: a drift test flags a feature or the predictions, estimated or matured performance is beyond the
    retrain policy's margin, a segment is below the floor.
    """
    act, watch = [], []
    for r in today.itertuples(index=False):
        flagged = is_breached(r.breached)
        if r.kind == "decision" and r.value == 1.0:
            act.append(f"retrain: {r.detail}")
        elif r.kind == "quality" and flagged:
            act.append(f"quality: {r.name} {r.value:.1%} of rows, limit {r.threshold:.1%}")
        elif r.kind in ("drift", "prediction_drift") and flagged and r.metric not in ("psi", "ks"):
            what = "predictions" if r.kind == "prediction_drift" else f"feature {r.name}"
            act_on = f"{r.metric} {r.value:.3g} {'<' if r.metric.endswith('pvalue') else '>'} {r.threshold:g}"
            watch.append(f"drift: {what} moved ({act_on}, {int(r.rows):,} rows)")
        elif r.kind in ("estimated_performance", "performance", "segment") and flagged:
            where = "overall" if r.kind != "segment" else f"{r.name}={r.segment}"
            label = "estimated" if r.kind == "estimated_performance" else "matured"
            watch.append(f"performance: {label} {r.metric} {where} {r.value:.3f} beyond floor {r.threshold:.3f}")
    untested = sorted(today[today.metric == "too_few_rows"].name)
    notes = [f"not tested for drift, too few rows tonight: {', '.join(untested)}"] if untested else []
    if act:
        return "ACT", act + watch + notes
    if watch:
        return "WATCH", watch + notes
    return "OK", ["no drift test flagged, performance within the margin, data quality within its limits"] + notes


# ---------------------------------------------------------------- one night: rows, thresholds, breaches, decision


def training_baseline(model, data, pipeline, holdout_scores) -> dict | None:
    """What monitoring compares each night with: the training rows' (`data`, a training.TrainingSet) and fitted
    predictions' distributions (a multiclass model's as its predicted classes, a seasonal feature's per period),
    and what estimates performance before labels arrive (a classifier's holdout calibration for CBPE, a
    regressor's error model for DLE); None for a distributed fit (no training rows on the driver)."""
    if data.train_rows is None:
        return None
    fitted = model.predict(None, data.train_rows)
    if data.classes:
        fitted = [data.classes[i] for i in fitted.argmax(axis=1)]
    baseline = build_baseline(data.train_rows, data.columns, fitted, data.categorical, bool(data.classes),
                              pipeline.monitoring.seasonal_features)
    # What estimates performance before labels arrive (CBPE calibration, DLE error model).
    numeric = [c for c in data.columns if c not in data.categorical]
    baseline.update(estimation.fit_references(pipeline.label.task, data.holdout, holdout_scores,
                                              data.holdout[data.label].to_numpy(), numeric, pipeline.model.metric,
                                              pipeline.model.top_k, data.classes))
    return baseline


@dataclass
class Night:
    """One monitored night: its ops.monitoring rows (`today`), those with the champion's earlier nights
    (`history`), the retrain decision, the verdict, the performance floor and the stage's summary."""

    today: pd.DataFrame
    history: pd.DataFrame
    decision: RetrainDecision
    level: str
    reasons: list[str]
    floor: float | None
    summary: dict
    tonight: np.ndarray | None  # tonight's scores, None when there are none

    def headline(self, metric: str) -> str:
        """The night in one line, for the run's log."""
        s = self.summary
        return (f"{s['date']}: champion v{s['champion']}, drifted {s['drifted'] or 'none'}, matured {metric} "
                f"{s[f'matured_{metric}']}, retrain {'FIRES' if self.decision.fire else 'no'} ({self.decision.reason})")


def night(pipeline, day: dt.date, version: int, run_id: str, baseline: dict | None, validation: float | None,
          trained_as_of: str | None, current: pd.DataFrame, scored: pd.DataFrame | None, labelled: pd.DataFrame,
          quality: pd.DataFrame | None, quality_limits: dict[str, float], earlier: pd.DataFrame | None) -> Night:
    """Drift of tonight's population (`current`) and scores (`scored`) against the champion's baseline, CBPE,
    matured performance of `labelled` predictions, the quality trend against `quality_limits` (check name ->
    largest share), the retrain decision over the champion's history (`earlier` nights' rows) and the verdict."""
    policy, metric = pipeline.retrain, pipeline.model.metric
    watched = set(policy.psi_features) if policy else set()
    rows: list[dict] = []

    def add(**row):
        rows.append({"monitor_date": day, "pipeline": pipeline.name, "model_version": version, "segment": "",
                     "window_start": None, "window_end": None, "threshold": None, "breached": None,
                     "rows": None, "detail": "", "run_id": run_id, **row})

    # Drift of today's population and of today's predictions against the champion's training baseline.
    tonight = scored.prediction.to_numpy() if scored is not None and len(scored) else None
    if not current.empty and baseline is not None:
        leave_out = set(pipeline.monitoring.calendar_features)
        tests = drift_tests(baseline, current, tonight, leave_out, pipeline.monitoring.drift_min_rows)
        for r in tests.itertuples(index=False):
            add(kind=r.kind, name=r.name, metric=r.metric, value=None if r.value is None else float(r.value),
                rows=int(r.rows), threshold=r.threshold, breached=r.breached, detail=r.detail)
        tested = set(tests[~tests.metric.isin(["too_few_rows", "left_out"])].name)
        # PSI and KS of what was tested too: the retrain policy's drift trigger reads PSI.
        drift = drift_rows(baseline, current, tonight)
        for r in drift[drift.name.isin(tested)].itertuples(index=False):
            threshold = policy.psi_threshold if policy and r.metric == "psi" and r.name in watched else None
            add(kind=r.kind, name=r.name, metric=r.metric, value=float(r.value), rows=int(r.rows),
                threshold=threshold, breached=None if threshold is None else bool(r.value >= threshold))

    # Performance estimated from tonight's scores before any label (CBPE, DLE): a drop beyond the margin is a
    # WATCH, a retrain only if the policy says so (retrain.on_estimated_drop).
    floor = None
    margin = policy.performance_margin if policy else 0.0
    if validation is not None:
        floor = metrics.worse_than(metric, validation, margin)
    if baseline is not None and scored is not None and len(scored):
        with_features = "error_model" in baseline and not current.empty  # DLE reads the inputs too
        tonight_rows = scored.merge(current, on=pipeline.keys, how="inner") if with_features else scored
        for r in estimation.estimates(baseline, metric, margin, tonight_rows, floor).itertuples(index=False):
            add(kind="estimated_performance", name="overall", metric=r.metric, value=r.value, rows=int(r.rows),
                window_start=day, window_end=day, threshold=r.threshold, breached=r.breached, detail=r.detail)

    # Performance on the newest matured window only (score date + horizon <= today), per model version.
    start, end = matured_window(day, pipeline.label.horizon_days, pipeline.monitoring.window_days)
    if not labelled.empty:
        labelled = matured(labelled, day, pipeline.label.horizon_days, pipeline.monitoring.window_days, catalog.AS_OF)
        perf = performance_rows(labelled, pipeline.label.name, metric, pipeline.monitoring.segments,
                                pipeline.label.task)
        for r in perf.itertuples(index=False):
            value = None if r.value is None or pd.isna(r.value) else float(r.value)
            # A segment is judged against the floor only with enough rows to tell (drift_min_rows).
            judged = r.kind == "performance" or r.rows >= pipeline.monitoring.drift_min_rows
            threshold = floor if r.model_version == version and judged else None
            breached = None if threshold is None or value is None else metrics.breaches(metric, value, threshold)
            add(model_version=r.model_version, kind=r.kind, name=r.name, segment=r.segment, metric=r.metric,
                value=value, rows=int(r.rows), window_start=start, window_end=end, threshold=threshold,
                breached=breached)

    if quality is not None:
        for r in quality_trend(quality).itertuples(index=False):
            limit = quality_limits.get(r.name)
            add(kind="quality", name=r.name, metric=r.metric, value=float(r.value), rows=int(r.rows),
                detail=r.detail, threshold=limit, breached=None if limit is None else bool(r.value > limit))

    # The policy looks at this champion's history: earlier dates from ops.monitoring, plus today.
    today = pd.DataFrame(rows, columns=COLUMNS)
    history = pd.concat([earlier, today], ignore_index=True) if earlier is not None and len(earlier) else today
    decision = retrain_decision(pipeline, day, history, version, validation, trained_as_of)
    add(kind="decision", name="retrain", metric="fire", value=float(decision.fire),
        detail=f"{decision.trigger or 'none'}: {decision.reason}")
    level, reasons = verdict(pd.DataFrame(rows, columns=COLUMNS))
    add(kind="verdict", name=level, metric="level", value=float(VERDICTS.index(level)), detail="; ".join(reasons))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    overall = frame[(frame.kind == "performance") & (frame.model_version == version)].value.dropna()
    watched_psi = frame[(frame.kind == "drift") & (frame.breached == True)]  # noqa: E712 (None is not a breach)
    summary = {"stage": "monitor", "date": day.isoformat(), "champion": version, "drifted": sorted(watched_psi.name),
               f"matured_{metric}": float(overall.iloc[0]) if len(overall) else None,
               "retrain": decision.fire, "trigger": decision.trigger, "reason": decision.reason,
               "verdict": level, "reasons": reasons}
    full = pd.concat([earlier, frame], ignore_index=True) if earlier is not None and len(earlier) else frame
    return Night(frame, full, decision, level, reasons, floor, summary, tonight)


def retrain_decision(pipeline, day: dt.date, history: pd.DataFrame, version: int, validation: float | None,
                     trained_as_of: str | None) -> RetrainDecision:
    """The pipeline's policy over the champion's own monitoring history."""
    if pipeline.retrain is None:
        return RetrainDecision(False, "", "no retrain policy in the pipeline YAML")
    mine = history[history.model_version == version]
    drift = mine[(mine.kind == "drift") & (mine.metric == "psi")][["monitor_date", "name", "value"]]
    perf = mine[(mine.kind == "performance") & (mine.name == "overall")][["window_end", "value"]]
    estimated = mine[(mine.kind == "estimated_performance") & (mine.metric == pipeline.model.metric)]
    since = dt.date.fromisoformat(trained_as_of) if trained_as_of else None
    # A retrain that did not replace the champion (gate or error) also starts the cooldown: no retrain every night.
    attempts = [d for d in history[history.kind == "retrain"].monitor_date if d < day]
    if attempts:
        since = max([d for d in (since, max(attempts)) if d is not None])
    return decide_retrain(pipeline.retrain, day, pipeline.label.horizon_days, drift, perf, validation,
                          pipeline.model.metric, since, estimated[["monitor_date", "value", "threshold"]])


def retrain_rows(pipeline: str, day: dt.date, result: dict, champion: int | None, reason: str,
                 promoted: bool) -> pd.DataFrame:
    """The ops.monitoring row of a retrain: the new version and whether the gate made it @champion (`promoted`),
    or the error (`result["error"]`, the champion unchanged), with what fired it."""
    if "error" in result:
        outcome = {"name": "error", "value": 0.0, "model_version": champion,
                   "detail": f"{result['error']}; fired by: {reason}"}
    else:
        outcome = {"name": "gate", "value": float(promoted), "model_version": result["version"],
                   "detail": f"v{result['version']} -> @{result['alias']}: {result['gate']}; trained on "
                             f"{result['train_dates']}, holdout {result['holdout_dates']}; fired by: {reason}"}
    row = {c: None for c in COLUMNS} | {"monitor_date": day, "pipeline": pipeline, "kind": "retrain", "segment": "",
                                        "metric": "promoted", "run_id": None, **outcome}
    return pd.DataFrame([row], columns=COLUMNS)


# ---------------------------------------------------------------- the stages' work (reads and writes the tables)
# Their I/O modules are imported in the functions: the rules above import without Spark or MLflow, and
# features imports this module.


def monitor(spark, client, settings, pipeline, run, day: dt.date | None = None):
    """The monitor stage's work for a date (default: the next night to score): the champion's baseline and
    validation metric, the night's rows read at the versions noted as the run's inputs, `night`, its rows
    into ops.monitoring (a rerun replaces the date) and, when the pipeline asks, the HTML report, also logged
    to MLflow. Returns a runs.Outcome with the night's summary."""
    from pyspark.sql import functions as F

    from lakeforge import features as feats
    from lakeforge import lake, ownership, quality, registry, runs

    lakehouse = settings.paths.lakehouse
    day = run.run_date = day or feats.next_score_date(spark, lakehouse, pipeline)
    version = int(registry.champion(client, pipeline.name).version)
    champion_run = registry.version_run(client, pipeline.name, version)
    baseline = registry.load_baseline(client, pipeline.name, version, missing_ok=run.log)
    validation = champion_run.data.metrics.get(pipeline.model.metric)
    events = feats.label_events_table(pipeline)
    run.input(spark, lakehouse, feats.features_table(pipeline), catalog.predictions(pipeline.name), events,
              catalog.QUALITY, MONITORING)
    current, scored, labelled = feats.monitored_night(spark, lakehouse, pipeline, day, run.inputs.get(events),
                                                      run.log)
    earlier = lake.read_pandas(spark, lakehouse, MONITORING,
                               (F.col("pipeline") == pipeline.name) & (F.col("monitor_date") < F.lit(day)))
    judged = night(pipeline, day, version, run.run_id, baseline, validation,
                   champion_run.data.tags.get(registry.TRAINED_AS_OF_TAG), current, scored, labelled,
                   lake.read_pandas(spark, lakehouse, catalog.QUALITY), quality.quarantine_limits(pipeline.sources),
                   earlier)
    lake.replace_where(spark, lake.from_pandas(spark, judged.today, SCHEMA), lakehouse, MONITORING,
                       f"pipeline = '{pipeline.name}' AND monitor_date = DATE'{day}'",
                       **catalog.MONITORING_TABLE.options(settings.owner))
    # Noted as soon as written: a report that fails after this leaves the written rows in the run's record.
    run.output(spark, lakehouse, MONITORING)
    run.rows[MONITORING] = len(judged.today)
    summary = judged.summary
    if pipeline.monitoring.report:
        from lakeforge import report

        ownership.claim(settings, "paths.reports")
        path = report.publish(settings.paths.reports, pipeline, day, judged, version, validation, baseline, current,
                              lake.read_pandas(spark, lakehouse, MONITORING, F.col("kind") == "verdict",
                                               report.INDEX_COLUMNS))
        registry.log_monitoring(client, pipeline.name, settings.mlflow.artifact_root, day, version, summary,
                                judged.today, path)
        summary["report"] = str(path)
    run.log(judged.headline(pipeline.model.metric))
    return runs.Outcome(summary, details={k: v for k, v in summary.items() if k != "stage"})


def retrain(client, spark, settings, pipeline, day: dt.date, reason: str, train) -> dict:
    """Retrain on the policy's recent window as of `day` (`train`: the train stage, called with as_of, window_days
    and why), through the promotion gate; the outcome, or the error that stopped it, goes to ops.monitoring."""
    from lakeforge import lake, registry

    version = registry.alias_version(client, pipeline.name, registry.CHAMPION)
    try:
        result = train(as_of=day, window_days=pipeline.retrain.window_days, why="retrain")
    except DataError as exc:  # e.g. too little history in the window: the night goes on, the failure is recorded
        result = {"stage": "retrain", "error": str(exc)}
    frame = retrain_rows(pipeline.name, day, result, version, reason, result.get("alias") == registry.CHAMPION)
    lake.append(spark, lake.from_pandas(spark, frame, SCHEMA), settings.paths.lakehouse, MONITORING,
                **catalog.MONITORING_TABLE.options(settings.owner))
    return {"date": day.isoformat(), **result}
