"""Replaying quarantined rows: the library function behind ``fleetscore quarantine replay``.

A row lands in quarantine with its raw text, its input's name and line, and the layout of that input
(``jsonl``, or ``csv:`` and the columns in file order). Replaying feeds the selected rows through the
same parsing, validation, lateness and windowing as ``fleetscore ingest``, under the settings given now
(a larger ``allowed_lateness``, a later ``now`` for readings that were ahead of the clock...). In ONE
transaction the replayed rows leave the quarantine and each ends either in a window count or back in
quarantine, under its original input name and line, with the reason that applies now: a crash leaves
the quarantine as it was, and no row is ever counted twice.

Rows whose stored text is not the row itself stay where they are, counted as ``kept`` with why: an
overlong line (only its first bytes were kept), text that was not UTF-8 (stored as a lossy decoding),
rows without text (the simulator's) and rows quarantined before the layout was recorded.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from fleetscore.ingestion.ingest import DEFAULT_MAX_FUTURE, InputIngest, InputReport, check_window
from fleetscore.ingestion.sources import FIELDS, MAX_LINE_BYTES, RAW_KEPT, Source, iter_chunks
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.write_lock import DEFAULT_LOCK_TIMEOUT
from fleetscore.ingestion.writer import StoreWriter, open_writer
from fleetscore.progress import ProgressCallback

log = logging.getLogger(__name__)

JSONL_LAYOUT = "jsonl"
_LOSSY = {"line_too_long": "only the first bytes of the line were kept",
          "not_utf8": "the stored text is a lossy decoding of bytes that were not UTF-8"}


def csv_layout(columns: Sequence[str]) -> str:
    """The layout recorded with a CSV input's quarantined rows: ``csv:`` and its columns in file order."""
    return "csv:" + ",".join(columns)


@dataclass(frozen=True)
class QuarantinedRow:
    """One row of the quarantine table, as replay reads it."""

    id: int
    source: str
    line: int
    raw: str
    reason: str
    layout: str | None


@dataclass
class ReplayReport:
    """What one replay did: rows selected, stored in windows, quarantined again (by the reason that
    applies now) and kept as they were (by why they cannot be replayed)."""

    database: str
    selected: int = 0
    ingested: int = 0
    windows_written: int = 0
    late_updates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def replayed(self) -> int:
        """Rows that went through ingestion again."""
        return self.selected - sum(self.kept.values())


def unreplayable(row: QuarantinedRow) -> str | None:
    """Why ``row`` cannot be replayed, or None when its stored text is the row itself."""
    if row.reason in _LOSSY:
        return _LOSSY[row.reason]
    if not row.raw.strip():
        return "no text of the row was kept"
    if row.layout is None or not (row.layout == JSONL_LAYOUT or row.layout.startswith("csv:")):
        return "its input's layout was not recorded"
    if "\n" in row.raw:
        return "its text spans several lines"
    if len(row.raw.encode("utf-8")) >= RAW_KEPT:
        return "only the first bytes of the line were kept"
    return None


def replay_quarantine(
    database_url: str,
    *,
    reasons: Sequence[str] = (),
    sources: Sequence[str] = (),
    window: timedelta = timedelta(seconds=5),
    aggregated: bool = False,
    allowed_lateness: timedelta = timedelta(hours=1),
    max_future: timedelta = DEFAULT_MAX_FUTURE,
    max_line_bytes: int = MAX_LINE_BYTES,
    batch_rows: int = 200_000,
    now: datetime | None = None,
    on_progress: ProgressCallback | None = None,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
) -> ReplayReport:
    """Ingest the quarantined rows with one of ``reasons`` from one of ``sources`` (every row when
    both are empty) again, in one transaction; see the module docstring.

    Raises :class:`fleetscore.errors.IngestError` when ``window`` is not the store's window size and
    :class:`fleetscore.errors.StoreError` when the store cannot be read or written.
    """
    store = SensorStore(database_url, lock_timeout=lock_timeout)
    store.create_schema()
    report = ReplayReport(database=database_url)
    with open_writer(store) as writer:
        rows = [QuarantinedRow(int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), r[5])
                for r in writer.quarantined_rows(reasons, sources)]
        report.selected = len(rows)
        groups: dict[tuple[str, str], list[QuarantinedRow]] = {}
        for row in rows:
            why = unreplayable(row)
            if why is not None:
                report.kept[why] = report.kept.get(why, 0) + 1
            else:
                groups.setdefault((row.source, str(row.layout)), []).append(row)
        if not groups:
            return report
        check_window(writer, window)
        writer.delete_quarantined([row.id for group in groups.values() for row in group])
        done = 0
        for (name, layout), group in groups.items():
            _replay_group(writer, report, name, layout, group, window=window, aggregated=aggregated,
                          allowed_lateness=allowed_lateness, max_future=max_future,
                          max_line_bytes=max_line_bytes, batch_rows=batch_rows, now=now)
            done += len(group)
            if on_progress is not None:
                on_progress(done, report.replayed)
    report.quarantined = dict(sorted(report.quarantined.items()))
    log.info("replayed %d quarantined rows: %d ingested, %d quarantined again", report.replayed,
             report.ingested, sum(report.quarantined.values()))
    return report


def _replay_group(writer: StoreWriter, report: ReplayReport, name: str, layout: str, group: list[QuarantinedRow], *,
                  window: timedelta, aggregated: bool, allowed_lateness: timedelta, max_future: timedelta,
                  max_line_bytes: int, batch_rows: int, now: datetime | None) -> None:
    """Replay the rows of one input and layout: line ``k`` of the rebuilt text is ``group[k - 1]``."""
    original = np.asarray([row.line for row in group], dtype=np.int64)
    entry = InputReport(name=name)
    feeder = InputIngest(writer, entry, window, aggregated, allowed_lateness, max_future, now, layout=layout,
                         line_of=lambda lines: original[np.asarray(lines, dtype=np.int64) - 1])
    data = "".join(row.raw + "\n" for row in group).encode("utf-8")
    if layout == JSONL_LAYOUT:
        fmt, columns = "jsonl", list(FIELDS)
    else:
        fmt, columns = "csv", layout[len("csv:"):].split(",")
    source = Source(name=f"{name} (quarantine replay)", stream=io.BytesIO(data), fmt=fmt, columns=columns,
                    probe=b"", header_lines=0, content_hash=None)
    for chunk in iter_chunks(source, batch_rows, max_line_bytes):
        feeder.add_raw(chunk)
    report.ingested += entry.rows_read - entry.quarantined_total
    report.windows_written += entry.windows_written
    report.late_updates += entry.late_updates
    for reason, count in entry.quarantined.items():
        report.quarantined[reason] = report.quarantined.get(reason, 0) + count
