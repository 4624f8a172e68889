"""Anomaly labels of simulated data (``fleetscore simulate --labels``) and detection quality against them.

Labels: CSV ``Device,Sensor,Kind,Start,End``, one row per injected anomaly; a window whose start lies in
``[Start, End)`` is anomalous. Anomalies of one series never overlap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fleetscore.errors import SourceReadError

KINDS = ("spike", "level_shift", "stuck")


def read_labels(path: str | Path) -> pd.DataFrame:
    """Read a labels CSV, ids as strings and times as naive timestamps."""
    try:
        labels = pd.read_csv(path, dtype={"Device": str, "Sensor": str, "Kind": str})
    except (OSError, ValueError) as exc:
        raise SourceReadError(f"{path}: cannot read labels: {exc}") from exc
    missing = {"Device", "Sensor", "Kind", "Start", "End"} - set(labels.columns)
    if missing:
        raise SourceReadError(f"{path}: not a labels file (missing {', '.join(sorted(missing))})")
    labels["Start"] = pd.to_datetime(labels["Start"])
    labels["End"] = pd.to_datetime(labels["End"])
    return labels


def label_windows(windows: pd.DataFrame, labels: pd.DataFrame, device: str = "device", sensor: str = "sensor",
                  ts: str = "ts") -> np.ndarray:
    """The anomaly kind of each row of ``windows`` ('' = normal), in the rows' order."""
    rows = pd.DataFrame({"d": windows[device].astype(str).to_numpy(), "s": windows[sensor].astype(str).to_numpy(),
                         "t": pd.to_datetime(windows[ts]).to_numpy().astype("datetime64[ns]"),
                         "i": np.arange(len(windows))})
    marks = pd.DataFrame({"d": labels["Device"].astype(str), "s": labels["Sensor"].astype(str),
                          "t": labels["Start"].to_numpy().astype("datetime64[ns]"),
                          "end": labels["End"].to_numpy().astype("datetime64[ns]"),
                          "kind": labels["Kind"].astype(str)})
    matched = pd.merge_asof(rows.sort_values("t"), marks.sort_values("t"), on="t", by=["d", "s"],
                            direction="backward")
    inside = matched["end"].notna() & (matched["t"] < matched["end"])
    kinds = np.full(len(windows), "", dtype=object)
    kinds[matched.loc[inside, "i"].to_numpy()] = matched.loc[inside, "kind"].to_numpy()
    return kinds


def detection_quality(kinds: np.ndarray, flagged: np.ndarray) -> dict[str, dict[str, float]]:
    """Recall per anomaly kind and the false-alarm rate on normal windows.

    Returns ``{kind: {"windows": n, "recall": r}, ..., "normal": {"windows": n, "false_alarm_rate": f}}``.
    """
    flagged = np.asarray(flagged, dtype=bool)
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        mask = kinds == kind
        out[kind] = {"windows": int(mask.sum()), "recall": float(flagged[mask].mean()) if mask.any() else float("nan")}
    normal = kinds == ""
    out["normal"] = {"windows": int(normal.sum()),
                     "false_alarm_rate": float(flagged[normal].mean()) if normal.any() else float("nan")}
    return out
