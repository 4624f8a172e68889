"""Ingestion of readings into the sensor store: the library function behind ``fleetscore ingest``.

A file is committed in parts (``commit_every``) with its progress in ``partial_sources``; the last
part adds its ``sources`` row (content hash), so re-ingesting the same input adds nothing and a rerun
after a crash resumes after the committed part, counting nothing twice (:mod:`ingestion.partial_inputs`).
Standard input is one transaction.
One input that cannot be read does not stop the others; errors are raised after every input was
handled, carrying the report.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from fleetscore.errors import IngestError, SourceReadError, TooManyBadRowsError
from fleetscore.ingestion.partial_inputs import (
    PartialInput,
    drop_partial,
    load_partial,
    partials_named,
    save_partial,
)
from fleetscore.ingestion.sources import MAX_LINE_BYTES, RawChunk, Source, iter_chunks, open_source
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.ingestion.windowing import (
    BEYOND,
    Lateness,
    Readings,
    Rejects,
    aggregate,
    validate,
    window_starts,
)
from fleetscore.ingestion.write_lock import DEFAULT_LOCK_TIMEOUT
from fleetscore.ingestion.writer import StoreWriter, make_way, open_writer
from fleetscore.processes import this_process
from fleetscore.progress import ProgressCallback

log = logging.getLogger(__name__)

DEFAULT_MAX_FUTURE = timedelta(days=1)
DEFAULT_COMMIT_EVERY = timedelta(seconds=10)
_SAFE_ABS = 1e300  # below this no sum of a window's readings can overflow (far fewer than 1e8 per window)
RawLookup = Callable[[np.ndarray], list[str]]


@dataclass
class InputReport:
    """What happened to one input: ``ingested``, ``skipped`` (already ingested) or ``failed``."""

    name: str
    status: str = "ingested"
    rows_read: int = 0
    windows_written: int = 0
    late_updates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def quarantined_total(self) -> int:
        """Rows of this input sent to quarantine."""
        return sum(self.quarantined.values())

    @property
    def bad_fraction(self) -> float:
        """Share of this input's rows that went to quarantine."""
        return self.quarantined_total / self.rows_read if self.rows_read else 0.0


@dataclass
class IngestReport:
    """The summary of one ingest run, input by input."""

    inputs: list[InputReport] = field(default_factory=list)
    database: str = ""

    def total(self, attribute: str) -> int:
        """Sum of an integer attribute over the inputs that were ingested."""
        return sum(int(getattr(i, attribute)) for i in self.inputs if i.status == "ingested")

    @property
    def quarantined(self) -> dict[str, int]:
        """Quarantined rows by reason, over all inputs."""
        out: dict[str, int] = {}
        for item in self.inputs:
            for reason, count in item.quarantined.items():
                out[reason] = out.get(reason, 0) + count
        return dict(sorted(out.items()))


class InputsUnreadable(SourceReadError):
    """At least one input could not be read at all; the others were ingested (see ``report``)."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


class TooManyBadRows(TooManyBadRowsError):
    """An input's share of quarantined rows passed the limit; its good rows were stored."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


class _AlreadyIngested(Exception):
    """Raised inside a writer to roll back an input whose hash is known only at its end (stdin)."""


