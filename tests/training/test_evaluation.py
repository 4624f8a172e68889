"""The evaluation gate: promoted, kept from the champion, new; force; the first release."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from fleetscore.simulation.simulate import SimulationSpec
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.evaluation import KINDS, perturb, run_gate
from fleetscore.training.fit import fit_shard
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
    for kind in KINDS:
        changed, mask = perturb(holdout, kind, seed=0)
        assert mask.any() and len(changed) == len(holdout)
        same = ~mask
        np.testing.assert_array_equal(changed["value"].to_numpy()[same], holdout["value"].to_numpy()[same])
        if kind == "stuck":
            assert (changed["value_max"] - changed["value_min"]).to_numpy()[mask].max() == 0
        else:
            assert (changed["value"].to_numpy()[mask] != holdout["value"].to_numpy()[mask]).all()


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
