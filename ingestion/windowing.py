"""Validation of raw rows, tumbling windows and allowed lateness: the pure core of ingestion.

- A window is labelled by its start: with window ``w``, a reading at ``t`` belongs to the window
  ``floor(t / w) * w`` (aligned to the Unix epoch, naive UTC), holding ``ts <= t < ts + w``.
- A row is rejected with the first reason that applies: ``missing_field``, ``empty_device``,
  ``empty_sensor``, ``id_too_long`` (device or sensor over 64 characters), ``bad_id`` (a control
  character such as NUL in an id), ``bad_timestamp`` (not ISO 8601, or before 1677), ``bad_value``,
  ``non_finite``; then, in :mod:`fleetscore.ingestion.ingest`, ``too_far_ahead`` (past the ``max_future``
  horizon; a time past 2262 is always that), ``overflow`` (a window whose sum is not finite) and
  ``too_late`` (see :class:`Lateness`).
- ``aggregate`` turns readings into partial window aggregates (mean, min, max, count) that the store
  merges with what it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.ingestion.sources import RawChunk

MAX_ID_LENGTH = 64
_SEP = "\x1f"


@dataclass
class Readings:
    """Valid readings of one chunk: one entry per reading."""

    device: pa.Array
    sensor: pa.Array
    ts: np.ndarray  # int64 ns since the epoch, naive UTC
    value: np.ndarray  # float64
    lines: np.ndarray  # int64 line numbers (or event numbers)

    def take(self, mask: np.ndarray) -> Readings:
        """The readings where ``mask`` is true."""
        index = pa.array(np.flatnonzero(mask))
        return Readings(self.device.take(index), self.sensor.take(index), self.ts[mask], self.value[mask],
                        self.lines[mask])

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class Rejects:
    """Rejected rows: line numbers, reasons and short details (the raw text is looked up later)."""

    lines: list[int]
    reasons: list[str]
    details: list[str]

    def extend(self, lines: np.ndarray, reason: str, details: list[str]) -> None:
        """Add rows rejected for one reason."""
        self.lines.extend(int(x) for x in lines)
        self.reasons.extend([reason] * len(lines))
        self.details.extend(details)


def _strip(array: pa.Array) -> pa.Array:
    return pc.utf8_trim_whitespace(array)


NAT = np.iinfo(np.int64).min
BEYOND = np.iinfo(np.int64).max  # a valid time after 2262 (past nanosecond range): always too far ahead


def parse_times_or_nat(text: pa.Array) -> np.ndarray:
    """ISO-8601 text -> int64 ns, naive UTC (offsets such as ``Z`` or ``+02:00`` converted); unparseable
    or before 1677 -> ``NAT`` (the int64 minimum); a valid time after 2262 -> ``BEYOND``."""
    try:
        parsed = pc.cast(text, pa.timestamp("ns"))
        return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype="datetime64[ns]").view(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
    try:
        values = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce").dt.tz_localize(None)
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return np.array([_parse_one(str(t)) for t in series], dtype=np.int64)
    out = np.array(_to_ns(values.to_numpy()), dtype=np.int64)  # a writable copy
    missed = np.flatnonzero(out == NAT)
    if len(missed):  # pandas versions that parse only the nanosecond range: a valid time past it is BEYOND
        texts = series.to_numpy()
        for i in missed:
            out[i] = _beyond(str(texts[i]))
    return out


def _beyond(text: str) -> int:
    """``BEYOND`` for a valid ISO time after 2262, else ``NAT``."""
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return int(NAT)
    return int(BEYOND) if parsed.year >= 2262 else int(NAT)


def _to_ns(values: np.ndarray) -> np.ndarray:
    """datetime64 of any unit -> int64 ns, with times outside the nanosecond range mapped to NAT/BEYOND."""
    if values.dtype == np.dtype("datetime64[ns]"):
        return values.view(np.int64)
    us = values.astype("datetime64[us]").view(np.int64)
    nat = us == NAT
    high = ~nat & (us > BEYOND // 1000 - 1)
    low = ~nat & (us < NAT // 1000 + 1)
    out = np.where(nat | high | low, 0, us) * 1000
    out[nat | low] = NAT
    out[high] = BEYOND
    return out


def _parse_one(text: str) -> int:
    try:
        ts = pd.to_datetime(pd.Series([text], dtype=object), format="ISO8601", utc=True, errors="coerce")
        return int(_to_ns(ts.dt.tz_localize(None).to_numpy())[0])
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return int(NAT)


def parse_values(text: pa.Array) -> np.ndarray:
    """Text -> float64; unparseable -> NaN (``nan``/``inf`` parse as such and are caught as non-finite)."""
    try:
        return np.asarray(pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
    return np.asarray(pd.to_numeric(series.str.strip(), errors="coerce"), dtype=np.float64)


def validate(chunk: RawChunk) -> tuple[Readings, Rejects]:
    """Split a raw chunk into valid readings and rejected rows (with the first reason that applies)."""
    rejects = Rejects([], [], [])
    for line, _raw, reason, detail in chunk.rejected:
        rejects.lines.append(line)
        rejects.reasons.append(reason)
        rejects.details.append(detail)
    n = len(chunk.lines)
    if n == 0:
        empty = pa.array([], pa.string())
        return Readings(empty, empty, np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)), rejects
    device = _strip(chunk.device.cast(pa.string()))
    sensor = _strip(chunk.sensor.cast(pa.string()))
    ts_text = _strip(chunk.ts.cast(pa.string()))
    value_text = _strip(chunk.value.cast(pa.string()))
    lines = chunk.lines
    bad = np.zeros(n, dtype=bool)

    def reject(mask: np.ndarray, reason: str, detail: Callable[[np.ndarray], list[str]]) -> None:
        mask = mask & ~bad
        if mask.any():
            index = np.flatnonzero(mask)
            rejects.extend(lines[index], reason, detail(index))
            bad[index] = True

    missing = np.zeros(n, dtype=bool)
    names = []
    for name, column in (("TS", chunk.ts), ("Device", chunk.device), ("Sensor", chunk.sensor),
                         ("Value", chunk.value)):
        is_missing = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if name in ("TS", "Value"):
            is_missing |= np.asarray(pc.equal(_strip(column.cast(pa.string())), "").fill_null(True)
                                     .to_numpy(zero_copy_only=False), dtype=bool)
        names.append((name, is_missing))
        missing |= is_missing

    def missing_detail(index: np.ndarray) -> list[str]:
        return ["no " + ", ".join(name for name, m in names if m[i]) for i in index]

    reject(missing, "missing_field", missing_detail)
    reject(_is_empty(device), "empty_device", lambda index: [""] * len(index))
    reject(_is_empty(sensor), "empty_sensor", lambda index: [""] * len(index))
    too_long = _longer(device, MAX_ID_LENGTH) | _longer(sensor, MAX_ID_LENGTH)
    reject(too_long, "id_too_long", lambda index: [f"device or sensor over {MAX_ID_LENGTH} characters"] * len(index))
    control = _has_control(device) | _has_control(sensor)
    reject(control, "bad_id", lambda index: ["control character in device or sensor"] * len(index))
    ts = parse_times_or_nat(ts_text.fill_null(""))
    reject(ts == NAT, "bad_timestamp",
           lambda index: [f"not a time: {ts_text[int(i)].as_py()!r}"[:200] for i in index])
    value = parse_values(value_text.fill_null(""))
    nan = np.isnan(value)
    unparsed = nan & ~np.isin(pc.utf8_lower(value_text.fill_null("")).to_numpy(zero_copy_only=False),
                              ["nan", "+nan", "-nan"])
    reject(unparsed, "bad_value", lambda index: [f"not a number: {value_text[int(i)].as_py()!r}"[:200]
                                                 for i in index])
    reject(~np.isfinite(value), "non_finite", lambda index: [f"value {value[int(i)]}" for i in index])
    readings = Readings(device, sensor, ts, value, lines)
    return (readings.take(~bad) if bad.any() else readings), rejects


def _is_empty(array: pa.Array) -> np.ndarray:
    return np.asarray(pc.equal(array, "").fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _has_control(array: pa.Array) -> np.ndarray:
    found = pc.match_substring_regex(array, "[\\x00-\\x1f\\x7f]")
    return np.asarray(found.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _longer(array: pa.Array, limit: int) -> np.ndarray:
    return np.asarray(pc.greater(pc.utf8_length(array), limit).fill_null(False).to_numpy(zero_copy_only=False),
                      dtype=bool)


def window_starts(ts: np.ndarray, window_ns: int) -> np.ndarray:
    """The start of each reading's window (epoch-aligned floor), int64 ns."""
    return np.floor_divide(ts, window_ns) * window_ns