class InputIngest:
    """Feeds chunks of one input into one :class:`StoreWriter`: lateness, windows, quarantine."""

    def __init__(self, writer: StoreWriter, report: InputReport, window: timedelta, aggregated: bool,
                 allowed_lateness: timedelta, max_future: timedelta = DEFAULT_MAX_FUTURE,
                 now: datetime | None = None, layout: str | None = None,
                 line_of: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """``layout`` is recorded with the quarantined rows (see :attr:`Source.layout`); ``line_of`` maps
        the line numbers of the text fed in to the ones recorded (a replay's original lines)."""
        self.writer = writer
        self.layout = layout
        self.line_of = line_of
        self.report = report
        self.window_ns = int(window.total_seconds() * 1e9)
        self.aggregated = aggregated
        self.lateness = Lateness(int(allowed_lateness.total_seconds() * 1e9), writer.newest_windows)
        self.max_future = max_future
        self.horizon_ns = min(_ns(now or utcnow()) + _ns_of(max_future), BEYOND - 1)

    def add(self, readings: Readings, rejects: Rejects, raw_lookup: RawLookup, rows_read: int) -> None:
        """Store one chunk of validated readings and its rejected rows."""
        self.report.rows_read += rows_read
        ahead = readings.ts > self.horizon_ns
        if ahead.any():  # before lateness: a reading from the future never moves its series' watermark
            rejects.extend(readings.lines[ahead], "too_far_ahead",
                           [f"more than {_span(self.max_future)} after the time of ingest"] * int(ahead.sum()))
            readings = readings.take(~ahead)
        readings = _drop_overflow(readings, rejects, None if self.aggregated else self.window_ns)
        starts = readings.ts if self.aggregated else window_starts(readings.ts, self.window_ns)
        late = self.lateness.too_late(readings.device, readings.sensor, starts)
        if late.any():
            window_s = self.lateness.allowed_ns / 1e9
            rejects.extend(readings.lines[late], "too_late",
                           [f"more than {window_s:g}s behind the newest window of its series"] * int(late.sum()))
            readings = readings.take(~late)
        merged = self.writer.merge_windows(aggregate(readings, None if self.aggregated else self.window_ns))
        self.report.windows_written += merged.created
        self.report.late_updates += merged.late_updates
        if rejects.lines:
            lines = np.asarray(rejects.lines, dtype=np.int64)
            recorded = rejects.lines if self.line_of is None else self.line_of(lines).tolist()
            self.writer.quarantine(self.report.name, recorded, raw_lookup(lines), rejects.reasons,
                                   rejects.details, self.layout)
            for reason in rejects.reasons:
                self.report.quarantined[reason] = self.report.quarantined.get(reason, 0) + 1

    def add_raw(self, chunk: RawChunk) -> None:
        """Validate and store one raw chunk."""
        readings, rejects = validate(chunk)
        self.add(readings, rejects, chunk.raw_lines, chunk.rows_read)

    def finish(self, content_hash: str, window: timedelta) -> None:
        """Record the input in ``sources`` (same transaction)."""
        self.writer.add_source(content_hash, self.report.name, self.report.rows_read, window.total_seconds(),
                               self.report.windows_written, self.report.late_updates,
                               self.report.quarantined_total)


def _ns(moment: datetime) -> int:
    return _ns_of(moment - datetime(1970, 1, 1))


def _ns_of(delta: timedelta) -> int:
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) * 1000


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _drop_overflow(readings: Readings, rejects: Rejects, window_ns: int | None) -> Readings:
    """Quarantine (``overflow``) the readings of every window whose sum is not finite (two readings of
    1.7e308): the stored mean would be ``inf``."""
    if len(readings) == 0 or np.abs(readings.value).max() < _SAFE_ABS:
        return readings
    windows = aggregate(readings, window_ns)
    bad = ~np.isfinite(np.asarray(windows.column("value").to_numpy(), dtype=np.float64))
    if not bad.any():
        return readings
    starts = readings.ts if window_ns is None else window_starts(readings.ts, window_ns)
    keys = set(zip(windows.column("device").filter(pa.array(bad)).to_pylist(),
                   windows.column("sensor").filter(pa.array(bad)).to_pylist(),
                   np.asarray(windows.column("ts").cast(pa.int64()).to_numpy())[bad].tolist(), strict=True))
    hit = np.array([k in keys for k in zip(readings.device.to_pylist(), readings.sensor.to_pylist(),
                                            starts.tolist(), strict=True)], dtype=bool)
    rejects.extend(readings.lines[hit], "overflow", ["the window's sum is not a finite number"] * int(hit.sum()))
    return readings.take(~hit)


def check_window(writer: StoreWriter, window: timedelta) -> None:
    """Refuse to mix window sizes in one store."""
    sizes = [s for s in writer.source_windows() if s > 0]
    if sizes and any(abs(s - window.total_seconds()) > 1e-9 for s in sizes):
        held = ", ".join(f"{s:g}s" for s in sorted(sizes))
        raise IngestError(
            f"window {window.total_seconds():g}s: the store already holds {held} windows; "
            "use the same --window or another database_url"
        )


