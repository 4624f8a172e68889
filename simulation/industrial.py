"""The industrial profile of ``fleetscore simulate``: a plant of pumps, with the timing of real telemetry.

Each device is a pump with four sensors (ids ``temperature``, ``pressure``, ``vibration``, ``flow_rate``;
devices ``pump-01``, ``pump-02``, ...). Readings come about every ``interval`` (jitter of ±30% of it), a
few percent of them are dropped at random, and communication gaps (10 s - 2 min) remove every sensor's
readings of a device. Per device, levels and noise are drawn once:

- temperature: 55-75 °C on a slow cycle (1-3 h period, 1.5-3 °C amplitude), Gaussian noise;
- pressure: follows recipe setpoints (three levels per device, 0-25% above its base of 3-6 bar) with a
  first-order response (time constant 5-15 s); the setpoint changes every 15-35 minutes;
- vibration: a level of 2-5 mm/s with heavy-tailed noise (Student t, 3 degrees of freedom);
- flow_rate: Poisson counts per reading (15-40 on average), with micro-stops (5-30 s of zeros).

Anomalies (``Label`` anomaly) are placed on the window grid after the clean span, never overlapping each
other or a legitimate event of the same series; ``sigma`` is the standard deviation of a window mean's
noise (the reading noise over the square root of the readings in a window):

- ``spike``: one window; 1-2 of its readings jump by 8-15 reading standard deviations;
- ``level_shift``: 12-60 windows shifted by 2.5-3.5 sigma;
- ``variance``: 12-60 windows whose noise is 4 times larger, same mean;
- ``stuck``: 12-60 windows where every reading repeats the last reading before them;
- ``drift``: 24-120 windows ramping linearly to 5 sigma (the windows below 2 sigma are labelled
  ``Visible`` false: a detector that looks at one window cannot see them);
- ``device``: 12-60 windows where every sensor of the device moves by 2.5-3.5 sigma (temperature and
  vibration up, pressure and flow down) with twice the noise.

Legitimate events (``Label`` normal) are tagged so that false alarms on them can be counted:
``setpoint_change`` (pressure: the transition and the two minutes after it), ``micro_stop`` (flow: the
stop and the window after it), ``dropout`` (every sensor: the windows around a communication gap).
Every draw comes from generators seeded by ``(seed, purpose, device)``: a device's readings do not
depend on how many devices are simulated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetscore.simulation.spec import Block, Grid, SimulationSpec

SENSORS = ("temperature", "pressure", "vibration", "flow_rate")
ANOMALY_KINDS = ("spike", "level_shift", "variance", "stuck", "drift", "device")
NORMAL_KINDS = ("setpoint_change", "micro_stop", "dropout")

TEMPERATURE, PRESSURE, VIBRATION, FLOW = range(4)
_DECIMALS = (2, 3, 3, 0)
_DEVICE_SIGNS = (1.0, -1.0, 1.0, -1.0)
_SERIES_KINDS = ("spike", "level_shift", "variance", "stuck", "drift")
_SERIES_KIND_P = (0.4, 0.15, 0.15, 0.15, 0.15)  # spikes are one window: more of them
_DEVICE_SHARE = 0.35  # device events per series event
_LONG = (12, 60)
_DRIFT = (24, 120)
_DRIFT_SIGMA, _VISIBLE_SIGMA = 5.0, 2.0
_GAP = 12  # windows kept free between two events of a series (context baselines recover)
_SETPOINT_QUIET = 120  # windows after a setpoint change without anomalies on that device's pressure
_JITTER = 0.3  # of the interval
_BLOCK_READINGS = 500_000
_SUBSEEDS = {"params": 40, "events": 41, "anomalies": 42, "readings": 43}


@dataclass(frozen=True)
class Event:
    """One labelled event: windows ``first .. first + count - 1`` of a series (or of every sensor of the
    device for ``device`` and ``dropout``); ``step0 .. step1`` are the reading steps a legitimate event
    acts on; ``size`` is the magnitude (sigma, reading std or setpoint level, by kind)."""

    device: int
    sensor: int  # -1: every sensor of the device
    kind: str
    first: int
    count: int
    sign: float = 1.0
    size: float = 0.0
    step0: int = 0
    step1: int = 0
    level_from: int = 0  # setpoint_change: the level before

    @property
    def label(self) -> str:
        """``anomaly`` or ``normal``."""
        return "anomaly" if self.kind in ANOMALY_KINDS else "normal"


@dataclass(frozen=True)
class Pump:
    """One device's levels and noise (arrays by sensor where per sensor)."""

    temp_level: float
    temp_amp: float
    temp_period_s: float
    temp_phase: float
    setpoints: tuple[float, ...]
    tau_s: float
    vib_level: float
    flow_rate: float
    noise: tuple[float, float, float, float]  # temperature sd, pressure sd, vibration t scale, unused
    drop_rate: float

    def reading_std(self) -> np.ndarray:
        """Standard deviation of one reading's noise, per sensor."""
        return np.array([self.noise[0], self.noise[1], self.noise[2] * math.sqrt(3.0), math.sqrt(self.flow_rate)])


