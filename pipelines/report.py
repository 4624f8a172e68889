"""``fleetscore report``: one self-contained HTML page about a scoring run (plots as inline PNG).

Three plots: anomalies over time per sensor, the devices with most anomalies, and the anomaly rate of
this run against the earlier runs; then the run's anomalous episodes (consecutive anomalous windows of a
series, ``[alerts] event_gap`` apart at most) with the reason of each, and the most drifted series. No
JavaScript, no CDN: the page opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from fleetscore.errors import ScoringError
from fleetscore.ingestion.timeutil import parse_duration
from fleetscore.pipelines.adapters import storage_spec_for
from fleetscore.pipelines.events import episodes
from fleetscore.pipelines.settings import Settings
from fleetscore.records.run_log import RunLog
from fleetscore.redact import redact
from fleetscore.scoring import table

TOP_DEVICES = 15
TOP_EPISODES = 50


def write_report(settings: Settings, run_id: str, out: str | Path | None = None) -> Path:
    """Write the HTML report of a complete scoring run; returns its path.

    ``out`` defaults to ``HOME/reports/scoring/RUN_ID.html``.
    """
    from fleetscore.pipelines.run_recovery import reconcile_runs

    runs = RunLog(settings.database_url)
    reconcile_runs(settings, runs)
    record = runs.get(run_id)
    if record is None:
        raise ScoringError(f"no scoring run {run_id} in the run log")
    if record["status"] != "done":
        raise ScoringError(f"run {run_id} is {record['status']}: only complete runs have a report")
    predictions = table.read_run(storage_spec_for(settings), run_id)
    history = [r for r in runs.list(limit=200, status="done") if r["rows"]]
    from fleetscore.ingestion.ops_store import OpsStore

    drift = OpsStore(settings.database_url).drift_of_run(run_id)
    gap = parse_duration(settings.alerts.event_gap, "alerts.event_gap")
    page = render_report(record, predictions, history, drift, settings.training.drift_threshold, gap)
    path = Path(out) if out else Path(settings.home) / "reports" / "scoring" / f"{run_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def render_report(record: dict[str, Any], predictions: pd.DataFrame, history: list[dict[str, Any]],
                  drift: list[dict[str, Any]] | None = None, threshold: float = 0.25,
                  gap: timedelta = timedelta(seconds=15)) -> str:
    """The report page as a string (pure: no I/O). ``drift``: the run's most drifted series; ``gap``:
    the most time between two anomalous windows of one episode."""
    rows = len(predictions)
    anomalies = int(predictions["Prediction"].sum()) if rows else 0
    by_device = (predictions.groupby("Device")["Prediction"].sum().sort_values(ascending=False, kind="stable")
                 .head(TOP_DEVICES)) if rows else pd.Series(dtype="int64")
    summary = [
        ("run", record["run_id"]), ("window", f"{record['window_start']} .. {record['window_end']}"),
        ("release", f"v{record['release_version']} ({record['release_ref']})"),
        ("predictions", f"{rows:,}"), ("anomalies", f"{anomalies:,} ({anomalies / rows if rows else 0:.2%})"),
        ("devices", f"{predictions['Device'].nunique():,}" if rows else "0"),
        ("data hash", record["data_hash"]), ("validation report", record["validation_id"] or "skipped"),
        ("location", record["location"]),
    ]
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>fleetscore run {html.escape(record['run_id'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Scoring run {html.escape(record['run_id'])}</h1>",
        "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(redact(v))}</td></tr>"
                            for k, v in summary) + "</table>",
        "<h2>Anomalies over time, per sensor</h2>", _img(_plot_over_time(predictions)),
        "<h2>Devices with most anomalies</h2>", _img(_plot_top_devices(by_device)),
        "<table><tr><th>device</th><th>anomalies</th></tr>"
        + "".join(f"<tr><td>{html.escape(str(d))}</td><td>{int(n)}</td></tr>" for d, n in by_device.items())
        + "</table>",
        "<h2>Anomaly rate against earlier runs</h2>", _img(_plot_history(record, history)),
        _episodes_table(predictions, gap),
        f"<h2>Most drifted series (PSI; drifted above {threshold})</h2>",
        "<table><tr><th>device</th><th>sensor</th><th>drift</th><th>feature</th><th>anomaly rate</th></tr>"
        + "".join(f"<tr><td>{html.escape(str(r['device']))}</td><td>{html.escape(str(r['sensor']))}</td>"
                  f"<td>{r['drift']:.3f}{' (drifted)' if r['drift'] > threshold else ''}</td>"
                  f"<td>{html.escape(str(r['feature']))}</td>"
                  f"<td>{(r['anomalies'] / r['rows'] if r['rows'] else 0):.2%}</td></tr>" for r in drift or [])
        + "</table>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _episodes_table(predictions: pd.DataFrame, gap: timedelta) -> str:
    """The run's anomalous episodes, strongest first (the lowest peak score), at most ``TOP_EPISODES``."""
    flagged = predictions[predictions["Prediction"] == 1] if len(predictions) else predictions
    reason = flagged["Reason"].fillna("") if "Reason" in flagged else pd.Series("", index=flagged.index)
    rows = list(zip(flagged["Device"].astype(str), flagged["Sensor"].astype(str),
                    flagged["TS"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f") if len(flagged) else [],
                    flagged["Score"], reason, strict=True))
    found = sorted(episodes(rows, gap), key=lambda ep: ep.peak_score)
    shown = f", the {TOP_EPISODES} strongest" if len(found) > TOP_EPISODES else ""
    head = f"<h2>Anomalous episodes ({len(found):,}{shown})</h2>"
    table = ("<table><tr><th>device</th><th>sensor</th><th>from</th><th>to</th><th>windows</th><th>peak score</th>"
             "<th>reason</th></tr>"
             + "".join(f"<tr><td>{html.escape(ep.device)}</td><td>{html.escape(ep.sensor)}</td>"
                       f"<td>{ep.start:%Y-%m-%d %H:%M:%S}</td><td>{ep.end:%Y-%m-%d %H:%M:%S}</td>"
                       f"<td>{len(ep.windows)}</td><td>{ep.peak_score:.3f}</td><td>{html.escape(ep.reason)}</td></tr>"
                       for ep in found[:TOP_EPISODES])
             + "</table>")
    return head + "\n" + table


def _img(png: bytes) -> str:
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=90)
    return fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _plot_over_time(predictions: pd.DataFrame) -> bytes:
    fig, ax = _figure()
    if len(predictions):
        span = predictions["TS"].max() - predictions["TS"].min()
        step = max(pd.Timedelta(seconds=5), (span / 60).ceil("s"))
        counts = (predictions[predictions["Prediction"] == 1]
                  .groupby([pd.Grouper(key="TS", freq=step), "Sensor"]).size().unstack(fill_value=0))
        for sensor in sorted(predictions["Sensor"].unique()):
            series = counts[sensor] if sensor in counts else pd.Series(dtype="int64")
            ax.plot(series.index, series.to_numpy(), label=f"sensor {sensor}", drawstyle="steps-post")
        ax.legend(fontsize=7, ncol=5)
    ax.set_ylabel("anomalous windows")
    return _png(fig)


def _plot_top_devices(by_device: pd.Series) -> bytes:
    fig, ax = _figure()
    ax.barh([str(d) for d in by_device.index[::-1]], by_device.to_numpy()[::-1], color="#c0392b")
    ax.set_xlabel("anomalous windows")
    return _png(fig)


def _plot_history(record: dict[str, Any], history: list[dict[str, Any]]) -> bytes:
    fig, ax = _figure()
    points = sorted(((r["window_start"], r["anomalies"] / r["rows"], r["run_id"]) for r in history),
                    key=lambda p: (p[0], p[2]))
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="#7f8c8d", label="runs")
        mine = [p for p in points if p[2] == record["run_id"]]
        ax.plot([p[0] for p in mine], [p[1] for p in mine], "o", color="#c0392b", markersize=10, label="this run")
        ax.legend(fontsize=7)
    ax.set_ylabel("anomaly rate")
    ax.set_xlabel("window start")
    return _png(fig)