def ingest_files(
    database_url: str,
    paths: Sequence[str],
    *,
    window: timedelta = timedelta(seconds=5),
    aggregated: bool = False,
    allowed_lateness: timedelta = timedelta(hours=1),
    max_bad_fraction: float = 0.01,
    batch_rows: int = 200_000,
    stdin: BinaryIO | None = None,
    on_progress: ProgressCallback | None = None,
    max_future: timedelta = DEFAULT_MAX_FUTURE,
    max_line_bytes: int = MAX_LINE_BYTES,
    now: datetime | None = None,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
    commit_every: timedelta = DEFAULT_COMMIT_EVERY,
) -> IngestReport:
    """Ingest CSV / JSON-lines inputs (``-`` is standard input, gzip detected) into the store.

    Raises, after every input was handled: :class:`InputsUnreadable` when an input could not be read
    (naming the first), :class:`TooManyBadRows` when an input's quarantined share passes
    ``max_bad_fraction``. Both carry the report; everything good was committed. Readings later than
    ``now`` (default: the current time) plus ``max_future`` are quarantined as ``too_far_ahead``; a line
    longer than ``max_line_bytes`` as ``line_too_long``. A SQLite writer waits up to ``lock_timeout``
    for the write lock (:class:`ingestion.write_lock.StoreLockTimeout` after it). A file is committed
    every ``commit_every`` (other writers get the lock between its parts); a rerun after a crash resumes
    after its committed part (:mod:`ingestion.partial_inputs`).
    """
    options = _Options(window, aggregated, allowed_lateness, max_future, now, batch_rows, max_line_bytes,
                       commit_every)
    store = SensorStore(database_url, lock_timeout=lock_timeout)
    store.create_schema()
    report = IngestReport(database=database_url)
    total = sum(_size(path) for path in paths)
    done = 0
    for path in paths:
        entry = InputReport(name="<stdin>" if path == "-" else path)
        report.inputs.append(entry)
        try:
            source = open_source(path, stdin)
        except SourceReadError as exc:
            entry.status, entry.error = "failed", str(exc)
            log.info("%s", exc)
            continue
        try:
            start_done = done

            def advance(position: int, start: int = start_done) -> None:
                nonlocal done
                if on_progress is not None:
                    done = start + position
                    on_progress(done, total)

            _ingest_input(store, source, entry, options, advance)
        except _AlreadyIngested:
            entry.status = "skipped"
        except SourceReadError as exc:
            entry.status, entry.error = "failed", str(exc)
            log.info("%s", exc)
        finally:
            source.close()
        if entry.status != "ingested":
            entry.rows_read, entry.windows_written, entry.late_updates, entry.quarantined = 0, 0, 0, {}
    _raise_for(report, max_bad_fraction)
    return report


@dataclass(frozen=True)
class _Options:
    window: timedelta
    aggregated: bool
    allowed_lateness: timedelta
    max_future: timedelta
    now: datetime | None
    batch_rows: int
    max_line_bytes: int
    commit_every: timedelta


class _TakenOver(SourceReadError):
    """Another ingest owns the committed part of this input."""


def _ingest_input(store: SensorStore, source: Source, entry: InputReport, options: _Options,
                  advance: Callable[[int], None]) -> None:
    """Ingest one opened input: in parts committed every ``commit_every`` when its hash is known up front
    (a file), resuming after the committed part of an ingest of it that stopped; else in one transaction."""
    known = source.content_hash
    found = _committed_before(store, known, entry, options)
    if found is None:
        return
    part, adopted = found
    stamp, done_line, me = None, 0, this_process()
    owner = None  # who the input's row in partial_sources belongs to (None: there is none)
    resumed = part or adopted
    if resumed is not None:
        stamp, done_line = _resume(entry, resumed)
        owner = part.owner if part is not None else None
    prefix = hashlib.sha256()  # of the blocks read so far (see partial_inputs.PartialInput.prefix_sha256)
    unverified = adopted  # nothing is committed before the earlier version's lines are found the same
    chunks = iter_chunks(source, options.batch_rows, options.max_line_bytes)
    try:
        while True:
            with open_writer(store, stamp) as writer:
                if known is not None:
                    _check_owner(writer, known, owner, entry.name)
                stamp = writer.stamp
                feeder = InputIngest(writer, entry, options.window, options.aggregated, options.allowed_lateness,
                                     options.max_future, options.now, layout=source.layout)
                until = time.monotonic() + options.commit_every.total_seconds()
                for raw in chunks:
                    prefix.update(raw.block)
                    if unverified is not None and raw.last_line >= unverified.lines_done:
                        _check_prefix(unverified, raw.last_line, prefix.hexdigest(), entry.name)
                        unverified = None
                    chunk = raw.after(done_line)
                    done_line = max(done_line, raw.last_line)
                    if chunk is not None:
                        feeder.add_raw(chunk)
                    advance(source.position())
                    if known is not None and unverified is None and time.monotonic() >= until:
                        _forget(writer, adopted)
                        adopted = None
                        save_partial(writer, PartialInput(known, entry.name, me, done_line, entry.rows_read,
                                                          entry.windows_written, entry.late_updates,
                                                          dict(entry.quarantined), stamp, utcnow(),
                                                          prefix.hexdigest()))
                        break
                else:
                    content_hash = source.final_hash()
                    if writer.has_source(content_hash):
                        raise _AlreadyIngested
                    feeder.finish(content_hash, options.window)
                    _forget(writer, adopted)
                    if known is not None:
                        drop_partial(writer, known)
                    return
            owner = me
            make_way(store)
    except SourceReadError as exc:
        if owner is None or isinstance(exc, _TakenOver):
            raise
        raise SourceReadError(f"{exc}; the part read before is stored and a rerun resumes after it") from exc


