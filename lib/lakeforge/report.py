"""The monitoring report: one self-contained HTML page per pipeline and date, plots embedded as PNG.

`render(history, ...)` is pure: the rows of ops.monitoring up to the date in, HTML text out.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io

import pandas as pd


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 8.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def drift_plot(history: pd.DataFrame, threshold: float | None) -> str | None:
    """PSI of each feature (and of the predictions) per monitor date."""
    psi = history[history.kind.isin(["drift", "prediction_drift"]) & (history.metric == "psi")]
    if psi.empty:
        return None
    fig, ax = _figure()
    for name, rows in psi.sort_values("monitor_date").groupby("name", sort=True):
        ax.plot(pd.to_datetime(rows.monitor_date), rows.value, marker=".", linewidth=1,
                label=name, linestyle="--" if name == "prediction" else "-")
    if threshold is not None:
        ax.axhline(threshold, color="red", linewidth=1, linestyle=":", label=f"threshold {threshold}")
    ax.set_ylabel("PSI vs training baseline")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)


def performance_plot(history: pd.DataFrame, validation: dict[int, float]) -> str | None:
    """The matured metric per window end, one line per model version, with each version's validation metric."""
    perf = history[(history.kind == "performance") & history.value.notna()]
    if perf.empty:
        return None
    fig, ax = _figure()
    for version, rows in perf.sort_values("window_end").groupby("model_version", sort=True):
        line, = ax.plot(pd.to_datetime(rows.window_end), rows.value, marker="o", markersize=3,
                        label=f"v{version} matured")
        if version in validation:
            ax.axhline(validation[version], color=line.get_color(), linestyle=":", linewidth=1,
                       label=f"v{version} validation")
    ax.set_ylabel(perf.metric.iloc[0])
    ax.set_xlabel("last score date of the matured window")
    ax.legend(fontsize=7, ncol=2)
    fig.autofmt_xdate()
    return _png(fig)


def segment_plot(today: pd.DataFrame) -> str | None:
    """The matured metric per segment value of today's window."""
    seg = today[(today.kind == "segment") & today.value.notna()]
    if seg.empty:
        return None
    fig, ax = _figure(8.0, 0.3 * len(seg) + 1.0)
    labels = [f"{n}={s} (v{v}, {r} rows)" for n, s, v, r in zip(seg.name, seg.segment, seg.model_version, seg.rows)]
    ax.barh(labels, seg.value)
    ax.set_xlabel(seg.metric.iloc[0])
    ax.invert_yaxis()
    return _png(fig)


def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    if frame.empty:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for _, row in frame[columns].iterrows():
        cells = []
        for c in columns:
            v = row[c]
            text = f"{v:.4f}" if isinstance(v, float) else ("" if v is None or (isinstance(v, float) and v != v) else str(v))
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(pipeline: str, monitor_date: dt.date, history: pd.DataFrame, champion: int,
           validation: dict[int, float], psi_threshold: float | None) -> str:
    """The HTML page: decision, drift, performance and segment plots, today's numbers, quality trend."""
    today = history[history.monitor_date == monitor_date]
    decision = today[today.kind.isin(["decision", "retrain"])]
    plots = [("Drift per feature over time", drift_plot(history, psi_threshold)),
             ("Performance on matured labels over time", performance_plot(history, validation)),
             ("Segment breakdown (today's matured window)", segment_plot(today))]
    parts = [f"<h1>{html.escape(pipeline)}: monitoring {monitor_date}</h1>",
             f"<p>champion: version {champion}</p>", "<h2>Decision</h2>",
             _table(decision, ["kind", "name", "value", "detail"])]
    for title, png in plots:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{png}">' if png
                     else "<p>no data yet</p>")
    parts += ["<h2>Today's drift</h2>",
              _table(today[today.kind.isin(["drift", "prediction_drift"])],
                     ["kind", "name", "metric", "value", "threshold", "breached", "rows"]),
              "<h2>Today's performance</h2>",
              _table(today[today.kind.isin(["performance", "segment"])],
                     ["model_version", "kind", "name", "segment", "window_start", "window_end", "metric", "value",
                      "rows", "detail"]),
              "<h2>Data quality trend</h2>",
              _table(today[today.kind == "quality"], ["name", "metric", "value", "rows", "detail"])]
    style = ("body{font-family:sans-serif;margin:2em;max-width:60em} table{border-collapse:collapse;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(pipeline)} monitoring "
            f"{monitor_date}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
