"""A fleet simulator like the reference one, with labelled anomalies that a per-window model can see.

Normal readings of sensor ``k`` (1-based) are uniform in ``SENSOR_RANGES[(k - 1) % 5]``: sensor 1 in
[10, 15], 2 in [30, 40], 3 in [60, 65], 4 in [80, 85], 5 in [100, 110], rounded to 2 decimals like
the reference data. Devices and sensors are named ``1``, ``2``, ...

Anomalies are placed on the ingestion windows (epoch-aligned, ``window`` long) after the first hour
(kept clean for training), never overlapping and with at least one normal window between two of them:

- ``spike``: one window; every reading in it is ``hi + U(0.5, 2.0) * (hi - lo)`` (or, below,
  ``lo - U(0.5, 2.0) * (hi - lo)``);
- ``level_shift``: 12-60 consecutive windows whose readings are shifted by ``±U(1.0, 2.0) * (hi - lo)``;
- ``stuck``: 12-60 consecutive windows where every reading equals the last normal reading before them.

``anomaly_rate`` is the expected share of anomalous windows after the first hour. The labels are
``Device,Sensor,Kind,Start,End``: a window whose start lies in ``[Start, End)`` is anomalous. Everything
is a function of the spec (``seed`` included), generated block by block with vectorised numpy.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from fleetscore.errors import ConfigError, IngestError
from fleetscore.ingestion.windowing import Readings
from fleetscore.progress import ProgressCallback

if TYPE_CHECKING:
    from fleetscore.ingestion.ingest import InputReport

log = logging.getLogger(__name__)

SENSOR_RANGES: tuple[tuple[float, float], ...] = ((10, 15), (30, 40), (60, 65), (80, 85), (100, 110))
KINDS = ("spike", "level_shift", "stuck")
LONG_MIN, LONG_MAX = 12, 60  # windows, for level shifts and stuck values
TRAIN_SPAN = timedelta(hours=1)  # no anomalies in the first hour
_BLOCK_READINGS = 500_000
_NS = 1_000_000_000



@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate. ``start`` is naive UTC."""

    devices: int = 3
    sensors: int = 5
    start: datetime = datetime(2024, 1, 1)
    duration: timedelta = timedelta(hours=2)
    interval: timedelta = timedelta(seconds=1)
    window: timedelta = timedelta(seconds=5)
    seed: int = 0
    anomaly_rate: float = 0.01

    def __post_init__(self) -> None:
        if self.devices < 1 or self.sensors < 1:
            raise ConfigError("simulate: --devices and --sensors must be at least 1")
        if self.interval > self.window:
            raise ConfigError(f"simulate: --interval {self.interval} is longer than the window {self.window}: "
                              "some windows would hold no reading")
        if self.duration < self.interval:
            raise ConfigError(f"simulate: --duration {self.duration} is shorter than --interval {self.interval}")
        if not 0 <= self.anomaly_rate < 0.5:
            raise ConfigError(f"simulate: --anomaly-rate must be in [0, 0.5), got {self.anomaly_rate}")

    @property
    def steps(self) -> int:
        """Readings per series."""
        return int(self.duration / self.interval)

    @property
    def readings(self) -> int:
        """Readings in all."""
        return self.steps * self.devices * self.sensors

    def fingerprint(self) -> str:
        """A content hash of the spec (what ``--ingest`` records in ``sources``)."""
        text = repr(sorted((k, str(v)) for k, v in asdict(self).items()))
        return hashlib.sha256(("simulate:" + text).encode()).hexdigest()


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly on the window grid: windows ``first .. first + count - 1``."""

    device: str
    sensor: str
    series: int
    kind: str
    first: int  # window index from the grid origin
    count: int
    sign: float
    level: float  # level_shift: the shift; stuck: the value; spike: unused


def _ns(value: datetime | timedelta) -> int:
    if isinstance(value, timedelta):
        return round(value.total_seconds() * _NS)
    return int(pd.Timestamp(value).value)


class _Grid:
    """Times of readings and windows in ns."""

    def __init__(self, spec: SimulationSpec) -> None:
        self.start = _ns(spec.start)
        self.interval = _ns(spec.interval)
        self.window = _ns(spec.window)
        self.origin = (self.start // self.window) * self.window
        self.end = self.start + spec.steps * self.interval
        self.n_windows = (self.end - self.origin) // self.window  # full windows before the end
        self.first_eligible = -(-(self.start + _ns(TRAIN_SPAN) - self.origin) // self.window)

    def first_step(self, window_index: int) -> int:
        """The first reading step at or after the start of window ``window_index``."""
        t = self.origin + window_index * self.window
        return max(0, -(-(t - self.start) // self.interval))


def series_names(spec: SimulationSpec) -> tuple[list[str], list[str]]:
    """Device and sensor name of every series, device-major."""
    devices = [str(d + 1) for d in range(spec.devices) for _ in range(spec.sensors)]
    sensors = [str(s + 1) for _ in range(spec.devices) for s in range(spec.sensors)]
    return devices, sensors


def _range(sensor_index: int) -> tuple[float, float]:
    return SENSOR_RANGES[sensor_index % len(SENSOR_RANGES)]


def plan_anomalies(spec: SimulationSpec) -> list[Anomaly]:
    """Where the anomalies go: non-overlapping, after the first hour, about ``anomaly_rate`` of windows."""
    grid = _Grid(spec)
    eligible = grid.n_windows - grid.first_eligible
    if eligible <= 1 or spec.anomaly_rate == 0:
        return []
    rng = np.random.default_rng([spec.seed, 1])
    mean_length = (1 + (LONG_MIN + LONG_MAX) / 2 * 2) / 3
    devices, sensors = series_names(spec)
    out: list[Anomaly] = []
    for series in range(len(devices)):
        k = int(rng.poisson(spec.anomaly_rate * eligible / mean_length))
        if k == 0:
            continue
        kinds = rng.integers(0, 3, size=k)
        lengths = np.where(kinds == 0, 1, rng.integers(LONG_MIN, LONG_MAX + 1, size=k))
        lengths = np.minimum(lengths, eligible - 1)
        while k and lengths[:k].sum() + k > eligible:  # drop what does not fit (gap of 1 before each)
            k -= 1
        if k == 0:
            continue
        kinds, lengths = kinds[:k], lengths[:k]
        free = eligible - int(lengths.sum()) - k
        slots = np.sort(rng.choice(free + k, size=k, replace=False))
        starts = grid.first_eligible + 1 + (slots - np.arange(k)) + np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
        lo, hi = _range(series % spec.sensors)
        for kind, first, count in zip(kinds, starts, lengths, strict=True):
            sign = 1.0 if rng.random() < 0.5 else -1.0
            if kind == 1:
                level = sign * rng.uniform(1.0, 2.0) * (hi - lo)
            elif kind == 2:
                level = round(float(rng.uniform(lo, hi)), 2)
            else:
                level = 0.0
            out.append(Anomaly(devices[series], sensors[series], series, KINDS[int(kind)], int(first), int(count),
                               sign, float(level)))
    return out


def labels_frame(spec: SimulationSpec, anomalies: list[Anomaly]) -> pd.DataFrame:
    """The labels: ``Device, Sensor, Kind, Start, End`` (window starts in ``[Start, End)`` are anomalous)."""
    grid = _Grid(spec)
    starts = np.array([grid.origin + a.first * grid.window for a in anomalies], dtype=np.int64)
    ends = np.array([grid.origin + (a.first + a.count) * grid.window for a in anomalies], dtype=np.int64)
    frame = pd.DataFrame({
        "Device": pd.Series([a.device for a in anomalies], dtype="str"),
        "Sensor": pd.Series([a.sensor for a in anomalies], dtype="str"),
        "Kind": pd.Series([a.kind for a in anomalies], dtype="str"),
        "Start": pd.to_datetime(starts, unit="ns"),
        "End": pd.to_datetime(ends, unit="ns"),
    })
    return frame.sort_values(["Device", "Sensor", "Start"], key=_natural, ignore_index=True)


def _natural(column: pd.Series) -> pd.Series:
    if column.name in ("Device", "Sensor"):
        return column.astype(int)
    return column


@dataclass
class Block:
    """Readings of consecutive time steps, time-major (all series at step k, then k + 1, ...)."""

    ts: np.ndarray  # int64 ns
    series: np.ndarray  # int64 series index
    value: np.ndarray  # float64


def generate(spec: SimulationSpec, anomalies: list[Anomaly] | None = None,
             block_readings: int = _BLOCK_READINGS) -> Iterator[Block]:
    """The readings, block by block (deterministic for a given spec)."""
    grid = _Grid(spec)
    anomalies = plan_anomalies(spec) if anomalies is None else anomalies
    n_series = spec.devices * spec.sensors
    lo = np.array([_range(i % spec.sensors)[0] for i in range(n_series)])
    hi = np.array([_range(i % spec.sensors)[1] for i in range(n_series)])
    spans = [(a, grid.first_step(a.first), grid.first_step(a.first + a.count)) for a in anomalies]
    steps_per_block = max(1, block_readings // n_series)
    for block_index, k0 in enumerate(range(0, spec.steps, steps_per_block)):
        k1 = min(spec.steps, k0 + steps_per_block)
        rng = np.random.default_rng([spec.seed, 2, block_index])
        values = lo + rng.random((k1 - k0, n_series)) * (hi - lo)
        for anomaly, s0, s1 in spans:
            a0, a1 = max(s0, k0), min(s1, k1)
            col = anomaly.series
            width = hi[col] - lo[col]
            if anomaly.kind == "stuck":
                b0 = max(s0 - 1, k0)  # the last normal reading takes the stuck value too
                if b0 < a1:
                    values[b0 - k0:a1 - k0, col] = anomaly.level
                continue
            if a0 >= a1:
                continue
            if anomaly.kind == "spike":
                jump = rng.uniform(0.5, 2.0, size=a1 - a0) * width
                values[a0 - k0:a1 - k0, col] = hi[col] + jump if anomaly.sign > 0 else lo[col] - jump
            else:
                values[a0 - k0:a1 - k0, col] += anomaly.level
        values = np.round(values, 2)
        steps = np.arange(k0, k1, dtype=np.int64)
        ts = np.repeat(grid.start + steps * grid.interval, n_series)
        yield Block(ts=ts, series=np.tile(np.arange(n_series, dtype=np.int64), k1 - k0), value=values.ravel())


def block_readings(spec: SimulationSpec, block: Block, first_line: int) -> Readings:
    """A block as :class:`Readings` (device and sensor names as Arrow strings)."""
    devices, sensors = series_names(spec)
    index = pa.array(block.series.astype(np.int32))
    device = pa.DictionaryArray.from_arrays(index, pa.array(devices)).cast(pa.string())
    sensor = pa.DictionaryArray.from_arrays(index, pa.array(sensors)).cast(pa.string())
    lines = np.arange(first_line, first_line + len(block.ts), dtype=np.int64)
    return Readings(device, sensor, block.ts, block.value, lines)


def iter_readings(spec: SimulationSpec, anomalies: list[Anomaly],
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


def write_readings(spec: SimulationSpec, anomalies: list[Anomaly], path: Path,
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


def write_labels(spec: SimulationSpec, anomalies: list[Anomaly], path: Path) -> int:
    """Write the labels CSV; returns the number of anomalies."""
    frame = labels_frame(spec, anomalies)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    except OSError as exc:
        raise IngestError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    return len(frame)


def anomalous_windows(spec: SimulationSpec, anomalies: list[Anomaly]) -> int:
    """How many windows the anomalies cover."""
    return int(sum(a.count for a in anomalies))


def total_windows(spec: SimulationSpec) -> int:
    """How many full windows each series has, times the number of series."""
    grid = _Grid(spec)
    return int(grid.n_windows) * spec.devices * spec.sensors


@dataclass
class SimulationResult:
    """What a simulation produced."""

    readings: int
    devices: int
    sensors: int
    anomalies: int
    by_kind: dict[str, int]
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
    if out is not None:
        write_readings(spec, anomalies, out, on_progress)
    report = None
    if database_url is not None:
        name = f"simulate:seed={spec.seed},devices={spec.devices},sensors={spec.sensors}"
        report = ingest_readings(SensorStore(database_url), name, spec.fingerprint(),
                                 iter_readings(spec, anomalies, on_progress), window=spec.window,
                                 allowed_lateness=allowed_lateness)
    by_kind = {kind: sum(1 for a in anomalies if a.kind == kind) for kind in KINDS}
    return SimulationResult(readings=spec.readings, devices=spec.devices, sensors=spec.sensors,
                            anomalies=len(anomalies), by_kind=by_kind,
                            anomalous_windows=anomalous_windows(spec, anomalies), windows=total_windows(spec),
                            ingest=report)
