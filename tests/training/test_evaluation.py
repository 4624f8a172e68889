"""The evaluation gate: promoted, kept from the champion, new; force; the first release."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from fleetscore.simulation.simulate import SimulationSpec
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.evaluation import run_gate
from fleetscore.training.features import series_starts
from fleetscore.training.fit import fit_shard
from fleetscore.training.injection import KINDS, noise_sigma, perturb
from tests.training.helpers import simulated_windows

START = datetime(2024, 1, 1)
CONFIG = TrainingConfig(features=("value", "spread"))  # the gate logic, on a small fleet


@pytest.fixture(scope="module")
def parts():  # type: ignore[no-untyped-def]
    spec = SimulationSpec(devices=3, sensors=2, start=START, duration=timedelta(minutes=90), seed=5, anomaly_rate=0)
    windows, _ = simulated_windows(spec)
    old = windows[windows["ts"] < START + timedelta(minutes=45)].reset_index(drop=True)
    new = windows[(windows["ts"] >= START + timedelta(minutes=30))
                  & (windows["ts"] < START + timedelta(minutes=75))].reset_index(drop=True)
    holdout = windows[windows["ts"] >= START + timedelta(minutes=75)].reset_index(drop=True)
    champion = fit_shard(old[old["device"] != "3"].reset_index(drop=True), CONFIG).bundle  # no device 3 yet
    good = fit_shard(new[new["device"] != "2"].reset_index(drop=True), CONFIG).bundle
    # device 2's new models are bad: nu=0.5 with libsvm's own boundary (no calibration) puts half of the
    # normal windows outside
    bad = fit_shard(new[new["device"] == "2"].reset_index(drop=True),
                    TrainingConfig(features=CONFIG.features, nu=0.5, gamma=5.0, offset_margin=0.0,
                                   target_false_alarm_rate=0.0)).bundle
    challenger = ReleaseBundle.concat([good, bad], manifest={})
    return champion, challenger, holdout


def test_perturbations_inject_each_kind(parts) -> None:  # type: ignore[no-untyped-def]
    _, _, holdout = parts
    assert KINDS == ("spike", "level_shift", "variance", "stuck", "drift", "device")
    for kind in KINDS:
        changed, mask = perturb(holdout, kind, seed=0)
        assert mask.any() and len(changed) == len(holdout)
        moved = changed["value"].to_numpy() != holdout["value"].to_numpy()
        assert not (mask & ~moved).any()  # every counted window was changed
        if kind != "drift":  # a drift's windows below 2 sigma are changed but not counted
            np.testing.assert_array_equal(moved, mask)
        if kind == "stuck":
            assert (changed["value_max"] - changed["value_min"]).to_numpy()[mask].max() == 0


def _runs(holdout, kind):  # type: ignore[no-untyped-def]
    changed, mask = perturb(holdout, kind, seed=0)
    starts = series_starts(holdout)
    sigma = np.repeat(noise_sigma(holdout["value"].to_numpy(), starts), np.diff(starts))
    return changed, mask, sigma


def test_shifts_are_sized_in_each_series_noise(parts) -> None:  # type: ignore[no-untyped-def]
    _, _, holdout = parts
    changed, mask, sigma = _runs(holdout, "level_shift")
    size = np.abs(changed["value"].to_numpy() - holdout["value"].to_numpy())[mask] / sigma[mask]
    assert size.min() >= 2.5 - 1e-9 and size.max() <= 3.5 + 1e-9
    changed, mask, sigma = _runs(holdout, "drift")
    size = np.abs(changed["value"].to_numpy() - holdout["value"].to_numpy())[mask] / sigma[mask]
    assert size.min() >= 2.0 - 1e-9 and size.max() == pytest.approx(5.0)


def test_variance_keeps_the_mean_and_widens_the_spread(parts) -> None:  # type: ignore[no-untyped-def]
    _, _, holdout = parts
    changed, mask, _ = _runs(holdout, "variance")
    series = holdout.loc[mask, ["device", "sensor"]].astype(str).agg("/".join, axis=1).to_numpy()
    for key in set(series):
        rows = np.flatnonzero(mask)[series == key]
        assert changed["value"].to_numpy()[rows].mean() == pytest.approx(holdout["value"].to_numpy()[rows].mean())
        spread_before = (holdout["value_max"] - holdout["value_min"]).to_numpy()[rows]
        spread_after = (changed["value_max"] - changed["value_min"]).to_numpy()[rows]
        np.testing.assert_allclose(spread_after, 4 * spread_before)


def test_a_device_anomaly_hits_every_sensor_of_the_device_at_once(parts) -> None:  # type: ignore[no-untyped-def]
    _, _, holdout = parts
    changed, mask, _ = _runs(holdout, "device")
    hit = holdout.loc[mask, ["device", "sensor", "ts"]]
    for device, rows in hit.groupby("device"):
        per_sensor = [set(g["ts"]) for _, g in rows.groupby("sensor")]
        assert len(per_sensor) == holdout.loc[holdout["device"] == device, "sensor"].nunique()
        assert all(ts == per_sensor[0] for ts in per_sensor)
    shift = (changed["value"].to_numpy() - holdout["value"].to_numpy())[mask]
    assert (shift > 0).any() and (shift < 0).any()  # sensors move in opposite directions


def test_gate_promotes_keeps_and_adds(parts) -> None:  # type: ignore[no-untyped-def]
    champion, challenger, holdout = parts
    result = run_gate(challenger, champion, holdout, CONFIG, champion_version=7)
    assert {k: v for k, v in result.decisions.items() if k[0] == "2"} == {("2", "1"): "kept", ("2", "2"): "kept"}
    assert result.decisions[("1", "1")] == "promoted" and result.decisions[("1", "2")] == "promoted"
    assert result.decisions[("3", "1")] == "new" and result.decisions[("3", "2")] == "new"
    assert result.counts == {"promoted": 2, "kept": 2, "new": 2}
    assert result.summary(8) == "released v8: 2 promoted, 2 kept from v7, 2 new, 0 failed"
    # the kept models are the champion's, bit for bit, and say so in the manifest
    i, j = result.bundle.index("2", "1"), champion.index("2", "1")
    kept = result.bundle.support_vectors[result.bundle.sv_offsets[i]:result.bundle.sv_offsets[i + 1]]
    np.testing.assert_array_equal(kept, champion.support_vectors[champion.sv_offsets[j]:champion.sv_offsets[j + 1]])
    record = result.bundle.series_manifest("2", "1")
    assert record["decision"] == "kept" and record["kept_from"] == 7
    assert record["gate"]["challenger"]["far"] > record["gate"]["champion"]["far"]
    assert result.bundle.series_manifest("1", "1")["gate"]["passed"] is True


def test_force_promotes_every_challenger(parts) -> None:  # type: ignore[no-untyped-def]
    champion, challenger, holdout = parts
    result = run_gate(challenger, champion, holdout, CONFIG, champion_version=7, force=True)
    assert result.counts == {"promoted": 4, "kept": 0, "new": 2}
    assert result.bundle.series_manifest("2", "1")["gate"]["forced"] is True


def test_first_release_takes_everything_as_new(parts) -> None:  # type: ignore[no-untyped-def]
    _, challenger, holdout = parts
    result = run_gate(challenger, None, holdout, CONFIG)
    assert result.counts == {"promoted": 0, "kept": 0, "new": 6}
    assert result.summary(1) == "released v1: 0 promoted, 0 kept, 6 new, 0 failed"


def test_champion_series_without_a_challenger_are_kept(parts) -> None:  # type: ignore[no-untyped-def]
    champion, challenger, holdout = parts
    only_device_1 = challenger.subset([challenger.index("1", "1"), challenger.index("1", "2")])
    result = run_gate(only_device_1, champion, holdout[holdout["device"] == "1"].reset_index(drop=True), CONFIG, 3)
    assert result.decisions[("2", "1")] == "kept" and len(result.bundle) == 4
    assert result.bundle.series_manifest("2", "2")["kept_from"] == 3


def test_a_champion_that_flags_the_holdout_as_it_is_gives_way(parts) -> None:  # type: ignore[no-untyped-def]
    """Its recall is that of a model flagging everything: a challenger fitted on the new level wins."""
    spec = SimulationSpec(devices=1, sensors=2, start=START, duration=timedelta(minutes=90), seed=6, anomaly_rate=0)
    windows, _ = simulated_windows(spec)
    moved = windows.copy()
    later = moved["ts"] >= START + timedelta(minutes=45)
    for column in ("value", "value_min", "value_max"):
        moved.loc[later, column] += 50.0  # the series moved to a new operating level
    champion = fit_shard(moved[~later].reset_index(drop=True), CONFIG).bundle
    holdout_from = START + timedelta(minutes=75)
    challenger = fit_shard(moved[later & (moved["ts"] < holdout_from)].reset_index(drop=True), CONFIG).bundle
    holdout = moved[moved["ts"] >= holdout_from].reset_index(drop=True)
    result = run_gate(challenger, champion, holdout, CONFIG, champion_version=1)
    assert result.counts == {"promoted": 2, "kept": 0, "new": 0}
    gate = result.bundle.series_manifest("1", "1")["gate"]
    assert gate["champion"]["far"] > 0.5 and gate["champion"]["recall"] > gate["challenger"]["recall"]