def device_names(spec: SimulationSpec) -> list[str]:
    """``pump-01``, ``pump-02``, ... (at least two digits)."""
    width = max(2, len(str(spec.devices)))
    return [f"pump-{d + 1:0{width}d}" for d in range(spec.devices)]


def series_names(spec: SimulationSpec) -> tuple[list[str], list[str]]:
    """Device and sensor name of every series, device-major."""
    devices = device_names(spec)
    return [d for d in devices for _ in SENSORS], [s for _ in devices for s in SENSORS]


def pump(spec: SimulationSpec, device: int) -> Pump:
    """The levels and noise of ``device``."""
    rng = np.random.default_rng([spec.seed, _SUBSEEDS["params"], device])
    base = rng.uniform(3.0, 6.0)
    return Pump(temp_level=rng.uniform(55, 75), temp_amp=rng.uniform(1.5, 3.0),
                temp_period_s=rng.uniform(60, 180) * 60, temp_phase=rng.uniform(0, 2 * math.pi),
                setpoints=(base, base * 1.12, base * 1.25), tau_s=rng.uniform(5, 15), vib_level=rng.uniform(2, 5),
                flow_rate=rng.uniform(15, 40),
                noise=(rng.uniform(0.05, 0.12), rng.uniform(0.01, 0.025), rng.uniform(0.08, 0.2), 0.0),
                drop_rate=rng.uniform(0.01, 0.04))


def window_sigma(spec: SimulationSpec, params: Pump) -> np.ndarray:
    """Standard deviation of a window mean's noise, per sensor."""
    per_window = max(1.0, spec.window / spec.interval)
    return params.reading_std() / math.sqrt(per_window)


