"""The default features and hyperparameters detect every simulated anomaly kind at a low false-alarm rate."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from fleetscore.simulation.labels import after_anomaly, label_windows
from fleetscore.simulation.simulate import SimulationSpec
from fleetscore.training.config import TrainingConfig
from fleetscore.training.fit import fit_shard
from fleetscore.training.kernel import score_windows
from tests.training.helpers import simulated_windows

START = datetime(2024, 1, 1)
TRAIN_END = START + timedelta(hours=1)  # the simulator keeps the first hour free of anomalies


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    spec = SimulationSpec(devices=8, sensors=5, start=START, duration=timedelta(hours=3), seed=42,
                          anomaly_rate=0.03)
    windows, labels = simulated_windows(spec)
    assert set(labels["Kind"]) == {"spike", "level_shift", "stuck"}
    return windows, labels


def _rates(config: TrainingConfig, fleet) -> dict[str, float]:  # type: ignore[no-untyped-def]
    windows, labels = fleet
    train = windows[windows["ts"] < TRAIN_END].reset_index(drop=True)
    fit = fit_shard(train, config)
    assert len(fit.bundle) == 40 and not fit.failed
    ctx = timedelta(seconds=5 * fit.bundle.context_windows)
    test = windows[windows["ts"] >= TRAIN_END - ctx].reset_index(drop=True)
    scored = score_windows(fit.bundle, test, start=TRAIN_END)
    kind = label_windows(scored, labels)
    flagged = scored["prediction"].to_numpy() == 1
    rates = {k: float(flagged[kind == k].mean()) for k in ("spike", "level_shift", "stuck")}
    rates["false_alarm"] = float(flagged[kind == ""].mean())
    tail = after_anomaly(scored, kind, config.rolling_window)
    rates["false_alarm_past_tail"] = float(flagged[(kind == "") & ~tail].mean())
    return rates


def test_defaults_reach_recall_095_per_kind_at_1_percent_false_alarms(fleet) -> None:  # type: ignore[no-untyped-def]
    rates = _rates(TrainingConfig(), fleet)
    print("defaults:", rates)
    assert rates["spike"] >= 0.95
    assert rates["level_shift"] >= 0.95
    assert rates["stuck"] >= 0.95
    # the recent_* features look back rolling_window windows: an anomaly's windows still weigh in them
    # for that long after it ends (about half the false alarms on this simulator); past that tail the
    # rate is the calibration target's
    assert rates["false_alarm_past_tail"] <= 0.01
    assert rates["false_alarm"] <= 0.015


def test_value_alone_misses_stuck_sensors(fleet) -> None:  # type: ignore[no-untyped-def]
    rates = _rates(TrainingConfig(features=("value",)), fleet)
    print("value only:", rates)
    assert rates["stuck"] < 0.5  # why "spread" is in the defaults


def test_reference_hyperparameters_give_tiny_models(fleet) -> None:  # type: ignore[no-untyped-def]
    windows, _ = fleet
    train = windows[windows["ts"] < TRAIN_END].reset_index(drop=True)
    fit = fit_shard(train, TrainingConfig(features=("value",), nu=0.0001, gamma=0.01, offset_margin=0.0))
    assert np.median(fit.bundle.n_support) <= 2  # one or two support vectors per model


def test_short_series_are_skipped_with_the_reason(fleet) -> None:  # type: ignore[no-untyped-def]
    windows, _ = fleet
    short = windows[windows["ts"] < START + timedelta(seconds=5 * 30)].reset_index(drop=True)
    fit = fit_shard(short, TrainingConfig(min_rows=50), exclude={("1", "1")})
    assert len(fit.bundle) == 0
    assert fit.skipped[("1", "1")] == "excluded by validation"
    assert fit.skipped[("1", "2")] == "30 windows, fewer than min_rows=50"
