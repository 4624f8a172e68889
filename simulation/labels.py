"""Labels of simulated data (``fleetscore simulate --labels``) and detection quality against them.

Labels: CSV ``Device,Sensor,Kind,Start,End,Label,Visible``, one row per labelled event and sensor; a
window whose start lies in ``[Start, End)`` has that row's kind. ``Label`` is ``anomaly`` (a window a
detector should flag) or ``normal`` (a legitimate event, such as a setpoint change: flagging it is a false
alarm, counted on its own); ``Visible`` is false on anomalous windows a detector that looks at one window
at a time cannot see (the first windows of a slow drift). Files without ``Label``/``Visible`` (written
before they existed) read as anomalies, visible. Labelled rows of one series never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fleetscore.errors import SourceReadError

ANOMALY_KINDS = ("spike", "level_shift", "variance", "stuck", "drift", "device")
NORMAL_KINDS = ("setpoint_change", "micro_stop", "dropout")


def read_labels(path: str | Path) -> pd.DataFrame:
    """Read a labels CSV, ids as strings and times as naive timestamps."""
    try:
        labels = pd.read_csv(path, dtype={"Device": str, "Sensor": str, "Kind": str, "Label": str})
    except (OSError, ValueError) as exc:
        raise SourceReadError(f"{path}: cannot read labels: {exc}") from exc
    missing = {"Device", "Sensor", "Kind", "Start", "End"} - set(labels.columns)
    if missing:
        raise SourceReadError(f"{path}: not a labels file (missing {', '.join(sorted(missing))})")
    labels["Start"] = pd.to_datetime(labels["Start"])
    labels["End"] = pd.to_datetime(labels["End"])
    if "Label" not in labels.columns:
        labels["Label"] = "anomaly"
    if "Visible" not in labels.columns:
        labels["Visible"] = True
    labels["Visible"] = labels["Visible"].astype(str).str.lower().isin(("true", "1"))
    bad = ~labels["Label"].isin(("anomaly", "normal"))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        got = labels["Label"][bad].iloc[0]
        raise SourceReadError(f"{path}: line {row}: Label must be anomaly or normal, got {got!r}")
    return labels


@dataclass(frozen=True)
class WindowLabels:
    """Per window, in the windows' order: the kind ('' = unlabelled), whether it is an anomaly, and
    whether a per-window detector can see it (false on normal windows)."""

    kind: np.ndarray
    anomalous: np.ndarray
    visible: np.ndarray


def match_labels(windows: pd.DataFrame, labels: pd.DataFrame, device: str = "device", sensor: str = "sensor",
                 ts: str = "ts") -> WindowLabels:
    """Label each row of ``windows`` (columns ``device``, ``sensor``, ``ts`` by default) from ``labels``."""
    rows = pd.DataFrame({"d": windows[device].astype(str).to_numpy(), "s": windows[sensor].astype(str).to_numpy(),
                         # naive UTC, whether the rows' times are naive (windows) or UTC-aware (predictions)
                         "t": pd.to_datetime(windows[ts], utc=True).dt.tz_convert(None).to_numpy()
                         .astype("datetime64[ns]"),
                         "i": np.arange(len(windows))})
    label = labels["Label"] if "Label" in labels.columns else pd.Series("anomaly", index=labels.index)
    visible = labels["Visible"] if "Visible" in labels.columns else pd.Series(True, index=labels.index)
    marks = pd.DataFrame({"d": labels["Device"].astype(str), "s": labels["Sensor"].astype(str),
                          "t": labels["Start"].to_numpy().astype("datetime64[ns]"),
                          "end": labels["End"].to_numpy().astype("datetime64[ns]"),
                          "kind": labels["Kind"].astype(str), "label": label.astype(str),
                          "visible": visible.astype(bool)})
    matched = pd.merge_asof(rows.sort_values("t"), marks.sort_values("t"), on="t", by=["d", "s"],
                            direction="backward")
    inside = (matched["end"].notna() & (matched["t"] < matched["end"])).to_numpy()
    where = matched["i"].to_numpy()[inside]
    kind = np.full(len(windows), "", dtype=object)
    kind[where] = matched["kind"].to_numpy()[inside]
    anomalous = np.zeros(len(windows), dtype=bool)
    anomalous[where] = matched["label"].to_numpy()[inside] == "anomaly"
    seen = np.zeros(len(windows), dtype=bool)
    seen[where] = matched["visible"].to_numpy()[inside].astype(bool)
    return WindowLabels(kind=kind, anomalous=anomalous, visible=seen & anomalous)


def label_windows(windows: pd.DataFrame, labels: pd.DataFrame, device: str = "device", sensor: str = "sensor",
                  ts: str = "ts") -> np.ndarray:
    """The labelled kind of each row of ``windows`` ('' = unlabelled), in the rows' order."""
    return match_labels(windows, labels, device, sensor, ts).kind