class _Layout:
    """Steps and windows of one device."""

    def __init__(self, spec: SimulationSpec) -> None:
        self.grid = Grid(spec)
        self.steps = spec.steps
        self.interval_s = spec.interval.total_seconds()

    def window_of_step(self, step: int | np.ndarray) -> np.ndarray:
        """Window index of the nominal time of ``step``."""
        t = self.grid.start + np.asarray(step, dtype=np.int64) * self.grid.interval
        return np.asarray((t - self.grid.origin) // self.grid.window)

    def step_of_seconds(self, seconds: float) -> int:
        return int(seconds / self.interval_s)


def _legit_events(spec: SimulationSpec, device: int, layout: _Layout) -> list[Event]:
    rng = np.random.default_rng([spec.seed, _SUBSEEDS["events"], device])
    params = pump(spec, device)
    total_s = spec.steps * layout.interval_s
    events: list[Event] = []
    # setpoint changes: the first three segments visit every level, so the clean span has seen them all
    order = list(rng.permutation(3))
    t = rng.uniform(8, 20) * 60
    current = int(order[0])
    index = 1
    while t < total_s:
        nxt = int(order[index]) if index < 3 else int(rng.choice([k for k in range(3) if k != current]))
        step = layout.step_of_seconds(t)
        settle = layout.step_of_seconds(t + 5 * params.tau_s + 120)
        w0 = int(layout.window_of_step(step))
        events.append(Event(device, PRESSURE, "setpoint_change", w0, int(layout.window_of_step(settle)) + 1 - w0,
                            size=float(nxt), step0=step, step1=settle, level_from=current))
        current, index = nxt, index + 1
        t += rng.uniform(15, 35) * 60
    t = rng.uniform(3, 10) * 60
    while t < total_s:
        s0, s1 = layout.step_of_seconds(t), layout.step_of_seconds(t + rng.uniform(5, 30))
        w0 = int(layout.window_of_step(s0))
        events.append(Event(device, FLOW, "micro_stop", w0, int(layout.window_of_step(s1)) + 2 - w0,
                            step0=s0, step1=s1))
        t += rng.uniform(8, 25) * 60
    t = rng.uniform(5, 20) * 60
    while t < total_s:
        s0, s1 = layout.step_of_seconds(t), layout.step_of_seconds(t + rng.uniform(10, 120))
        w0 = int(layout.window_of_step(s0)) - 1
        dropout = Event(device, -1, "dropout", w0, int(layout.window_of_step(s1)) + 2 - w0, step0=s0, step1=s1)
        if not any(_overlap(dropout, e, 2) for e in events):
            events.append(dropout)
        t += rng.uniform(20, 50) * 60
    return events


def _overlap(a: Event, b: Event, gap: int) -> bool:
    same = a.sensor == b.sensor or a.sensor < 0 or b.sensor < 0
    return same and a.first < b.first + b.count + gap and b.first < a.first + a.count + gap


def _anomalies(spec: SimulationSpec, device: int, layout: _Layout, legit: list[Event]) -> list[Event]:
    rng = np.random.default_rng([spec.seed, _SUBSEEDS["anomalies"], device])
    grid = layout.grid
    n = int(grid.n_windows)
    free = np.ones((len(SENSORS), n), dtype=bool)
    free[:, :max(0, min(n, int(grid.first_eligible)))] = False
    for e in legit:
        rows = slice(None) if e.sensor < 0 else e.sensor
        tail = _SETPOINT_QUIET if e.kind == "setpoint_change" else _GAP
        free[rows, max(0, e.first - _GAP):max(0, e.first + e.count + tail)] = False
    eligible = int(free.any(axis=0).sum())
    if eligible == 0 or spec.anomaly_rate == 0:
        return []
    long_mean, drift_mean = sum(_LONG) / 2, sum(_DRIFT) / 2
    mean_length = (_SERIES_KIND_P[0] + sum(_SERIES_KIND_P[1:4]) * long_mean + _SERIES_KIND_P[4] * drift_mean
                   + _DEVICE_SHARE * long_mean)
    per_series = spec.anomaly_rate * eligible / mean_length
    params = pump(spec, device)
    sigma = window_sigma(spec, params)
    out: list[Event] = []

    def place(rows: list[int], count: int) -> int | None:
        ok = np.asarray(free[rows].all(axis=0))
        # a start fits when count + 2 * gap windows around it are free
        span = count + 2 * _GAP
        if len(ok) < span:
            return None
        run = np.convolve(ok.astype(np.int64), np.ones(span, dtype=np.int64), "valid") == span
        starts = np.flatnonzero(run)
        if len(starts) == 0:
            return None
        first = int(rng.choice(starts)) + _GAP
        free[np.array(rows)[:, None], np.arange(first - _GAP, first + count + _GAP)[None, :]] = False
        return first

    for _ in range(int(rng.poisson(per_series * _DEVICE_SHARE))):
        count = int(rng.integers(_LONG[0], _LONG[1] + 1))
        first = place(list(range(len(SENSORS))), count)
        if first is not None:
            out.append(Event(device, -1, "device", first, count, size=float(rng.uniform(2.5, 3.5))))
    for sensor in range(len(SENSORS)):
        for _ in range(int(rng.poisson(per_series))):
            kind = str(rng.choice(_SERIES_KINDS, p=_SERIES_KIND_P))
            bounds = (1, 1) if kind == "spike" else _DRIFT if kind == "drift" else _LONG
            count = int(rng.integers(bounds[0], bounds[1] + 1))
            first = place([sensor], count)
            if first is None:
                continue
            sign = 1.0 if sensor == FLOW and kind == "spike" else (1.0 if rng.random() < 0.5 else -1.0)
            if kind == "spike":
                size = float(rng.uniform(8, 15))
            elif kind == "level_shift":
                size = float(rng.uniform(2.5, 3.5))
            elif kind == "drift":
                size = _DRIFT_SIGMA
            else:
                size = 0.0
            if kind in ("level_shift", "drift") and sensor == FLOW and sign < 0:
                size = min(size, float(params.flow_rate / max(sigma[FLOW], 1e-9)) / 2)
            out.append(Event(device, sensor, kind, first, count, sign=sign, size=size))
    return out


def plan(spec: SimulationSpec) -> list[Event]:
    """Every labelled event of the fleet (legitimate events and anomalies), device by device."""
    layout = _Layout(spec)
    events: list[Event] = []
    for device in range(spec.devices):
        legit = _legit_events(spec, device, layout)
        events += legit + _anomalies(spec, device, layout, legit)
    return events


def labels_frame(spec: SimulationSpec, events: list[Event]) -> pd.DataFrame:
    """The labels: ``Device, Sensor, Kind, Start, End, Label, Visible`` (one row per event and sensor; a
    drift gives two rows, its windows below 2 sigma with ``Visible`` false)."""
    grid = Grid(spec)
    names = device_names(spec)
    rows: list[tuple[str, str, str, int, int, str, bool]] = []
    for e in events:
        sensors = range(len(SENSORS)) if e.sensor < 0 else [e.sensor]
        parts = [(e.first, e.count, True)]
        if e.kind == "drift":
            hidden = min(e.count, max(0, math.ceil(_VISIBLE_SIGMA / e.size * e.count - 0.5)))
            parts = [(e.first, hidden, False), (e.first + hidden, e.count - hidden, True)]
        for sensor in sensors:
            for first, count, visible in parts:
                count = min(count, int(grid.n_windows) - first)  # an event running past the end
                if count > 0:
                    rows.append((names[e.device], SENSORS[sensor], e.kind, grid.origin + first * grid.window,
                                 grid.origin + (first + count) * grid.window, e.label, visible))
    frame = pd.DataFrame(rows, columns=["Device", "Sensor", "Kind", "Start", "End", "Label", "Visible"])
    for column in ("Device", "Sensor", "Kind", "Label"):
        frame[column] = frame[column].astype("str")
    frame["Start"] = pd.to_datetime(frame["Start"].astype(np.int64), unit="ns")
    frame["End"] = pd.to_datetime(frame["End"].astype(np.int64), unit="ns")
    frame["Visible"] = frame["Visible"].astype(bool)
    return frame.sort_values(["Device", "Sensor", "Start"], ignore_index=True)


def _device_readings(spec: SimulationSpec, device: int, events: list[Event], layout: _Layout
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (ns), sensor index and value of one device's kept readings."""
    rng = np.random.default_rng([spec.seed, _SUBSEEDS["readings"], device])
    params = pump(spec, device)
    grid = layout.grid
    n, k = spec.steps, len(SENSORS)
    steps = np.arange(n, dtype=np.int64)
    nominal = grid.start + steps * grid.interval
    # jitter in whole milliseconds, the resolution of the readings' timestamps
    ts = nominal + np.round(rng.uniform(-_JITTER, _JITTER, (k, n)) * grid.interval / 1e6).astype(np.int64) * 1_000_000
    ts = np.maximum(ts, grid.start)
    window = (ts - grid.origin) // grid.window
    seconds = steps * layout.interval_s
    absolute = nominal / 1e9
    mean = np.empty((k, n))
    mean[TEMPERATURE] = params.temp_level + params.temp_amp * np.sin(
        2 * math.pi * absolute / params.temp_period_s + params.temp_phase)
    mean[PRESSURE] = _pressure(params, seconds, [e for e in events if e.kind == "setpoint_change"], layout)
    mean[VIBRATION] = params.vib_level
    mean[FLOW] = params.flow_rate
    noise = np.empty((k, n))
    noise[TEMPERATURE] = rng.normal(0.0, params.noise[0], n)
    noise[PRESSURE] = rng.normal(0.0, params.noise[1], n)
    noise[VIBRATION] = rng.standard_t(3, n) * params.noise[2]
    noise[FLOW] = rng.poisson(params.flow_rate, n) - params.flow_rate
    keep = rng.random((k, n)) >= params.drop_rate
    sigma = window_sigma(spec, params)
    std = params.reading_std()
    spikes: list[tuple[int, np.ndarray, float]] = []
    stuck: list[tuple[int, np.ndarray]] = []
    for e in events:
        if e.label == "normal":
            continue
        sensors = range(k) if e.sensor < 0 else [e.sensor]
        for s in sensors:
            inside = (window[s] >= e.first) & (window[s] < e.first + e.count)
            if e.kind == "level_shift":
                mean[s, inside] += e.sign * e.size * sigma[s]
            elif e.kind == "variance":
                noise[s, inside] *= 4.0
            elif e.kind == "drift":
                t0, t1 = grid.origin + e.first * grid.window, grid.origin + (e.first + e.count) * grid.window
                mean[s, inside] += e.sign * e.size * sigma[s] * (ts[s, inside] - t0) / (t1 - t0)
            elif e.kind == "device":
                mean[s, inside] += _DEVICE_SIGNS[s] * e.size * sigma[s]
                noise[s, inside] *= 2.0
            elif e.kind == "spike":
                where = np.flatnonzero(inside)
                if len(where):
                    hit = rng.choice(where, size=min(len(where), int(rng.integers(1, 3))), replace=False)
                    keep[s, hit] = True
                    spikes.append((s, hit, e.sign * e.size * std[s]))
            elif e.kind == "stuck":
                stuck.append((s, inside))
    value = mean + noise
    for s, hit, jump in spikes:
        value[s, hit] += jump
    for e in events:
        if e.kind == "micro_stop":
            value[FLOW, e.step0:e.step1] = 0.0
        elif e.kind == "dropout":
            keep[:, e.step0:e.step1] = False
    for s, inside in stuck:
        where = np.flatnonzero(inside)
        if len(where) and where[0] > 0:
            keep[s, where[0] - 1] = True
            value[s, where] = value[s, where[0] - 1]
    for s, decimals in enumerate(_DECIMALS):
        value[s] = np.round(value[s], decimals)
    value[VIBRATION] = np.maximum(value[VIBRATION], 0.0)
    value[FLOW] = np.maximum(value[FLOW], 0.0)
    sensor = np.broadcast_to(np.arange(k, dtype=np.int64)[:, None], (k, n))
    return ts[keep], sensor[keep], value[keep]


def _pressure(params: Pump, seconds: np.ndarray, changes: list[Event], layout: _Layout) -> np.ndarray:
    """The setpoint trajectory: a first-order response to each change."""
    levels = np.array(params.setpoints)
    if not changes:
        return np.full(len(seconds), levels[0])
    at = np.array([e.step0 * layout.interval_s for e in changes])
    to = np.array([levels[int(e.size)] for e in changes])
    first = levels[changes[0].level_from]
    before = np.concatenate(([first], to[:-1]))
    segment = np.searchsorted(at, seconds, side="right") - 1
    out = np.full(len(seconds), first)
    moving = segment >= 0
    seg = segment[moving]
    out[moving] = to[seg] + (before[seg] - to[seg]) * np.exp(-(seconds[moving] - at[seg]) / params.tau_s)
    return out


def generate(spec: SimulationSpec, events: list[Event] | None = None,
             block_readings: int = _BLOCK_READINGS) -> Iterator[Block]:
    """The readings, a group of devices at a time (time-ordered within a group)."""
    events = plan(spec) if events is None else events
    layout = _Layout(spec)
    by_device: dict[int, list[Event]] = {}
    for e in events:
        by_device.setdefault(e.device, []).append(e)
    per_group = max(1, block_readings // max(1, spec.steps * len(SENSORS)))
    for d0 in range(0, spec.devices, per_group):
        parts = []
        for device in range(d0, min(spec.devices, d0 + per_group)):
            ts, sensor, value = _device_readings(spec, device, by_device.get(device, []), layout)
            parts.append((ts, sensor + device * len(SENSORS), value))
        ts = np.concatenate([p[0] for p in parts])
        series = np.concatenate([p[1] for p in parts])
        value = np.concatenate([p[2] for p in parts])
        order = np.argsort(ts, kind="stable")
        yield Block(ts=ts[order], series=series[order], value=value[order])
