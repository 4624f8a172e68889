"""The plain-data side of Azure ML publishing: schedules, scheduled windows, job environment.

Nothing here imports the Azure SDK (that is :mod:`pipelines.azureml`); these functions turn fleetscore's
own notions (a schedule ``--every 1h --lag 5m`` or ``--cron EXPR``, the resolved settings) into the
plain values the Azure ML entities are built from, so they can be tested without the SDK.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleetscore.errors import ConfigError, PublishError

# Recurrence schedules are anchored here (a point aligned on every period that divides a day) so that the
# windows Azure ML fires for and the windows the plan step computes agree.
EPOCH = datetime(1970, 1, 1)
ANCHOR_NEAR = datetime(2020, 1, 1)
# Sections of the settings passed to the jobs as FLEETSCORE_SECTION__KEY when they differ from the defaults.
PASSED_SECTIONS = ("ingest", "data_checks", "training", "scoring")
REMOTE_TRACKING = ("azureml://", "http://", "https://", "databricks")
REMOTE_STORAGE = ("az://", "abfs://", "abfss://")


@dataclass(frozen=True)
class ScheduleSpec:
    """When scoring runs: every fixed period, or at cron ticks; each window is scored ``lag`` after it ends."""

    every: str | None = None
    cron: str | None = None
    lag: str = "0s"

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ConfigError("schedule: give exactly one of --every or --cron")
        if self.every is not None:
            _whole_minutes(self.every, "--every")
        if self.cron is not None:
            _check_cron(self.cron)
        _whole_minutes(self.lag, "--lag", allow_zero=True)

    def describe(self) -> str:
        """``every 1h, lag 5m`` or ``cron '5 * * * *', lag 0s``."""
        what = f"every {self.every}" if self.every is not None else f"cron '{self.cron}'"
        return f"{what}, lag {self.lag}"

    def as_input(self) -> str:
        """The schedule as the pipeline's ``schedule`` input: ``every:1h`` or ``cron:5 * * * *``."""
        return f"every:{self.every}" if self.every is not None else f"cron:{self.cron}"


@dataclass(frozen=True)
class TriggerSpec:
    """An Azure ML trigger as plain data: ``cron`` with an expression, or ``recurrence``."""

    kind: str  # "cron" | "recurrence"
    expression: str = ""
    frequency: str = ""  # minute | hour | day
    interval: int = 0
    start_time: str = ""  # ISO 8601, UTC


def parse_schedule_input(text: str, lag: str) -> ScheduleSpec:
    """Read the pipeline's ``schedule`` input back (the inverse of :meth:`ScheduleSpec.as_input`)."""
    kind, sep, value = text.partition(":")
    if not sep or kind not in ("every", "cron"):
        raise ConfigError(f"--schedule: expected every:DURATION or cron:EXPR, got {text!r}")
    return ScheduleSpec(every=value, lag=lag) if kind == "every" else ScheduleSpec(cron=value, lag=lag)


