"""The monitoring report: one self-contained HTML page per pipeline and night, verdict first, pictures embedded
as PNG, and `index.html` over every pipeline's nights.

`render(...)` and `render_index(...)` are pure: the rows of ops.monitoring (and tonight's values) in, HTML text
out. The pages come from jinja2 templates in lakeforge/templates; the charts from matplotlib.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from lakeforge import metrics as lf_metrics
from lakeforge import monitoring

DRIFT_KINDS = ("drift", "prediction_drift")
TESTS = ("ks_pvalue", "wasserstein", "chi2_pvalue", "jensenshannon", "too_few_rows", "left_out")


# ---------------------------------------------------------------- numbers for people


def count(value) -> str:
    """1096.0 -> '1,096'; missing -> '—'."""
    return "—" if _missing(value) else f"{int(round(float(value))):,}"


def share(value) -> str:
    """0.8123 -> '81.2%'."""
    return "—" if _missing(value) else f"{float(value):.1%}"


def statistic(value) -> str:
    """Three significant digits: 0.000123 -> '0.000123', 12.345 -> '12.3'."""
    return "—" if _missing(value) else f"{float(value):.3g}"


def day(value) -> str:
    return "—" if _missing(value) else str(pd.Timestamp(value).date())


def _dates(start, end) -> str:
    """A range of score dates, one date when it is a single night."""
    return day(start) if day(start) == day(end) else f"{day(start)} … {day(end)}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


# ---------------------------------------------------------------- pictures


def _figure(width: float = 7.5, height: float = 3.0, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), dpi=80)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _dates_axis(ax, dates: list[dt.date]) -> None:
    """The x axis spans the nights shown (half a day either side), never an empty calendar."""
    import matplotlib.dates as mdates

    first, last = min(dates), max(dates)
    ax.set_xlim(pd.Timestamp(first) - pd.Timedelta(hours=12), pd.Timestamp(last) + pd.Timedelta(hours=12))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=10))


def distribution_plot(name: str, summary: dict, values: pd.Series) -> str:
    """The training baseline's distribution of one column beside tonight's (shares of rows, same bins)."""
    fig, ax = _figure(6.0, 2.6)
    if summary["kind"] == "categorical":
        now = monitoring.category_shares(values)
        keys = sorted(set(summary["shares"]) | set(now), key=lambda k: -summary["shares"].get(k, 0.0))
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [summary["shares"].get(k, 0.0) for k in keys], 0.4, label="training baseline")
        ax.bar(x + 0.2, [now.get(k, 0.0) for k in keys], 0.4, label=f"tonight ({len(values):,} rows)")
        ax.set_xticks(x, keys, rotation=30, ha="right")
    else:
        base = np.asarray(summary["sample"], dtype="float64")
        now = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        now = now[~np.isnan(now)]
        both = np.concatenate([base, now])
        low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        bins = np.linspace(low, high if high > low else low + 1.0, 21)
        for data, label in ((base, "training baseline"), (now, f"tonight ({now.size:,} rows)")):
            if data.size:
                ax.hist(data, bins=bins, weights=np.full(data.size, 1.0 / data.size), alpha=0.55, label=label)
        ax.set_xlim(bins[0], bins[-1])
    ax.set_ylabel("share of rows")
    ax.set_title(name, fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def drift_plot(history: pd.DataFrame, names: list[str], threshold: float | None) -> str | None:
    """PSI of the named features and of the predictions per night, with the retrain policy's threshold."""
    psi = history[history.kind.isin(DRIFT_KINDS) & (history.metric == "psi") & history.name.isin(names)
                  & history.value.notna()]
    if psi.empty:
        return None
    fig, ax = _figure(6.0, 3.0)
    for name, rows in psi.sort_values("monitor_date").groupby("name", sort=True):
        ax.plot(pd.to_datetime(rows.monitor_date), rows.value, marker=".", linewidth=1, label=name,
                linestyle="--" if name == "prediction" else "-")
    if threshold is not None:
        ax.axhline(threshold, color="red", linewidth=1, linestyle=":", label=f"threshold {threshold:g}")
    ax.set_ylim(0, max(float(psi.value.max()), threshold or 0.0) * 1.1 or 1.0)
    _dates_axis(ax, list(psi.monitor_date))
    ax.set_ylabel("PSI vs training baseline")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def performance_plot(history: pd.DataFrame, champion: int, holdout: float | None, floor: float | None,
                     metric: str) -> str | None:
    """The champion's estimated metric per score date (no labels needed) and its realized metric once labels
    matured (at the window's last score date), with its holdout value and the policy's floor."""
    mine = history[(history.model_version == champion) & (history.metric == metric) & history.value.notna()]
    estimated = mine[mine.kind == "estimated_performance"].sort_values("monitor_date")
    realized = mine[(mine.kind == "performance")].sort_values("window_end")
    if estimated.empty and realized.empty:
        return None
    fig, ax = _figure(6.0, 3.0)
    if len(estimated):
        ax.plot(pd.to_datetime(estimated.monitor_date), estimated.value, marker=".", linewidth=1,
                label=f"estimated {metric} ({_estimated_by(estimated.detail.iloc[-1])[11:-1]}, that night's rows)")
    if len(realized):
        ax.plot(pd.to_datetime(realized.window_end), realized.value, marker="o", markersize=3, linewidth=1.5,
                label=f"realized {metric} (matured labels, window ending that date)")
    values = list(estimated.value) + list(realized.value)
    if holdout is not None:
        ax.axhline(holdout, color="grey", linestyle="--", linewidth=1, label=f"champion v{champion} holdout "
                                                                            f"{holdout:.3f}")
        values.append(holdout)
    if floor is not None:
        ax.axhline(floor, color="red", linestyle=":", linewidth=1, label=f"floor {floor:.3f}")
        values.append(floor)
    # The estimate is judged against the holdout's own estimate minus the margin (its bias cancels).
    thresholds = estimated.threshold.dropna()
    if len(thresholds) and (floor is None or abs(float(thresholds.iloc[-1]) - floor) > 1e-9):
        ax.axhline(float(thresholds.iloc[-1]), color="#1f77b4", linestyle=":", linewidth=1,
                   label=f"estimate's floor {float(thresholds.iloc[-1]):.3f} (holdout estimate - margin)")
        values.append(float(thresholds.iloc[-1]))
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, 0.01)
    ax.set_ylim(low - pad, high + pad)
    _dates_axis(ax, list(estimated.monitor_date) + list(realized.window_end))
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def segment_plot(segments: pd.DataFrame, floor: float | None, higher_is_better: bool) -> str | None:
    """Tonight's matured metric per segment value, worst first, with the policy's floor."""
    if segments.empty:
        return None
    fig, ax = _figure(7.5, 0.28 * len(segments) + 1.0)
    labels = [f"{n}={s} ({int(r):,} rows)" for n, s, r in zip(segments.name, segments.segment, segments.rows)]
    colours = ["#c0392b" if monitoring.is_breached(b) else "#4c72b0" for b in segments.breached]
    ax.barh(labels, segments.value, color=colours)
    if floor is not None:
        ax.axvline(floor, color="red", linestyle=":", linewidth=1, label=f"floor {floor:.3f}")
        ax.legend(fontsize=7, loc="lower right")
    low, high = float(segments.value.min()), float(segments.value.max())
    if floor is not None:
        low, high = min(low, floor), max(high, floor)
    pad = max((high - low) * 0.1, 0.01)
    ax.set_xlim(low - pad, high + pad)
    ax.set_xlabel(f"{segments.metric.iloc[0]} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.invert_yaxis()
    return _png(fig)


# ---------------------------------------------------------------- the pages


@dataclass(frozen=True)
class Picture:
    title: str
    png: str | None
    id: str


@dataclass
class Night:
    """What the page of one pipeline and night shows, ready for the template."""

    pipeline: str
    date: dt.date
    champion: int
    verdict: str
    reasons: list[str]
    metric: str
    distributions: list[Picture] = field(default_factory=list)
    trends: list[Picture] = field(default_factory=list)
    drift: list[dict] = field(default_factory=list)
    performance: list[dict] = field(default_factory=list)
    quality: list[dict] = field(default_factory=list)
    decision: str = ""


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("lakeforge", "templates"), autoescape=select_autoescape(["j2", "html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(count=count, share=share, statistic=statistic, day=day)
    return env


def _test_rows(today: pd.DataFrame) -> list[dict]:
    tests = today[today.kind.isin(DRIFT_KINDS) & today.metric.isin(TESTS)].copy()
    tests["flag"] = [monitoring.is_breached(b) for b in tests.breached]
    tests = tests.sort_values(["flag", "kind", "name"], ascending=[False, False, True], kind="mergesort")
    return [{"name": r.name, "test": r.metric, "value": r.value, "threshold": r.threshold, "rows": r.rows,
             "flag": r.flag, "detail": r.detail, "against": _against(r.metric, r.detail)}
            for r in tests.itertuples(index=False)]


def _estimated_by(detail) -> str:
    """'estimated (CBPE)' or 'estimated (DLE)': the method an estimate's detail starts with."""
    method = "" if _missing(detail) else str(detail).split(":", 1)[0]
    return f"estimated ({method})" if method in ("CBPE", "DLE") else "estimated (before labels)"


def _against(test: str, detail) -> str:
    """What a feature was compared with: the training baseline, the same period of it, or nothing (and why)."""
    text = "" if _missing(detail) else str(detail)
    if test in ("too_few_rows", "left_out"):
        return f"not compared: {text}"
    return text.split("; ", 1)[1] if "; against " in text else "the training baseline"


def render(pipeline: str, monitor_date: dt.date, history: pd.DataFrame, champion: int, metric: str,
           holdout: float | None, floor: float | None, psi_threshold: float | None, watched: list[str],
           baseline: dict | None = None, current: pd.DataFrame | None = None,
           predictions: np.ndarray | None = None, nights: int = 30) -> str:
    """The page of one night: the verdict and its reasons, what moved (baseline vs tonight per drifted feature and
    the predictions), drift and performance over the last `nights` nights, segments worst first, then the numbers."""
    shown = history[pd.to_datetime(history.monitor_date) > pd.Timestamp(monitor_date - dt.timedelta(days=nights))]
    today = history[history.monitor_date == monitor_date]
    level, reasons = monitoring.verdict(today)
    higher = lf_metrics.higher_is_better(metric)
    tests = _test_rows(today)
    drifted = [t["name"] for t in tests if t["flag"] and t["name"] != "prediction"]
    pictures = []
    if baseline is not None:
        for name in drifted:
            if current is not None and name in current.columns and name in baseline["features"]:
                pictures.append(Picture(f"{name}: training baseline vs tonight",
                                        distribution_plot(name, baseline["features"][name], current[name]),
                                        f"dist-{name}"))
        if predictions is not None and len(predictions) and baseline.get("prediction"):
            pictures.append(Picture("prediction: training baseline vs tonight",
                                    distribution_plot("prediction", baseline["prediction"], pd.Series(predictions)),
                                    "dist-prediction"))
    segments = today[(today.kind == "segment") & (today.model_version == champion) & today.value.notna()]
    segments = segments.sort_values("value", ascending=higher, kind="mergesort")
    trends = [Picture(f"Drift over the last {nights} nights (PSI of watched and drifted features, predictions)",
                      drift_plot(shown, sorted(set(watched) | set(drifted) | {"prediction"}), psi_threshold),
                      "drift-trend"),
              Picture(f"{metric.upper()} over the last {nights} nights: estimated and realized", 
                      performance_plot(shown, champion, holdout, floor, metric), "performance-trend"),
              Picture("Segments tonight, worst first (matured labels)", segment_plot(segments, floor, higher),
                      "segments")]
    # An estimate without a value stays, with the sentence that says why (r2, no class probabilities tonight).
    estimated = today.kind == "estimated_performance"
    perf = today[(estimated | (today.kind == "performance")) & (today.value.notna() | estimated)]
    performance = [{"what": _estimated_by(r.detail) if r.kind == "estimated_performance" else "realized (matured)",
                    "version": r.model_version, "metric": r.metric, "value": r.value, "threshold": r.threshold,
                    "flag": monitoring.is_breached(r.breached), "rows": r.rows,
                    "window": _dates(r.window_start, r.window_end),
                    "note": str(r.detail) if _missing(r.value) else ""} for r in perf.itertuples(index=False)]
    quality = [{"name": r.name, "value": r.value, "threshold": r.threshold, "rows": r.rows, "detail": r.detail,
                "flag": monitoring.is_breached(r.breached)}
               for r in today[today.kind == "quality"].itertuples(index=False)]
    decision = today[today.kind == "decision"]
    night = Night(pipeline, monitor_date, champion, level, reasons, metric, pictures, trends, tests, performance,
                  quality, str(decision.detail.iloc[0]) if len(decision) else "")
    return _environment().get_template("report.html.j2").render(night=night)


def render_index(nights: pd.DataFrame) -> str:
    """The platform's front page: per pipeline its latest verdict and reasons, and a link to each night's page.
    `nights`: pipeline, monitor_date, verdict, reasons (one row per pipeline and night)."""
    pipelines = []
    for name, rows in nights.sort_values("monitor_date", ascending=False).groupby("pipeline", sort=True):
        latest = rows.iloc[0]
        pipelines.append({"name": name, "latest": latest, "nights": rows.to_dict("records")})
    return _environment().get_template("index.html.j2").render(pipelines=pipelines)


def publish(root: Path, pipeline, day: dt.date, night: monitoring.Night, champion: int, holdout: float | None,
            baseline: dict | None, current: pd.DataFrame, verdicts: pd.DataFrame | None) -> Path:
    """Render a monitored night and write it to <root>/<pipeline>/<date>.html, then the index over every
    pipeline's nights (`write_index`)."""
    policy = pipeline.retrain
    text = render(pipeline.name, day, night.history, champion, pipeline.model.metric, holdout, night.floor,
                  policy.psi_threshold if policy else None, list(policy.psi_features) if policy else [],
                  baseline, current, night.tonight, pipeline.monitoring.history_nights)
    path = write_night(root, pipeline.name, day, text)
    write_index(root, verdicts)
    return path


def write_night(root: Path, pipeline: str, day: dt.date, text: str) -> Path:
    """Write a night's report to <root>/<pipeline>/<date>.html."""
    path = root / pipeline / f"{day}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


INDEX_COLUMNS = ["pipeline", "monitor_date", "name", "detail"]  # of ops.monitoring's verdict rows


def write_index(root: Path, verdicts: pd.DataFrame | None) -> Path:
    """<root>/index.html: every pipeline's latest verdict and a link to each night with a report (`verdicts`:
    the verdict rows of ops.monitoring, pipeline, monitor_date, name, detail)."""
    nights = pd.DataFrame(columns=["pipeline", "monitor_date", "verdict", "reasons"])
    if verdicts is not None and len(verdicts):
        nights = verdicts.rename(columns={"name": "verdict", "detail": "reasons"})
        nights = nights[[(root / p / f"{d}.html").exists() for p, d in zip(nights.pipeline, nights.monitor_date)]]
    path = root / "index.html"
    path.write_text(render_index(nights), encoding="utf-8")
    return path
