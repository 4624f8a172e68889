"""The uniform profile of ``fleetscore simulate``: a fleet like the reference simulator's.

Its anomalies are ones that a per-window model can see.

Normal readings of sensor ``k`` (1-based) are uniform in ``SENSOR_RANGES[(k - 1) % 5]``: sensor 1 in
[10, 15], 2 in [30, 40], 3 in [60, 65], 4 in [80, 85], 5 in [100, 110], rounded to 2 decimals like
the reference data. Devices and sensors are named ``1``, ``2``, ...

Anomalies are placed on the ingestion windows (epoch-aligned, ``window`` long) after the first hour
(kept clean for training), never overlapping and with at least one normal window between two of them:

- ``spike``: one window; every reading in it is ``hi + U(0.5, 2.0) * (hi - lo)`` (or, below,
  ``lo - U(0.5, 2.0) * (hi - lo)``);
- ``level_shift``: 12-60 consecutive windows whose readings are shifted by ``±U(1.0, 2.0) * (hi - lo)``;
- ``stuck``: 12-60 consecutive windows where every reading equals the last normal reading before them.

``anomaly_rate`` is the expected share of anomalous windows after the first hour (``clean``). The
labels are ``Device,Sensor,Kind,Start,End,Label,Visible``: a window whose start lies in ``[Start, End)``
is anomalous. Everything is a function of the spec (``seed`` included), generated block by block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetscore.simulation.spec import Block, Grid, SimulationSpec

SENSOR_RANGES: tuple[tuple[float, float], ...] = ((10, 15), (30, 40), (60, 65), (80, 85), (100, 110))
ANOMALY_KINDS = ("spike", "level_shift", "stuck")
NORMAL_KINDS: tuple[str, ...] = ()
LONG_MIN, LONG_MAX = 12, 60  # windows, for level shifts and stuck values
_BLOCK_READINGS = 500_000


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


def series_names(spec: SimulationSpec) -> tuple[list[str], list[str]]:
    """Device and sensor name of every series, device-major."""
    devices = [str(d + 1) for d in range(spec.devices) for _ in range(spec.sensors)]
    sensors = [str(s + 1) for _ in range(spec.devices) for s in range(spec.sensors)]
    return devices, sensors


def _range(sensor_index: int) -> tuple[float, float]:
    return SENSOR_RANGES[sensor_index % len(SENSOR_RANGES)]


def plan(spec: SimulationSpec) -> list[Anomaly]:
    """Where the anomalies go: non-overlapping, after the first hour, about ``anomaly_rate`` of windows."""
    grid = Grid(spec)
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
            out.append(Anomaly(devices[series], sensors[series], series, ANOMALY_KINDS[int(kind)], int(first),
                               int(count), sign, float(level)))
    return out


def labels_frame(spec: SimulationSpec, anomalies: list[Anomaly]) -> pd.DataFrame:
    """The labels: ``Device, Sensor, Kind, Start, End, Label, Visible`` (window starts in ``[Start, End)``
    are anomalous; every row is an anomaly, visible in its windows)."""
    grid = Grid(spec)
    starts = np.array([grid.origin + a.first * grid.window for a in anomalies], dtype=np.int64)
    ends = np.array([grid.origin + (a.first + a.count) * grid.window for a in anomalies], dtype=np.int64)
    frame = pd.DataFrame({
        "Device": pd.Series([a.device for a in anomalies], dtype="str"),
        "Sensor": pd.Series([a.sensor for a in anomalies], dtype="str"),
        "Kind": pd.Series([a.kind for a in anomalies], dtype="str"),
        "Start": pd.to_datetime(starts, unit="ns"),
        "End": pd.to_datetime(ends, unit="ns"),
        "Label": pd.Series(["anomaly"] * len(anomalies), dtype="str"),
        "Visible": pd.Series([True] * len(anomalies), dtype=bool),
    })
    return frame.sort_values(["Device", "Sensor", "Start"], key=_natural, ignore_index=True)


def _natural(column: pd.Series) -> pd.Series:
    if column.name in ("Device", "Sensor"):
        return column.astype(int)
    return column


def generate(spec: SimulationSpec, anomalies: list[Anomaly] | None = None,
             block_readings: int = _BLOCK_READINGS) -> Iterator[Block]:
    """The readings, block by block (deterministic for a given spec)."""
    grid = Grid(spec)
    anomalies = plan(spec) if anomalies is None else anomalies
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