def trigger_for(schedule: ScheduleSpec) -> TriggerSpec:
    """The Azure ML trigger that fires ``lag`` after each window of ``schedule`` ends.

    A period that divides an hour, or a whole number of hours that divides a day, becomes a cron
    expression (``--every 1h --lag 5m`` -> ``5 * * * *``); any other period becomes a recurrence anchored
    on the epoch. A ``--cron`` schedule keeps its expression: Azure fires at its ticks and each run scores
    the latest window whose end is at least ``lag`` old (see :func:`scheduled_window`).
    """
    lag = _whole_minutes(schedule.lag, "--lag", allow_zero=True)
    if schedule.cron is not None:
        return TriggerSpec(kind="cron", expression=schedule.cron)
    assert schedule.every is not None
    period = _whole_minutes(schedule.every, "--every")
    if 60 % period == 0:
        minutes = sorted({(lag + k * period) % 60 for k in range(60 // period)})
        return TriggerSpec(kind="cron", expression=f"{_cron_list(minutes)} * * * *")
    if period % 60 == 0 and 1440 % period == 0:
        hours = sorted({((lag + k * period) // 60) % 24 for k in range(1440 // period)})
        hour_field = "*" if len(hours) == 24 else _cron_list(hours)
        return TriggerSpec(kind="cron", expression=f"{lag % 60} {hour_field} * * *")
    step = timedelta(minutes=period)
    anchor = EPOCH + ((ANCHOR_NEAR - EPOCH) // step) * step + timedelta(minutes=lag)
    if period % 1440 == 0:
        frequency, interval = "day", period // 1440
    elif period % 60 == 0:
        frequency, interval = "hour", period // 60
    else:
        frequency, interval = "minute", period
    return TriggerSpec(kind="recurrence", frequency=frequency, interval=interval,
                       start_time=anchor.isoformat(timespec="seconds"))


def scheduled_window(schedule: ScheduleSpec, now: datetime) -> tuple[datetime, datetime]:
    """The latest window ``[start, end)`` of ``schedule`` whose end is at least ``lag`` before ``now``."""
    due = now - timedelta(minutes=_whole_minutes(schedule.lag, "--lag", allow_zero=True))
    if schedule.every is not None:
        step = timedelta(minutes=_whole_minutes(schedule.every, "--every"))
        end = EPOCH + ((due - EPOCH) // step) * step
        return end - step, end
    from croniter import croniter

    ticks = croniter(schedule.cron, due + timedelta(microseconds=1))
    end = ticks.get_prev(datetime)
    start = ticks.get_prev(datetime)
    return start, end


def job_environment(settings: Any) -> dict[str, str]:
    """The ``FLEETSCORE_*`` variables a job in Azure ML needs to see the same stores as this publisher.

    Refuses what cannot work from a compute cluster (a local SQLite file or folder) and anything that
    would write a secret into the workspace's job definitions (a password in a URL).
    """
    from fleetscore.pipelines.settings import SECRET_WORDS, mask_url

    db, tracking = settings.database_url, settings.tracking_uri
    if db.startswith("sqlite"):
        raise PublishError(f"database_url {db} is a local SQLite file: Azure ML jobs need Azure SQL or PostgreSQL")
    if not tracking.startswith(REMOTE_TRACKING):
        raise PublishError(f"tracking_uri {tracking} is local: use the workspace's azureml:// URI or an MLflow server")
    if not settings.storage_url.startswith(REMOTE_STORAGE):
        raise PublishError(f"storage_url {settings.storage_url} is local: Azure ML jobs need az://container/prefix")
    for name, value in (("database_url", db), ("tracking_uri", tracking), ("storage_url", settings.storage_url)):
        if mask_url(value) != value:
            raise PublishError(f"{name} holds a secret ({mask_url(value)}): use a managed identity, "
                               "never a password in a published job")
    if not settings.scoring.storage_account:
        # the jobs carry no storage secret: they reach the account as the cluster's managed identity
        # (DefaultAzureCredential), which needs the account's name
        raise PublishError(f"scoring.storage_account is not set: the published jobs reach {settings.storage_url} "
                           "as the cluster's managed identity and need the storage account's name "
                           "(FLEETSCORE_SCORING__STORAGE_ACCOUNT)")
    env = {"FLEETSCORE_DATABASE_URL": db, "FLEETSCORE_TRACKING_URI": tracking}
    for section in PASSED_SECTIONS:
        current, default = getattr(settings, section), type(getattr(settings, section))()
        for field in dataclasses.fields(current):
            value = getattr(current, field.name)
            if value != getattr(default, field.name):
                if any(word in field.name for word in SECRET_WORDS):
                    raise PublishError(f"{section}.{field.name} is set: a published job must not carry a secret; "
                                       "give the cluster's managed identity access instead (docs/deploy-azure.md)")
                env[f"FLEETSCORE_{section.upper()}__{field.name.upper()}"] = _env_text(value)
    for name in ("max_nodes", "processes_per_node"):  # the plan step sizes the run to the cluster
        env[f"FLEETSCORE_AZUREML__{name.upper()}"] = str(getattr(settings.azureml, name))
    return dict(sorted(env.items()))


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _whole_minutes(text: str, name: str, allow_zero: bool = False) -> int:
    from fleetscore.ingestion.timeutil import parse_duration

    if allow_zero and str(text).strip() in ("0", "0s", "0m"):
        return 0
    seconds = parse_duration(text, name).total_seconds()
    if seconds % 60:
        raise ConfigError(f"{name}: Azure ML schedules run on whole minutes, got {text!r}")
    return int(seconds // 60)


def _check_cron(expression: str) -> None:
    from croniter import croniter

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ConfigError(f"--cron: not a 5-field cron expression: {expression!r}")


def _cron_list(values: list[int]) -> str:
    return ",".join(str(v) for v in values)


def published_schedule(database_url: str) -> ScheduleSpec | None:
    """The schedule in force in the store (``fleetscore schedule set``), or ``None`` if none was set."""
    from fleetscore.records.schedule_store import ScheduleStore

    current = ScheduleStore(database_url).current()
    if current is None:
        return None
    every, cron = current.get("every") or None, current.get("cron") or None
    return ScheduleSpec(every=every, cron=cron, lag=current.get("lag") or "0s")