def after_anomaly(windows: pd.DataFrame, kind: np.ndarray, span: int, device: str = "device",
                  sensor: str = "sensor") -> np.ndarray:
    """Unlabelled rows of ``windows`` (sorted by series, then time) within ``span`` windows after an
    anomalous row of the same series: where features that look back ``span`` windows still hold the
    anomaly (``kind`` from :func:`label_windows`)."""
    anomalous = np.asarray(kind) != ""
    keys = (windows[device].astype(str) + "\x00" + windows[sensor].astype(str)).to_numpy()
    out = np.zeros(len(windows), dtype=bool)
    for lag in range(1, span + 1):
        if lag >= len(windows):
            break
        out[lag:] |= anomalous[:-lag] & (keys[:-lag] == keys[lag:])
    return out & ~anomalous


@dataclass(frozen=True)
class KindQuality:
    """Flagged windows of one kind: ``rate`` is the recall of an anomaly kind, the false-alarm rate of a
    normal one (``nan`` without windows)."""

    kind: str
    label: str
    windows: int
    flagged: int

    @property
    def rate(self) -> float:
        """flagged / windows."""
        return self.flagged / self.windows if self.windows else float("nan")


@dataclass(frozen=True)
class DetectionQuality:
    """Recall per anomaly kind, false alarms per legitimate event kind and on every normal window.

    ``recall`` counts the visible anomalous windows (the targets' denominator); ``hidden`` the rest."""

    anomalies: tuple[KindQuality, ...]
    events: tuple[KindQuality, ...]
    normal: KindQuality
    recall: KindQuality
    hidden: KindQuality

    def row(self, kind: str) -> KindQuality:
        """The row of one kind (anomaly or legitimate event)."""
        for q in (*self.anomalies, *self.events):
            if q.kind == kind:
                return q
        raise KeyError(kind)


def detection_quality(labels: WindowLabels, flagged: np.ndarray,
                      kinds: tuple[str, ...] | None = None) -> DetectionQuality:
    """The quality of ``flagged`` (one bool per window) against ``labels``; per anomaly kind the visible
    windows count. ``kinds`` restricts and orders the anomaly kinds (default: those present)."""
    flagged = np.asarray(flagged, dtype=bool)

    def q(kind: str, label: str, mask: np.ndarray) -> KindQuality:
        return KindQuality(kind, label, int(mask.sum()), int(flagged[mask].sum()))

    present = [k for k in ANOMALY_KINDS if (labels.kind == k).any()] + sorted(
        {str(k) for k in labels.kind[labels.anomalous]} - set(ANOMALY_KINDS))
    names = present if kinds is None else list(kinds)
    anomalies = tuple(q(k, "anomaly", (labels.kind == k) & labels.visible) for k in names)
    normal_kinds = [k for k in NORMAL_KINDS if (labels.kind == k).any()]
    events = tuple(q(k, "normal", (labels.kind == k) & ~labels.anomalous) for k in normal_kinds)
    return DetectionQuality(anomalies=anomalies, events=events, normal=q("normal", "normal", ~labels.anomalous),
                            recall=q("anomaly", "anomaly", labels.visible),
                            hidden=q("hidden", "anomaly", labels.anomalous & ~labels.visible))
