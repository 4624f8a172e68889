"""What an MLflow user finds on a release's training run: holdout metrics, the commit, the tags."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from mlflow.tracking import MlflowClient

from fleetscore.pipelines.release import run_release
from fleetscore.pipelines.settings import load_settings
from fleetscore.provenance import git_commit
from fleetscore.simulation.simulate import SimulationSpec, simulate_fleet
from fleetscore.training.injection import KINDS


def test_the_training_run_logs_holdout_metrics_and_the_commit(home: Path) -> None:
    # an absolute home: in one process, MLflow clients are cached by URI, and the default relative URI
    # is the same string in every test's folder
    settings = load_settings({"workers": 1, "home": str(home / ".fleetscore")}, environ={})
    start = datetime(2024, 1, 1)
    simulate_fleet(SimulationSpec(devices=2, sensors=2, duration=timedelta(hours=2), start=start, seed=8,
                                  anomaly_rate=0),
                   database_url=settings.database_url)
    outcome = run_release(settings, start, start + timedelta(hours=2), skip_validation=True)

    run = MlflowClient(settings.tracking_uri).get_run(outcome.run_id)
    metrics = run.data.metrics
    for name in ("holdout_far", "holdout_recall", *(f"holdout_recall_{kind}" for kind in KINDS)):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["holdout_recall"] <= min(metrics[f"holdout_recall_{kind}"] for kind in KINDS)
    assert metrics["holdout_far"] < 0.02  # a holdout with no anomaly: every flag is a false alarm
    commit = git_commit()
    assert commit is not None  # the suite runs from the checkout
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["fleetscore.git_commit"] == commit
    assert run.data.tags["fleetscore.kind"] == "release" and outcome.counts["new"] == 4