def _committed_before(store: SensorStore, known: str | None, entry: InputReport,
                      options: _Options) -> tuple[PartialInput | None, PartialInput | None] | None:
    """What of this input is committed already: None when it was ingested whole (``skipped``), else its
    own committed part and that of an earlier version of the same file (it grew, or was rewritten)
    whose ingest stopped part-way. Either one of a live ingest: :class:`_TakenOver`."""
    with open_writer(store) as writer:
        if known is not None and writer.has_source(known):
            entry.status = "skipped"
            return None
        check_window(writer, options.window)
        part = load_partial(writer, known) if known is not None else None
        earlier = [p for p in partials_named(writer, entry.name) if p.content_hash != known] \
            if known is not None and part is None else []
    adopted = earlier[0] if earlier else None
    for held in (part, adopted):
        if held is not None and held.taken(options.commit_every):
            raise _TakenOver(f"{entry.name}: being ingested by {held.owner} (committed up to line "
                             f"{held.lines_done:,}); run again when it is done")
    return part, adopted


def _resume(entry: InputReport, part: PartialInput) -> tuple[datetime, int]:
    """Take the counts of a committed part; its stamp and last line."""
    log.info("%s: resuming after line %d, committed by an ingest that stopped", entry.name, part.lines_done)
    entry.rows_read, entry.windows_written = part.rows, part.windows_written
    entry.late_updates, entry.quarantined = part.late_updates, dict(part.quarantined)
    return part.stamp, part.lines_done


def _check_prefix(earlier: PartialInput, last_line: int, digest: str, name: str) -> None:
    """A changed file is resumed only when its first lines are, byte for byte, the ones committed."""
    if last_line != earlier.lines_done or digest != earlier.prefix_sha256:
        raise SourceReadError(
            f"{name}: changed since an ingest of it stopped after line {earlier.lines_done:,}, and its first "
            f"{earlier.lines_done:,} lines are not the ones stored; ingest the earlier version again to finish it")


def _forget(writer: StoreWriter, adopted: PartialInput | None) -> None:
    """Drop the committed part of the earlier version this ingest took over (its rows are counted here)."""
    if adopted is not None:
        drop_partial(writer, adopted.content_hash)


def _check_owner(writer: StoreWriter, content_hash: str, expected: str | None, name: str) -> None:
    """Before each part: the input's row in ``partial_sources`` is still the one this ingest left (or
    resumed from): no other ingest of the same input started meanwhile."""
    part = load_partial(writer, content_hash)
    found = None if part is None else part.owner
    if found != expected:
        who = "another ingest" if part is None else part.owner
        raise _TakenOver(f"{name}: being ingested by {who}; run again when it is done")


def _size(path: str) -> int:
    if path == "-":
        return 0
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _raise_for(report: IngestReport, max_bad_fraction: float) -> None:
    failed = [i for i in report.inputs if i.status == "failed"]
    if failed:
        more = f" (and {len(failed) - 1} more unreadable)" if len(failed) > 1 else ""
        raise InputsUnreadable(f"{failed[0].error}{more}", report)
    for item in report.inputs:
        if item.status == "ingested" and item.bad_fraction > max_bad_fraction:
            raise TooManyBadRows(
                f"{item.name}: {item.quarantined_total:,} of {item.rows_read:,} rows quarantined "
                f"({item.bad_fraction:.1%}), more than --max-bad-fraction {max_bad_fraction:g}; "
                "good rows were stored, see the quarantine table",
                report,
            )


def ingest_readings(
    store: SensorStore,
    name: str,
    content_hash: str,
    batches: Iterable[Readings],
    *,
    window: timedelta,
    allowed_lateness: timedelta = timedelta(hours=1),
    max_future: timedelta = DEFAULT_MAX_FUTURE,
) -> InputReport:
    """Ingest readings generated in memory (the simulator) as one input named ``name``; skipped when an
    input with ``content_hash`` was ingested before."""
    store.create_schema()
    entry = InputReport(name=name)
    no_raw: RawLookup = lambda lines: [""] * len(lines)  # noqa: E731
    with open_writer(store) as writer:
        if writer.has_source(content_hash):
            entry.status = "skipped"
            return entry
        check_window(writer, window)
        feeder = InputIngest(writer, entry, window, False, allowed_lateness, max_future)
        for readings in batches:
            feeder.add(readings, Rejects([], [], []), no_raw, len(readings))
        feeder.finish(content_hash, window)
    return entry
