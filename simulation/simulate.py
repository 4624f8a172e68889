"""``fleetscore simulate``: a fleet's readings with labelled anomalies, by profile, to files or the store.

Profiles (``SimulationSpec.profile``): ``uniform`` (:mod:`fleetscore.simulation.uniform`, the reference
simulator's uniform readings) and ``industrial`` (:mod:`fleetscore.simulation.industrial`, a plant of
pumps). A profile is one module with ``series_names``, ``plan``, ``labels_frame`` and ``generate`` and one
line in ``PROFILES`` below. Everything is a function of the spec (``seed`` included), generated block by
block with vectorised numpy.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from fleetscore.errors import ConfigError, IngestError
from fleetscore.ingestion.windowing import Readings
from fleetscore.progress import ProgressCallback
from fleetscore.simulation import industrial, uniform
from fleetscore.simulation.spec import Block, Grid, SimulationSpec

if TYPE_CHECKING:
    from fleetscore.ingestion.ingest import InputReport

log = logging.getLogger(__name__)

PROFILES: dict[str, ModuleType] = {"uniform": uniform, "industrial": industrial}
SENSOR_RANGES = uniform.SENSOR_RANGES
__all__ = ["Block", "SimulationSpec"]


def _profile(spec: SimulationSpec) -> ModuleType:
    return PROFILES[spec.profile]


def anomaly_kinds(spec: SimulationSpec) -> tuple[str, ...]:
    """The anomaly kinds of the spec's profile."""
    return tuple(_profile(spec).ANOMALY_KINDS)


def normal_kinds(spec: SimulationSpec) -> tuple[str, ...]:
    """The legitimate (labelled normal) event kinds of the spec's profile."""
    return tuple(_profile(spec).NORMAL_KINDS)


def series_names(spec: SimulationSpec) -> tuple[list[str], list[str]]:
    """Device and sensor name of every series, device-major."""
    return _profile(spec).series_names(spec)  # type: ignore[no-any-return]


def plan_anomalies(spec: SimulationSpec) -> list[Any]:
    """Every labelled event of the simulation (the profile's own event type)."""
    return list(_profile(spec).plan(spec))


def labels_frame(spec: SimulationSpec, anomalies: Sequence[Any]) -> pd.DataFrame:
    """The labels: ``Device, Sensor, Kind, Start, End, Label, Visible``, sorted by device, sensor, start."""
    return _profile(spec).labels_frame(spec, list(anomalies))  # type: ignore[no-any-return]


def generate(spec: SimulationSpec, anomalies: Sequence[Any] | None = None) -> Iterator[Block]:
    """The readings, block by block (deterministic for a given spec)."""
    events = plan_anomalies(spec) if anomalies is None else list(anomalies)
    yield from _profile(spec).generate(spec, events)


def block_readings(spec: SimulationSpec, block: Block, first_line: int) -> Readings:
    """A block as :class:`Readings` (device and sensor names as Arrow strings)."""
    devices, sensors = series_names(spec)
    index = pa.array(block.series.astype(np.int32))
    device = pa.DictionaryArray.from_arrays(index, pa.array(devices)).cast(pa.string())
    sensor = pa.DictionaryArray.from_arrays(index, pa.array(sensors)).cast(pa.string())
    lines = np.arange(first_line, first_line + len(block.ts), dtype=np.int64)
    return Readings(device, sensor, block.ts, block.value, lines)


def iter_readings(spec: SimulationSpec, anomalies: Sequence[Any],
                  on_progress: ProgressCallback | None = None) -> Iterator[Readings]:
    """The simulated readings as :class:`Readings` batches."""
    done = 0
    for block in generate(spec, anomalies):
        yield block_readings(spec, block, done + 1)
        done += len(block.ts)
        if on_progress is not None:
            on_progress(done, spec.readings)


@contextmanager
def _open_out(path: Path, compress: bool) -> Iterator[IO[bytes]]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("wb")
    except OSError as exc:
        raise IngestError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    with handle:
        if not compress:
            yield handle
            return
        # no name or time in the gzip header: the same spec gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", compresslevel=5, fileobj=handle, mtime=0) as zipped:
            yield zipped  # type: ignore[misc]


