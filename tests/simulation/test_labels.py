"""Labels of simulated anomalies and detection quality against them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetscore.errors import SourceReadError
from fleetscore.simulation.labels import detection_quality, label_windows, read_labels


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
    quality = detection_quality(kinds, flagged)
    assert quality["spike"] == {"windows": 1, "recall": 1.0}
    assert quality["stuck"] == {"windows": 2, "recall": 0.5}
    assert quality["level_shift"] == {"windows": 1, "recall": 1.0}
    assert quality["normal"] == {"windows": 4, "false_alarm_rate": 0.25}


def test_a_file_that_is_not_labels_is_named(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text("TS,Device,Sensor,Value\n")
    with pytest.raises(SourceReadError, match=r"readings\.csv: not a labels file \(missing End, Kind, Start\)"):
        read_labels(path)
