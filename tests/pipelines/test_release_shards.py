"""Training over device shards: one failing shard marks its devices failed, the others are trained."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

import fleetscore.pipelines.refit as refit
import fleetscore.pipelines.release as release
from fleetscore.pipelines.settings import load_settings
from fleetscore.simulation.simulate import SimulationSpec, simulate_fleet
from fleetscore.training.fit import fit_shard


def test_a_failing_shard_does_not_stop_the_fleet(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings({"workers": 1}, environ={})  # shards run in this process, in order
    spec = SimulationSpec(devices=4, sensors=2, duration=timedelta(hours=1), start=datetime(2024, 1, 1), seed=5)
    simulate_fleet(spec, database_url=settings.database_url)
    monkeypatch.setattr(refit, "MIN_DEVICES_PER_SHARD", 1)  # four devices, four shards

    def fit_or_fail(windows: pd.DataFrame, *args: object) -> object:
        if "3" in set(windows["device"]):
            raise OSError("disk unplugged")
        return fit_shard(windows, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(refit, "fit_shard", fit_or_fail)
    candidate = release.train_candidate(settings, datetime(2024, 1, 1), datetime(2024, 1, 1, 1), skip_validation=True)
    assert candidate.failed == {("3", "*"): "shard failed: OSError: disk unplugged"}
    assert sorted(candidate.bundle.keys) == [(d, s) for d in "124" for s in "12"]
