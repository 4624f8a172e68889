"""The refit after the gate: promoted and new series are fitted again on the whole range, kept ones are not."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fleetscore.pipelines.refit import refit_full_range
from fleetscore.pipelines.release import train_candidate
from fleetscore.pipelines.settings import load_settings
from fleetscore.simulation.simulate import SimulationSpec, simulate_fleet
from fleetscore.training.evaluation import run_gate


def test_promoted_and_new_series_are_refitted_on_the_whole_range(home: Path) -> None:
    settings = load_settings({"workers": 1}, environ={})
    start = datetime(2024, 1, 1)
    spec = SimulationSpec(devices=3, sensors=2, duration=timedelta(hours=2), start=start, seed=7)
    simulate_fleet(spec, database_url=settings.database_url)
    candidate = train_candidate(settings, start, start + timedelta(hours=2), skip_validation=True)
    gate = run_gate(candidate.bundle, None, pd.DataFrame(), settings.training)
    decisions = dict(gate.decisions)
    kept = gate.bundle.keys[0]
    decisions[kept] = "kept"

    released = refit_full_range(settings, gate.bundle, decisions, candidate.start, candidate.end)

    assert released.keys == gate.bundle.keys
    before = {(r["device"], r["sensor"]): r for r in gate.bundle.manifest["series"]}
    after = {(r["device"], r["sensor"]): r for r in released.manifest["series"]}
    assert after[kept] == before[kept]
    assert np.array_equal(released.mean[0], gate.bundle.mean[0])
    for i, key in enumerate(released.keys[1:], start=1):
        assert after[key]["refit"] is True
        assert pd.Timestamp(before[key]["train_end"]) < candidate.split <= pd.Timestamp(after[key]["train_end"])
        assert after[key]["rows"] > before[key]["rows"]
        assert after[key]["decision"] == before[key]["decision"]
        assert not np.array_equal(released.mean[i], gate.bundle.mean[i])
