"""The validation report: per-check results, the fleet verdict and the excluded series, as JSON.

A report is written once, atomically, to ``<report_dir>/<id>.json``; the pipelines keep it with the
run that used it and record its id in what that run produces.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fleetscore.errors import ConfigError, ValidationFailed

FLEET, SERIES, WARNING = "fleet", "series", "warning"


@dataclass
class CheckResult:
    """One check of the suite. ``passed`` is ``None`` when the check was not evaluated (see ``detail``).

    ``level`` says what a failure means: ``fleet`` stops the pipeline, ``series`` excludes the series
    concerned, ``warning`` only reports.
    """

    name: str
    level: str
    passed: bool | None
    observed: Any = None
    expected: Any = None
    detail: str = ""


@dataclass
class ValidationReport:
    """The outcome of one run of the gate (see :func:`data_checks.run_validation`)."""

    id: str
    created_at: datetime
    start: datetime | None
    end: datetime | None
    database: str
    fleet_ok: bool
    checks: list[CheckResult]
    excluded: dict[tuple[str, str], str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rows: int = 0
    series: int = 0
    path: str = ""
    devices: list[str] | None = None
    ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    docs_index: str = ""  # Great Expectations' Data Docs index.html, when built
    data_hash: str = ""  # fingerprint of the validated windows (series_checks.fingerprint), "" if not scanned

    @property
    def failed_checks(self) -> list[CheckResult]:
        """The fleet-level checks that failed (empty when ``fleet_ok``)."""
        return [c for c in self.checks if c.level == FLEET and c.passed is False]

    def raise_if_failed(self) -> None:
        """Raise :class:`ValidationFailed` with one line naming the failed fleet check(s) and how far off."""
        failed = self.failed_checks
        if failed:
            raise ValidationFailed("validation failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; ``excluded`` becomes a list of ``{device, sensor, reason}``."""
        data = asdict(self)
        data["created_at"] = _iso(self.created_at)
        data["start"] = _iso(self.start)
        data["end"] = _iso(self.end)
        data["excluded"] = [{"device": d, "sensor": s, "reason": r} for (d, s), r in sorted(self.excluded.items())]
        plain: dict[str, Any] = _plain(data)
        return plain

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        """The inverse of :meth:`to_dict`."""
        return cls(
            id=data["id"],
            created_at=datetime.fromisoformat(data["created_at"]),
            start=_from_iso(data.get("start")),
            end=_from_iso(data.get("end")),
            database=data["database"],
            fleet_ok=bool(data["fleet_ok"]),
            checks=[CheckResult(**c) for c in data["checks"]],
            excluded={(e["device"], e["sensor"]): e["reason"] for e in data.get("excluded", [])},
            warnings=list(data.get("warnings", [])),
            rows=int(data.get("rows", 0)),
            series=int(data.get("series", 0)),
            path=data.get("path", ""),
            devices=data.get("devices"),
            ranges=data.get("ranges", {}),
            config=data.get("config", {}),
            docs_index=data.get("docs_index", ""),
            data_hash=data.get("data_hash", ""),
        )

    def write(self, report_dir: str | os.PathLike[str]) -> str:
        """Write ``<report_dir>/<id>.json`` atomically (a reader never sees half a report); set ``path``."""
        folder = Path(report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{self.id}.json"
        self.path = str(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.id}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=2, sort_keys=False)
                handle.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path


def load_report(path_or_id: str | os.PathLike[str], report_dir: str | os.PathLike[str]) -> ValidationReport:
    """Read a report by path, or by id from ``report_dir``."""
    candidate = Path(path_or_id)
    if not candidate.is_file():
        candidate = Path(report_dir) / f"{path_or_id}.json"
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"validation report {path_or_id}: not found in {report_dir}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"validation report {candidate}: not valid JSON ({exc})") from exc
    try:
        report = ValidationReport.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"validation report {candidate}: not a fleetscore validation report ({exc})") from exc
    report.path = str(candidate)
    return report


def format_duration(delta: timedelta | float) -> str:
    """``timedelta(hours=3, minutes=12)`` -> ``"3h12m"``; under a minute in seconds (``"45s"``)."""
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:g}s"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n)
    return sign + text


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(sep=" ") if value is not None else None


def _from_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value