def output_format(path: Path) -> str:
    """``csv`` or ``jsonl`` from the file name (``.csv``, ``.jsonl``, either with ``.gz``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    if suffixes and suffixes[-1] in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise ConfigError(f"{path}: --out must end in .csv, .jsonl, .csv.gz or .jsonl.gz")


def write_readings(spec: SimulationSpec, anomalies: Sequence[Any], path: Path,
                   on_progress: ProgressCallback | None = None) -> int:
    """Write the readings to ``path`` (CSV ``TS,Device,Sensor,Value`` or JSON lines, gzip by ``.gz``);
    written to a temporary name and renamed at the end, so a crash leaves no partial file."""
    fmt = output_format(path)
    devices, sensors = series_names(spec)
    device_dict, sensor_dict = pa.array(devices), pa.array(sensors)
    partial = path.with_name(path.name + ".partial")
    written = 0
    with _open_out(partial, path.suffix.lower() == ".gz") as out:
        for block in generate(spec, anomalies):
            index = pa.array(block.series.astype(np.int32))
            ts_text = pa.array(block.ts, pa.timestamp("ns")).cast(pa.timestamp("ms")).cast(pa.string())
            table = pa.table({
                "TS": ts_text,
                "Device": pa.DictionaryArray.from_arrays(index, device_dict).cast(pa.string()),
                "Sensor": pa.DictionaryArray.from_arrays(index, sensor_dict).cast(pa.string()),
                "Value": pa.array(block.value),
            })
            if fmt == "csv":
                if written == 0:
                    out.write(b"TS,Device,Sensor,Value\n")
                pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
            else:
                text = table.to_pandas().to_json(orient="records", lines=True)
                out.write(text.encode() if text.endswith("\n") else (text + "\n").encode())
            written += len(block.ts)
            if on_progress is not None:
                on_progress(written, spec.readings)
    partial.replace(path)
    return written


def write_labels(spec: SimulationSpec, anomalies: Sequence[Any], path: Path) -> int:
    """Write the labels CSV; returns the number of anomalies."""
    frame = labels_frame(spec, anomalies)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    except OSError as exc:
        raise IngestError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    return len(frame)


def anomalous_windows(spec: SimulationSpec, labels: pd.DataFrame) -> int:
    """How many windows the anomalies cover (all sensors of a device anomaly count)."""
    anomalies = labels[labels["Label"] == "anomaly"]
    return int(((anomalies["End"] - anomalies["Start"]) // spec.window).sum())


def total_windows(spec: SimulationSpec) -> int:
    """How many full windows each series has, times the number of series."""
    grid = Grid(spec)
    return int(grid.n_windows) * spec.devices * spec.sensors


@dataclass
class SimulationResult:
    """What a simulation produced."""

    readings: int
    devices: int
    sensors: int
    anomalies: int
    by_kind: dict[str, int]
    normal_events: dict[str, int]
    anomalous_windows: int
    windows: int
    ingest: InputReport | None = None


def simulate_fleet(
    spec: SimulationSpec,
    *,
    out: Path | None = None,
    labels: Path | None = None,
    database_url: str | None = None,
    allowed_lateness: timedelta = timedelta(hours=1),
    on_progress: ProgressCallback | None = None,
) -> SimulationResult:
    """Simulate ``spec``: write the readings to ``out`` and/or ingest them into ``database_url``, and
    write the labels to ``labels``. Ingesting the same spec twice adds nothing (its hash is recorded)."""
    from fleetscore.ingestion.ingest import ingest_readings
    from fleetscore.ingestion.store import SensorStore

    anomalies = plan_anomalies(spec)
    if out is not None:
        output_format(out)
    if labels is not None:
        write_labels(spec, anomalies, labels)
    readings = 0
    if out is not None:
        readings = write_readings(spec, anomalies, out, on_progress)
    report = None
    if database_url is not None:
        profile = "" if spec.profile == "uniform" else f"profile={spec.profile},"
        name = f"simulate:{profile}seed={spec.seed},devices={spec.devices},sensors={spec.sensors}"
        report = ingest_readings(SensorStore(database_url), name, spec.fingerprint(),
                                 iter_readings(spec, anomalies, on_progress), window=spec.window,
                                 allowed_lateness=allowed_lateness)
        readings = report.rows_read
    kinds = anomaly_kinds(spec)
    by_kind = {kind: sum(1 for a in anomalies if a.kind == kind) for kind in kinds}
    normal = {kind: sum(1 for a in anomalies if a.kind == kind) for kind in normal_kinds(spec)}
    return SimulationResult(readings=readings, devices=spec.devices, sensors=spec.sensors,
                            anomalies=sum(by_kind.values()), by_kind=by_kind, normal_events=normal,
                            anomalous_windows=anomalous_windows(spec, labels_frame(spec, anomalies)),
                            windows=total_windows(spec), ingest=report)
