"""Azure ML publishing: the dry-run YAML loads back with the SDK, publishing is idempotent, one run submits.

No Azure access: the entities are built and dumped with the SDK and read back with its loaders; the
workspace is a fake ``MLClient`` (tests/pipelines/azureml_fakes.py) that answers like the service.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from azure.ai.ml import load_component, load_compute, load_environment, load_job
from azure.ai.ml.entities import CronTrigger, PipelineJob, RecurrenceTrigger
from azure.ai.ml.entities._load_functions import load_schedule
from azure.core.polling import PollingMethod
from click.testing import CliRunner

from fleetscore.errors import PublishError
from fleetscore.pipelines import azureml
from fleetscore.pipelines.azureml_plan import ScheduleSpec
from fleetscore.pipelines.cli import main
from fleetscore.pipelines.settings import load_settings
from tests.pipelines.azureml_fakes import FakeMLClient

REMOTE = {"database_url": "postgresql://fleet@db.example.org/fleet", "tracking_uri": "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws",
          "storage_url": "az://predictions/fleet", "scoring.storage_account": "fleetpredictions"}
GLOBAL_FLAGS = ["--database-url", REMOTE["database_url"], "--tracking-uri", REMOTE["tracking_uri"],
                "--storage-url", REMOTE["storage_url"]]
AZURE_ENV = {"FLEETSCORE_AZUREML__REGISTRY": "fleetacr.azurecr.io", "FLEETSCORE_AZUREML__MAX_NODES": "3",
             "FLEETSCORE_AZUREML__PROCESSES_PER_NODE": "2", "FLEETSCORE_SCORING__STORAGE_ACCOUNT": "fleetpredictions"}


def _settings(**more: Any) -> Any:
    return load_settings({**REMOTE, "azureml.registry": "fleetacr.azurecr.io", **more}, environ={})


def _dry_run(out: Path, *flags: str, env: dict[str, str] | None = None) -> Any:
    args = [*GLOBAL_FLAGS, "publish", "--target", "azureml", "--dry-run", "--out", str(out), "--image-tag", "0a1b2c3",
            *flags]
    return CliRunner().invoke(main, args, env={**AZURE_ENV, **(env or {})})


def test_dry_run_writes_every_entity_and_the_sdk_loads_it_back(home: Path) -> None:
    out = home / "azureml"
    result = _dry_run(out, "--every", "1h", "--lag", "5m")
    assert result.exit_code == 0, result.output
    names = ["compute.yml", "environment.yml", "component-plan.yml", "component-score_shards.yml",
             "component-finalize.yml", "pipeline.yml", "schedule.yml"]
    assert [line for line in result.output.splitlines() if line.startswith("wrote")] == [
        *(f"wrote {out / n}" for n in names), f"wrote {out / 'code' / 'fleetscore_shards.py'}"]
    assert result.output.splitlines()[-2:] == ["image fleetacr.azurecr.io/fleetscore-scoring:0a1b2c3",
                                               "schedule every 1h, lag 5m"]

    compute = load_compute(out / "compute.yml")
    assert (compute.type, compute.min_instances, compute.max_instances) == ("amlcompute", 0, 3)
    assert compute.idle_time_before_scale_down == 300

    env = load_environment(out / "environment.yml")
    assert (env.name, env.version, env.image) == ("fleetscore-scoring", "0a1b2c3",
                                                  "fleetacr.azurecr.io/fleetscore-scoring:0a1b2c3")

    plan = load_component(out / "component-plan.yml")
    assert plan.environment == "fleetscore-scoring:0a1b2c3"  # the loader drops "azureml:"
    assert plan.command.startswith("fleetscore --storage-url ${{inputs.storage_url}} score-step plan ")
    assert set(plan.inputs) == {"start", "end", "schedule", "lag", "release", "devices", "storage_url", "shards",
                                "force"}

    shards = load_component(out / "component-score_shards.yml")
    assert shards.type == "parallel"
    assert shards.mini_batch_size == 1  # one task file = one shard per mini-batch
    assert shards.input_data == "${{inputs.tasks}}"
    assert shards.resources.instance_count == 3
    assert shards.max_concurrency_per_instance == 2
    assert shards.mini_batch_error_threshold == -1
    assert shards.task.entry_script == "fleetscore_shards.py"
    assert (out / shards.task.code / "fleetscore_shards.py").read_text() == Path(azureml.__file__).with_name(
        "azureml_entry.py").read_text()
    assert shards.task.environment == "fleetscore-scoring:0a1b2c3"

    finalize = load_component(out / "component-finalize.yml")
    assert "score-step finalize --tasks ${{inputs.tasks}}" in finalize.command

    job = load_job(out / "pipeline.yml")
    assert isinstance(job, PipelineJob)
    assert {k: v._data for k, v in job.inputs.items()} == {
        "start": "auto", "end": "auto", "schedule": "every:1h", "lag": "5m", "release": "champion",
        "devices": "all", "storage_url": "az://predictions/fleet", "shards": 0,  # the plan step sizes it
        "force": "false"}
    assert set(job.jobs) == {"plan", "score", "finalize"}
    assert job.jobs["score"].inputs["tasks"]._data["path"] == "${{parent.jobs.plan.outputs.tasks}}"
    assert job.jobs["finalize"].inputs["results"]._data["path"] == "${{parent.jobs.score.outputs.results}}"
    assert job.settings.default_compute == "fleetscore-cpu"
    assert job.jobs["plan"].environment_variables == {"FLEETSCORE_DATABASE_URL": REMOTE["database_url"],
                                                      "FLEETSCORE_TRACKING_URI": REMOTE["tracking_uri"],
                                                      "FLEETSCORE_SCORING__STORAGE_ACCOUNT": "fleetpredictions",
                                                      "FLEETSCORE_AZUREML__MAX_NODES": "3",
                                                      "FLEETSCORE_AZUREML__PROCESSES_PER_NODE": "2"}

    schedule = load_schedule(out / "schedule.yml")
    assert isinstance(schedule.trigger, CronTrigger)
    assert schedule.trigger.expression == "5 * * * *"
    assert isinstance(schedule.create_job, PipelineJob)
    assert set(schedule.create_job.jobs) == {"plan", "score", "finalize"}


def test_dry_run_recurrence_when_the_period_is_no_cron(home: Path) -> None:
    result = _dry_run(home / "out", "--every", "90m", "--lag", "10m")
    assert result.exit_code == 0, result.output
    trigger = load_schedule(home / "out" / "schedule.yml").trigger
    assert isinstance(trigger, RecurrenceTrigger)
    assert (trigger.frequency, trigger.interval) == ("minute", 90)
    assert str(trigger.start_time) == "2020-01-01 00:10:00"  # 90m-aligned on the epoch, + lag


def test_dry_run_cron_schedule_and_shards_setting(home: Path) -> None:
    result = _dry_run(home / "out", "--cron", "0 */6 * * *", env={"FLEETSCORE_SCORING__SHARDS": "16"})
    assert result.exit_code == 0, result.output
    assert load_schedule(home / "out" / "schedule.yml").trigger.expression == "0 */6 * * *"
    job = load_job(home / "out" / "pipeline.yml")
    assert job.inputs["shards"]._data == 16
    assert job.inputs["schedule"]._data == "cron:0 */6 * * *"
    assert job.jobs["plan"].environment_variables["FLEETSCORE_SCORING__SHARDS"] == "16"


def test_no_schedule_writes_no_schedule_file(home: Path) -> None:
    result = _dry_run(home / "out", "--no-schedule")
    assert result.exit_code == 0, result.output
    assert not (home / "out" / "schedule.yml").exists()
    assert result.output.splitlines()[-1] == "schedule none"


@pytest.mark.parametrize(("flags", "env", "message"), [
    (["--database-url", "sqlite:///fleet.db"], {},
     "Error: database_url sqlite:///fleet.db is a local SQLite file: Azure ML jobs need Azure SQL or PostgreSQL\n"),
    (["--database-url", "postgresql://fleet:hunter2@db/fleet"], {},
     "Error: database_url holds a secret (postgresql://fleet:****@db/fleet): use a managed identity, "
     "never a password in a published job\n"),
    (["--storage-url", "./blob"], {},
     "Error: storage_url ./blob is local: Azure ML jobs need az://container/prefix\n"),
    ([], {"FLEETSCORE_SCORING__STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=k"},
     "Error: scoring.storage_connection_string is set: a published job must not carry a secret; give the "
     "cluster's managed identity access instead (docs/deploy-azure.md)\n"),
    ([], {"FLEETSCORE_SCORING__STORAGE_ACCOUNT": ""},
     "Error: scoring.storage_account is not set: the published jobs reach az://predictions/fleet as the "
     "cluster's managed identity and need the storage account's name (FLEETSCORE_SCORING__STORAGE_ACCOUNT)\n"),
    ([], {"FLEETSCORE_AZUREML__REGISTRY": ""},
     "Error: azureml.registry is not set: the login server of the container registry, e.g. myacr.azurecr.io "
     "(FLEETSCORE_AZUREML__REGISTRY)\n"),
])
def test_publish_refuses_what_cannot_run_on_the_cluster(home: Path, flags: list[str], env: dict[str, str],
                                                         message: str) -> None:
    args = [*GLOBAL_FLAGS, *flags, "publish", "--target", "azureml", "--dry-run", "--image-tag", "t", "--no-schedule"]
    result = CliRunner().invoke(main, args, env={**AZURE_ENV, **env})
    assert result.exit_code == 1
    assert result.stderr == message
    assert not (home / ".fleetscore" / "azureml").exists()


def test_bad_schedule_flags_are_one_line_errors(home: Path) -> None:
    result = CliRunner().invoke(
        main, [*GLOBAL_FLAGS, "publish", "--target", "azureml", "--dry-run", "--image-tag", "t", "--every", "30s"],
        env=AZURE_ENV)
    assert result.exit_code == 2
    assert result.stderr == "Error: --every: Azure ML schedules run on whole minutes, got '30s'\n"


def _spec(schedule: ScheduleSpec | None = None, **settings: Any) -> azureml.PublishSpec:
    return azureml.spec_from_settings(_settings(**settings), image_tag="0a1b2c3",
                                      schedule=schedule or ScheduleSpec(every="1h", lag="5m"))


def test_publishing_twice_changes_nothing() -> None:
    client = FakeMLClient()
    ws = azureml.Workspace(client)
    first = azureml.publish(_spec(), ws)
    assert [(a.kind, a.action) for a in first] == [
        ("compute", "created"), ("environment", "created"), ("component", "created"), ("component", "created"),
        ("component", "created"), ("schedule", "created")]
    sent = list(client.calls)
    assert [kind for kind, _, _ in sent] == ["compute", "environments", "components", "components", "components",
                                             "schedules"]
    second = azureml.publish(_spec(), ws)
    assert [a.action for a in second] == ["unchanged"] * 6
    assert client.calls == sent  # nothing was written the second time

    schedule = client.schedules.get("fleetscore-scoring")
    assert schedule.trigger.expression == "5 * * * *"
    plan_node = schedule.create_job.jobs["plan"]
    registered = client.components.get("fleetscore_plan", label="latest")
    assert plan_node.component is registered


def test_republish_with_a_new_image_or_schedule_changes_only_what_differs() -> None:
    client = FakeMLClient()
    ws = azureml.Workspace(client)
    azureml.publish(_spec(), ws)
    new_image = azureml.spec_from_settings(_settings(), image_tag="d4e5f6a",
                                           schedule=ScheduleSpec(every="1h", lag="5m"))
    actions = {(a.kind, a.name): a.action for a in azureml.publish(new_image, ws)}
    assert actions == {("compute", "fleetscore-cpu"): "unchanged", ("environment", "fleetscore-scoring"): "created",
                       ("component", "fleetscore_plan"): "created", ("component", "fleetscore_score_shards"): "created",
                       ("component", "fleetscore_finalize"): "created", ("schedule", "fleetscore-scoring"): "updated"}
    job = client.schedules.get("fleetscore-scoring").create_job
    assert job.jobs["plan"].component.environment == "azureml:fleetscore-scoring:d4e5f6a"

    actions = {a.kind: a.action for a in azureml.publish(_spec(ScheduleSpec(every="15m", lag="2m"),
                                                               **{"azureml.max_nodes": 8}), ws)}
    assert actions["compute"] == "updated"
    assert client.compute.get("fleetscore-cpu").max_instances == 8
    assert actions["schedule"] == "updated"
    assert client.schedules.get("fleetscore-scoring").trigger.expression == "2,17,32,47 * * * *"


def test_an_environment_version_never_changes_its_image() -> None:
    client = FakeMLClient()
    ws = azureml.Workspace(client)
    azureml.publish(_spec(), ws)
    other = _spec(**{"azureml.registry": "otheracr.azurecr.io"})
    with pytest.raises(PublishError) as err:
        azureml.publish(other, ws)
    assert str(err.value) == ("environment fleetscore-scoring:0a1b2c3 already exists with image "
                              "fleetacr.azurecr.io/fleetscore-scoring:0a1b2c3, not "
                              "otheracr.azurecr.io/fleetscore-scoring:0a1b2c3; publish a new image tag")


def test_submit_scoring_job_runs_the_published_pipeline_on_a_window() -> None:
    client = FakeMLClient()
    ws = azureml.Workspace(client)
    settings = _settings()
    with pytest.raises(PublishError) as err:
        azureml.submit_scoring_job(settings, datetime(2018, 8, 29), datetime(2018, 8, 29, 1), None, None, ws)
    assert str(err.value) == ("component fleetscore_plan is not published in the workspace: "
                              "run fleetscore publish --target azureml first")
    azureml.publish(_spec(), ws)
    name = azureml.submit_scoring_job(settings, datetime(2018, 8, 29), datetime(2018, 8, 29, 1), "7",
                                      ["dev-1", "dev-2"], ws, force=True)
    assert name == "job-1"
    job, experiment = client.jobs.submitted[0]
    assert experiment == "fleetscore-scoring"
    assert {k: v._data for k, v in job.inputs.items()} == {
        "start": "2018-08-29T00:00:00", "end": "2018-08-29T01:00:00", "schedule": "every:1h", "lag": "0s",
        "release": "7", "devices": "dev-1,dev-2", "storage_url": "az://predictions/fleet", "shards": 0,
        "force": "true"}
    assert job.jobs["score"].component is client.components.get("fleetscore_score_shards", label="latest")


def test_submit_needs_a_window() -> None:
    with pytest.raises(PublishError, match=r"^--executor azureml needs a window: give --start and --end, or --last$"):
        azureml.submit_scoring_job(_settings(), None, None, None, None, azureml.Workspace(FakeMLClient()))


def test_workspace_settings_are_checked_before_connecting() -> None:
    config = dataclasses.replace(_settings().azureml, subscription_id="sub", resource_group="rg")
    with pytest.raises(PublishError, match=r"^azureml.workspace is not set \(FLEETSCORE_AZUREML__WORKSPACE\)$"):
        azureml.Workspace.connect(config)


def test_score_executor_azureml_submits_the_window_with_its_flags(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def submit(settings: Any, start: datetime, end: datetime, release: str | None, devices: list[str] | None,
               workspace: Any = None, *, force: bool = False) -> str:
        calls.append((start, end, release, devices, force))
        return "job-7"

    monkeypatch.setattr(azureml, "submit_scoring_job", submit)
    args = ["score", "--executor", "azureml", "--start", "2018-08-29T00:00", "--end", "2018-08-29T01:00",
            "--release", "7", "--devices", "dev-1,dev-2"]
    result = CliRunner().invoke(main, [*args, "--force"])
    assert result.output == "submitted Azure ML job job-7\n"
    result = CliRunner().invoke(main, args)
    assert calls == [(datetime(2018, 8, 29), datetime(2018, 8, 29, 1), "7", ["dev-1", "dev-2"], True),
                     (datetime(2018, 8, 29), datetime(2018, 8, 29, 1), "7", ["dev-1", "dev-2"], False)]


class _NeverDone(PollingMethod[Any]):
    """A long-running operation the service never finishes (a compute stuck in creating)."""

    def initialize(self, client: Any, initial_response: Any, deserialization_callback: Any) -> None:
        self._resource = initial_response

    def run(self) -> None:
        time.sleep(3600)

    def status(self) -> str:
        return "InProgress"

    def finished(self) -> bool:
        return False

    def resource(self) -> Any:
        return self._resource


def test_a_long_running_create_that_never_finishes_ends_within_the_deadline() -> None:
    client = FakeMLClient()
    client.compute.polling = _NeverDone()
    started = time.monotonic()
    with pytest.raises(PublishError) as err:
        azureml.publish(_spec(), azureml.Workspace(client, "workspace ws", operation_timeout_s=1))
    assert time.monotonic() - started < 10
    assert str(err.value) == ("workspace ws: writing compute fleetscore-cpu: not finished within 1 s ([azureml] "
                              "operation_timeout_s); its state is in Azure ML studio, and publishing again picks it up")


def test_the_workspace_client_has_a_deadline_on_every_call() -> None:
    config = dataclasses.replace(_settings().azureml, subscription_id="00000000-0000-0000-0000-000000000000",
                                 resource_group="rg", workspace="ws", request_timeout_s=45)
    ws = azureml.Workspace.connect(config)  # builds the SDK's MLClient; nothing is sent before a call
    operations = ws.client.compute._operation
    transport = operations._client._pipeline._transport.connection_config
    assert (transport.timeout, transport.read_timeout) == (30, 45)
    assert operations._config.retry_policy.total_retries == 3
    assert ws.operation_timeout_s == 1800
