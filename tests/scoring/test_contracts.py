"""The run's contracts keep one JSON form: what is written reads back as the same object."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from fleetscore.pipelines.azureml_steps import StepTask, read_task
from fleetscore.scoring.contracts import RunPlan, ShardOutcome

PLAN_FILE = {
    "run_id": "20180829T010203456-1a2b3c", "start": "2018-08-28T23:00:00", "end": "2018-08-28T23:10:00",
    "context_start": "2018-08-28T22:55:00", "release_ref": "champion", "release_version": 3,
    "release_tags": {"ref": "champion"}, "bundle_dir": "/tmp/bundle-v3", "data_hash": "ab12",
    "devices": ["1", "2"], "validation_id": "v1", "skip_validation": False,
    "excluded": {"2/1": "stuck"}, "csv": True, "n_shards": 2, "shards": [["1"], ["2"]],
    "created_at": "2018-08-29T01:02:03.456000", "code_version": "0.1.0+gabc1234",
}


def test_a_plan_file_reads_back_to_the_same_json() -> None:
    plan = RunPlan.from_json(json.loads(json.dumps(PLAN_FILE)))
    assert plan.to_json() == PLAN_FILE
    assert plan.start == datetime(2018, 8, 28, 23) and plan.shards == (("1",), ("2",))
    assert plan.excluded_series() == frozenset({("2", "1")})


def test_a_plan_of_no_devices_keeps_its_one_shard() -> None:
    plan = RunPlan.from_json({**PLAN_FILE, "devices": None, "n_shards": 1, "shards": []})
    assert plan.n_shards == 1 and plan.shards == () and plan.to_json()["devices"] is None


def test_a_shard_outcome_reads_back_to_the_same_json() -> None:
    outcome = ShardOutcome(4, devices=2, rows=240, anomalies=3, series=4, failed={"1/2": "non-finite"},
                           unscored={"2/2": "no model in release v3"}, per_sensor={"1": (120, 1), "2": (120, 2)},
                           kernel_evaluations=7, timings={"read": 0.5})
    stored = json.loads(json.dumps(outcome.to_json()))
    assert stored["per_sensor"] == {"1": [120, 1], "2": [120, 2]}
    assert ShardOutcome.from_json(stored) == outcome
    aborted = ShardOutcome(1, aborted=True, timings={"wait": 1.0})
    assert ShardOutcome.from_json(json.loads(json.dumps(aborted.to_json()))) == aborted


def test_a_task_file_reads_back(tmp_path: Path) -> None:
    task = StepTask("r1", datetime(2018, 8, 28, 23), 3, end=datetime(2018, 8, 28, 23, 10), release_version=3,
                    timings={"plan": 0.25})
    path = tmp_path / "shard-00003.json"
    path.write_text(json.dumps(task.to_json()))
    assert read_task(path) == task
