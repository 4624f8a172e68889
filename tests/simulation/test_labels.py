"""Labels of simulated anomalies and detection quality against them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetscore.errors import SourceReadError
from fleetscore.simulation.labels import WindowLabels, detection_quality, label_windows, match_labels, read_labels


def _labels(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "labels.csv"
    path.write_text("Device,Sensor,Kind,Start,End\n"
                    "1,2,spike,2024-01-01 00:00:10,2024-01-01 00:00:15\n"
                    "1,2,stuck,2024-01-01 00:01:00,2024-01-01 00:02:00\n"
                    "3,2,level_shift,2024-01-01 00:00:00,2024-01-01 00:00:10\n")
    return read_labels(path)


def test_windows_inside_start_end_get_the_kind(tmp_path: Path) -> None:
    ts = pd.date_range("2024-01-01", periods=30, freq="5s")
    windows = pd.DataFrame({"device": ["1"] * 30 + ["3"] * 30, "sensor": ["2"] * 60,
                            "ts": list(ts) + list(ts)})
    kinds = label_windows(windows, _labels(tmp_path))
    expected = np.full(60, "", dtype=object)
    expected[2] = "spike"                   # [00:00:10, 00:00:15): one window
    expected[12:24] = "stuck"               # [00:01:00, 00:02:00): twelve windows, end excluded
    expected[30:32] = "level_shift"         # device 3, first two windows
    assert list(kinds) == list(expected)


def test_detection_quality_per_kind(tmp_path: Path) -> None:
    kinds = np.array(["", "", "", "", "spike", "stuck", "stuck", "level_shift"], dtype=object)
    flagged = np.array([True, False, False, False, True, True, False, True])
    anomalous = kinds != ""
    quality = detection_quality(WindowLabels(kinds, anomalous, anomalous), flagged)
    assert [(q.kind, q.windows, q.rate) for q in quality.anomalies] == [
        ("spike", 1, 1.0), ("level_shift", 1, 1.0), ("stuck", 2, 0.5)]
    assert (quality.normal.windows, quality.normal.rate) == (4, 0.25)
    assert (quality.recall.windows, quality.recall.flagged) == (4, 3)
    assert quality.events == () and quality.hidden.windows == 0


def test_legitimate_events_and_hidden_windows_are_counted_apart(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("Device,Sensor,Kind,Start,End,Label,Visible\n"
                    "p,t,drift,2024-01-01 00:00:00,2024-01-01 00:00:10,anomaly,False\n"
                    "p,t,drift,2024-01-01 00:00:10,2024-01-01 00:00:20,anomaly,True\n"
                    "p,t,setpoint_change,2024-01-01 00:00:30,2024-01-01 00:00:40,normal,True\n")
    ts = pd.date_range("2024-01-01", periods=10, freq="5s")
    labels = match_labels(pd.DataFrame({"device": ["p"] * 10, "sensor": ["t"] * 10, "ts": ts}), read_labels(path))
    assert list(labels.kind) == ["drift"] * 4 + [""] * 2 + ["setpoint_change"] * 2 + [""] * 2
    assert list(labels.anomalous) == [True] * 4 + [False] * 6
    assert list(labels.visible) == [False, False, True, True] + [False] * 6
    flagged = np.array([True, False, True, False, False, False, True, False, False, False])
    quality = detection_quality(labels, flagged)
    assert (quality.row("drift").windows, quality.row("drift").rate) == (2, 0.5)  # visible windows only
    assert (quality.hidden.windows, quality.hidden.rate) == (2, 0.5)
    assert (quality.row("setpoint_change").windows, quality.row("setpoint_change").rate) == (2, 0.5)
    assert (quality.normal.windows, quality.normal.flagged) == (6, 1)  # legitimate events count as normal


def test_labels_written_before_label_and_visible_read_as_visible_anomalies(tmp_path: Path) -> None:
    labels = _labels(tmp_path)
    assert list(labels.Label) == ["anomaly"] * 3 and labels.Visible.all()


def test_a_file_that_is_not_labels_is_named(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text("TS,Device,Sensor,Value\n")
    with pytest.raises(SourceReadError, match=r"readings\.csv: not a labels file \(missing End, Kind, Start\)"):
        read_labels(path)
