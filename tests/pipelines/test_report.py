"""The HTML report lists a run's anomalous episodes with the reason of each."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from fleetscore.pipelines.report import render_report

RECORD = {"run_id": "20260105T030000000-aaaaaa", "window_start": "2026-01-05 01:00", "window_end": "2026-01-05 02:00",
          "release_version": 3, "release_ref": "champion", "data_hash": "h", "validation_id": "", "location": "x",
          "rows": 40, "anomalies": 5}


def _predictions() -> pd.DataFrame:
    ts = pd.date_range("2026-01-05 01:00", periods=20, freq="5s", tz="UTC")
    frame = pd.DataFrame({"TS": list(ts) * 2, "Device": ["d1"] * 20 + ["d2"] * 20, "Sensor": "temp", "Val": 1.0,
                          "Prediction": 0, "Score": 0.5, "ModelVersion": 3, "ModelScope": "series",
                          "Reason": "value"})
    # d1: windows 2, 3, 4 anomalous (one episode, peak at 3, driven by the spread); 15 alone (another)
    for row, score, reason in [(2, -0.2, "value"), (3, -2.5, "log_spread"), (4, -0.1, "value"), (15, -0.3, "value")]:
        frame.loc[row, ["Prediction", "Score", "Reason"]] = [1, score, reason]
    # d2: one window, the strongest of the run
    frame.loc[30, ["Prediction", "Score", "Reason"]] = [1, -4.0, "recent_mean"]
    return frame


def test_the_report_lists_episodes_strongest_first_with_their_reason() -> None:
    page = render_report(RECORD, _predictions(), [], [], 0.25, timedelta(seconds=15))
    assert "<h2>Anomalous episodes (3)</h2>" in page
    section = page[page.index("Anomalous episodes"):]
    rows = [r for r in section.split("<tr>")[2:5]]
    assert rows[0].startswith("<td>d2</td><td>temp</td><td>2026-01-05 01:00:50</td><td>2026-01-05 01:00:50</td>"
                              "<td>1</td><td>-4.000</td><td>recent_mean</td>")
    assert rows[1].startswith("<td>d1</td><td>temp</td><td>2026-01-05 01:00:10</td><td>2026-01-05 01:00:20</td>"
                              "<td>3</td><td>-2.500</td><td>log_spread</td>")
    assert rows[2].startswith("<td>d1</td><td>temp</td><td>2026-01-05 01:01:15</td><td>2026-01-05 01:01:15</td>"
                              "<td>1</td><td>-0.300</td><td>value</td>")


def test_rows_from_before_the_reason_column_show_an_empty_reason() -> None:
    predictions = _predictions()
    predictions["Reason"] = None
    page = render_report(RECORD, predictions, [], [], 0.25, timedelta(seconds=15))
    assert "<td>-4.000</td><td></td></tr>" in page
