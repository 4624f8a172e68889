"""Which series a selective release retrains: ``fleetscore release --only drifted|new|failed|stale|all``.

- ``drifted``: the latest drift record of the series (``series_drift``, written by every scoring run)
  was measured against the champion and is past ``[training] drift_threshold``;
- ``new``: the series has windows in the training range but no model of its own in the champion (a new
  device, or one that had fewer than ``min_rows`` windows: it was scored by its sensor's fleet model);
- ``failed``: the champion's training of the series failed (its manifest's ``failed`` list);
- ``stale``: the champion's model of the series was trained longer ago than ``[training] max_model_age``;
- ``all``: every series (a full release, the default).

Selectors combine (``--only drifted,new``); each selected series records the first reason that chose it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fleetscore.errors import ConfigError
from fleetscore.ingestion.timeutil import parse_duration, utcnow
from fleetscore.pipelines.settings import Settings
from fleetscore.training.coldstart import FLEET_DEVICE

KINDS = ("drifted", "new", "failed", "stale", "all")


def check_only(only: Sequence[str] | str) -> tuple[str, ...]:
    """``only`` as a tuple of known selectors (a comma list is split); raises :class:`ConfigError`."""
    items = [only] if isinstance(only, str) else list(only)
    kinds = tuple(dict.fromkeys(k.strip() for item in items for k in item.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"--only: expected a comma list of {', '.join(KINDS)}, got {','.join(items)!r}")
    return kinds


def select_series(  # noqa: C901  one branch per --only kind, each a line or two
    settings: Settings, champion: Any, champion_version: int | None, kinds: Sequence[str],
                  start: datetime | None, end: datetime | None, devices: Sequence[str] | None = None,
                  now: datetime | None = None) -> dict[tuple[str, str], str]:
    """The series to retrain, each with the selector that chose it (``drifted``, ``new``, ...)."""
    from fleetscore.ingestion.ops_store import OpsStore
    from fleetscore.ingestion.store import SensorStore

    now = now or utcnow()
    records = {(r["device"], r["sensor"]): r for r in (champion.manifest.get("series", []) if champion else [])
               if r.get("device") != FLEET_DEVICE}
    present: set[tuple[str, str]] = set(records)
    if "new" in kinds or "failed" in kinds:  # only these need the store's series (a scan of the range)
        stored = SensorStore(settings.database_url).list_series(start, end)
        present = {(str(d), str(s)) for d, s in zip(stored["device"], stored["sensor"], strict=True)}
    wanted = set(devices) if devices else None
    selected: dict[tuple[str, str], str] = {}

    def add(key: tuple[str, str], why: str) -> None:
        # drifted and stale series are the champion's; a series gone from the store finds no rows to fit
        if key in present and (wanted is None or key[0] in wanted):
            selected.setdefault(key, why)

    for kind in kinds:
        if kind == "drifted" and champion_version is not None:
            threshold = settings.training.drift_threshold
            for row in OpsStore(settings.database_url).latest_drift(release_version=champion_version):
                if row["drift"] is not None and row["drift"] > threshold and row["model_scope"] == "series":
                    add((row["device"], row["sensor"]), "drifted")
        elif kind == "new":
            for key in sorted(present - set(records)):
                add(key, "new")
        elif kind == "failed" and champion is not None:
            for item in champion.manifest.get("failed", []):
                device, sensor = item["device"], item["sensor"]
                for key in sorted(present):
                    if key[0] == device and sensor in ("*", key[1]):
                        add(key, "failed")
        elif kind == "stale":
            age = parse_duration(settings.training.max_model_age, "training.max_model_age")
            for key, rec in sorted(records.items()):
                trained = _trained_at(rec)
                if trained is not None and now - trained > age:
                    add(key, "stale")
    return selected


def _trained_at(record: dict[str, Any]) -> datetime | None:
    """When a manifest record's model was trained (``trained_at``; else the end of its training range)."""
    text = record.get("trained_at") or record.get("train_end")
    if not text:
        return None
    value = datetime.fromisoformat(str(text))
    return value.replace(tzinfo=None) if value.tzinfo else value


__all__ = ["KINDS", "check_only", "select_series"]