def series_codes(device: pa.Array, sensor: pa.Array) -> tuple[np.ndarray, list[str], list[str]]:
    """A small integer per (device, sensor) pair, and the pairs themselves (in code order)."""
    joined = pc.binary_join_element_wise(device, sensor, _SEP)
    encoded = joined.dictionary_encode()
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    pairs = [str(s).split(_SEP, 1) for s in encoded.dictionary.to_pylist()]
    return codes, [p[0] for p in pairs], [p[1] for p in pairs]


_INT64 = np.iinfo(np.int64)


class Lateness:
    """Allowed lateness: a reading whose window starts more than ``allowed_ns`` before the newest
    window of its series (stored before, or seen earlier in this ingest, in input order) is too late.

    ``lookup(devices, sensors)`` returns the newest stored window (ns or None) of series seen for the
    first time; the tracker keeps the watermarks of the series it has seen.
    """

    def __init__(self, allowed_ns: int, lookup: Callable[[list[str], list[str]], list[int | None]]) -> None:
        self.allowed_ns = min(max(int(allowed_ns), 0), _INT64.max)  # centuries of lateness: nothing is late
        self.lookup = lookup
        self.newest: dict[tuple[str, str], int] = {}

    def too_late(self, device: pa.Array, sensor: pa.Array, starts: np.ndarray) -> np.ndarray:
        """Mask of the readings (window starts in input order) that are too late; updates watermarks."""
        if len(starts) == 0:
            return np.zeros(0, dtype=bool)
        codes, devices, sensors = series_codes(device, sensor)
        unknown = [i for i, key in enumerate(zip(devices, sensors, strict=True)) if key not in self.newest]
        if unknown:
            stored = self.lookup([devices[i] for i in unknown], [sensors[i] for i in unknown])
            for i, newest in zip(unknown, stored, strict=True):
                self.newest[(devices[i], sensors[i])] = np.iinfo(np.int64).min if newest is None else newest
        prior = np.array([self.newest[key] for key in zip(devices, sensors, strict=True)], dtype=np.int64)
        running = pd.Series(starts).groupby(codes).cummax().to_numpy()
        watermark = np.maximum(prior[codes], running)
        # max(watermark - allowed, int64 min) without wrapping around below the smallest int64
        threshold = np.maximum(watermark, _INT64.min + self.allowed_ns) - self.allowed_ns
        late = starts < threshold
        last = pd.Series(np.where(late, np.iinfo(np.int64).min, starts)).groupby(codes).max()
        for code, newest in zip(last.index, last.to_numpy(), strict=True):
            key = (devices[code], sensors[code])
            self.newest[key] = max(self.newest[key], int(newest))
        return late


def aggregate(readings: Readings, window_ns: int | None) -> pa.Table:
    """Partial window aggregates of ``readings``: device, sensor, ts (timestamp[ns], window start),
    value (mean), value_min, value_max, value_count; one row per window.

    ``window_ns=None`` keeps each reading's own time (rows that are already windows).
    """
    starts = readings.ts if window_ns is None else window_starts(readings.ts, window_ns)
    table = pa.table({"device": readings.device, "sensor": readings.sensor, "ts": starts,
                      "v": readings.value})
    grouped = table.group_by(["device", "sensor", "ts"], use_threads=False).aggregate(
        [("v", "sum"), ("v", "min"), ("v", "max"), ("v", "count")]
    )
    count = grouped.column("v_count")
    return pa.table({
        "device": grouped.column("device"),
        "sensor": grouped.column("sensor"),
        "ts": grouped.column("ts").cast(pa.timestamp("ns")),
        "value": pc.divide(grouped.column("v_sum"), count.cast(pa.float64())),
        "value_min": grouped.column("v_min"),
        "value_max": grouped.column("v_max"),
        "value_count": count.cast(pa.int64()),
    })
