"""Input readers: CSV or JSON lines, plain or gzip (by magic bytes), a file or standard input (``-``).

A source is read in blocks of whole lines (about ``batch_rows`` lines each), so files of any size
stream in bounded memory. Each block becomes a :class:`RawChunk`: the four fields as Arrow strings,
the line number of every row, and the rows that do not even have the right shape (rejected here with
``missing_field`` or ``extra_field``). Blank lines are skipped and not counted.

Accepted headers (CSV, any column order): ``TS,Device,Sensor,Value`` or ``TS,Device,Tag,Value``; JSON
lines use the same keys.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from fleetscore.errors import SourceReadError

log = logging.getLogger(__name__)

FIELDS = ("TS", "Device", "Sensor", "Value")
_ALIASES = {"ts": "TS", "device": "Device", "sensor": "Sensor", "tag": "Sensor", "value": "Value"}
_PROBE_BYTES = 1 << 16
_HASH_BLOCK = 1 << 20
MAX_LINE_BYTES = 1 << 20  # the [ingest] max_line_bytes default
_SKIP_BYTES = 1 << 20  # read size while skipping an overlong line
RAW_KEPT = 4096  # bytes of a rejected line's text kept in quarantine


@dataclass
class RawChunk:
    """One block of input rows, not yet validated. ``None`` in a field means the field is missing."""

    ts: pa.Array
    device: pa.Array
    sensor: pa.Array
    value: pa.Array
    lines: np.ndarray  # line number (1-based, in the whole input) of each row
    block: bytes  # the block's text, to recover the raw text of rejected rows
    first_line: int  # line number of the block's first line
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)  # (line, raw, reason, detail)
    rows_read: int = 0  # rows (non-blank lines) in the block, rejected ones included
    bytes_read: int = 0
    last_line: int = 0  # line number of the block's last line

    def after(self, done: int) -> RawChunk | None:
        """This chunk without its rows up to line ``done`` (committed by an earlier run); None when
        nothing is left."""
        if self.last_line and self.last_line <= done:
            return None
        if self.first_line > done:
            return self
        keep = self.lines > done
        rejected = [r for r in self.rejected if r[0] > done]
        dropped = int((~keep).sum()) + len(self.rejected) - len(rejected)
        mask = pa.array(keep)
        return RawChunk(ts=self.ts.filter(mask), device=self.device.filter(mask), sensor=self.sensor.filter(mask),
                        value=self.value.filter(mask), lines=self.lines[keep], block=self.block,
                        first_line=self.first_line, rejected=rejected, rows_read=self.rows_read - dropped,
                        bytes_read=self.bytes_read, last_line=self.last_line)

    def raw_lines(self, lines: np.ndarray) -> list[str]:
        """The raw text of the given line numbers of this block."""
        if len(lines) == 0:
            return []
        buf = np.frombuffer(self.block, np.uint8)
        ends = np.flatnonzero(buf == 10)
        starts = np.concatenate(([0], ends + 1))
        ends = np.concatenate((ends, [len(self.block)]))
        out = []
        for line in np.asarray(lines, dtype=np.int64):
            i = int(line) - self.first_line
            text = self.block[starts[i]:min(int(ends[i]), int(starts[i]) + RAW_KEPT)].decode("utf-8", errors="replace")
            out.append(text.rstrip("\r"))
        return out


@dataclass
class Source:
    """An opened input: its name (path or ``<stdin>``), decompressed stream, format and hash."""

    name: str
    stream: BinaryIO
    fmt: str  # "csv" or "jsonl"
    columns: list[str]  # CSV: the canonical field of each column, in file order
    probe: bytes  # bytes already read from ``stream`` (the first block starts with them)
    header_lines: int  # lines before the first data line (header, leading blank lines)
    content_hash: str | None  # sha256 of the raw input; None until read for standard input
    _hasher: Any = None
    size: int | None = None  # raw size in bytes when known (for progress)
    raw: Any = None  # the undecoded stream (its position drives progress)

    def position(self) -> int:
        """Raw bytes consumed so far (compressed bytes for gzip)."""
        if isinstance(self.raw, _HashingReader):
            return self.raw.count
        try:
            return int(self.raw.tell())
        except (OSError, ValueError, AttributeError):
            return 0

    def final_hash(self) -> str:
        """The content hash (for standard input, known once it has been read to the end)."""
        if self.content_hash is None:
            self.content_hash = self._hasher.hexdigest()
        return self.content_hash

    @property
    def layout(self) -> str:
        """How to read a quarantined row's text again: ``jsonl``, or ``csv:`` and the columns in file order."""
        return "jsonl" if self.fmt == "jsonl" else "csv:" + ",".join(self.columns)

    def close(self) -> None:
        """Close the underlying stream (not standard input itself)."""
        if self.name != "<stdin>":
            self.stream.close()


class _HashingReader(io.RawIOBase):
    """Reads from a binary stream and hashes what it read (for standard input, read only once)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hasher.update(data)
        self.count += n
        return n


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def open_source(path: str, stdin: BinaryIO | None = None) -> Source:
    """Open ``path`` (``-`` for standard input), detect gzip, the format and the header.

    Raises :class:`SourceReadError` naming the input when it is missing, unreadable, empty, not CSV or
    JSON lines, or has an unknown header.
    """
    hasher = None
    size = None
    if path == "-":
        name = "<stdin>"
        raw_in: Any = stdin if stdin is not None else sys.stdin.buffer
        reader = _HashingReader(raw_in)
        hasher = reader.hasher
        position_of: Any = reader
        raw: BinaryIO = io.BufferedReader(reader, buffer_size=_PROBE_BYTES)
        content_hash = None
    else:
        name = path
        file = Path(path)
        try:
            if file.is_dir():
                raise SourceReadError(f"{path}: is a directory")
            content_hash = file_hash(file)
            size = file.stat().st_size
            raw = file.open("rb")
            position_of = raw
        except FileNotFoundError as exc:
            raise SourceReadError(f"{path}: no such file") from exc
        except PermissionError as exc:
            raise SourceReadError(f"{path}: permission denied") from exc
        except OSError as exc:
            raise SourceReadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        stream: BinaryIO = raw
        if magic == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        probe = _read(stream, _PROBE_BYTES, name)
        fmt, columns, header_lines = _detect(probe, name)
    except SourceReadError:
        if path != "-":
            raw.close()
        raise
    return Source(name=name, stream=stream, fmt=fmt, columns=columns, probe=probe, header_lines=header_lines,
                  content_hash=content_hash, _hasher=hasher, size=size, raw=position_of)


def _read(stream: BinaryIO, size: int, name: str) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceReadError(f"{name}: cannot read: {' '.join(str(exc).split())}") from exc


def _detect(probe: bytes, name: str) -> tuple[str, list[str], int]:
    """Format, CSV columns and the number of lines before the data, from the first bytes."""
    text = probe
    if text.startswith(b"\xef\xbb\xbf"):
        raise SourceReadError(f"{name}: starts with a UTF-8 byte-order mark; save it without one")
    lines = text.split(b"\n")
    for index, line in enumerate(lines):
        if index == len(lines) - 1 and len(text) >= _PROBE_BYTES:
            break  # an incomplete line at the end of the probe
        stripped = line.strip()
        if not stripped:
            continue
        if b"\x00" in stripped:  # in the header: a binary file (a NUL in a data row is that row's fault)
            raise SourceReadError(f"{name}: not CSV or JSON lines (binary data)")
        try:
            decoded = stripped.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceReadError(f"{name}: not CSV or JSON lines (not UTF-8 text)") from exc
        if decoded.startswith("{"):
            return "jsonl", list(FIELDS), index
        names = [c.strip().strip('"').strip() for c in decoded.split(",")]
        canonical = [_ALIASES.get(c.lower()) for c in names]
        if len(names) == 4 and None not in canonical and sorted(canonical) == sorted(FIELDS):  # type: ignore[type-var]
            return "csv", [str(c) for c in canonical], index + 1
        shown = decoded if len(decoded) <= 80 else decoded[:77] + "..."
        raise SourceReadError(
            f"{name}: unknown header {shown!r} (expected TS,Device,Sensor,Value or TS,Device,Tag,Value)"
        )
    if not probe.strip():
        raise SourceReadError(f"{name}: empty input (no header)")
    raise SourceReadError(f"{name}: not CSV or JSON lines (no line break in the first {_PROBE_BYTES} bytes)")


def iter_chunks(source: Source, batch_rows: int, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[RawChunk]:
    """Read ``source`` in blocks of about ``batch_rows`` lines; yields one :class:`RawChunk` per block.

    Lines that cannot be rows are rejected here, each on its own, never costing the rest of the block:
    ``line_too_long`` (over ``max_line_bytes``; skipped in blocks, never held whole), ``not_utf8`` and
    ``bad_row`` (a carriage return inside the row)."""
    probe = source.probe
    skip = source.header_lines
    consumed = 0
    if skip:
        cut = 0
        for _ in range(skip):
            cut = probe.index(b"\n", cut) + 1
        consumed = cut
        probe = probe[cut:]
    newlines = probe.count(b"\n")
    bytes_per_line = max(8, len(probe) // max(newlines, 1))
    block_bytes = max(_PROBE_BYTES, batch_rows * bytes_per_line)
    line = skip + 1
    carry = probe
    eof = False
    while not eof:
        # never fewer than _PROBE_BYTES at a time: a long line grows the carry, not the number of reads
        data = _read(source.stream, max(block_bytes - len(carry), _PROBE_BYTES), source.name)
        eof = not data
        block = carry + data
        if not eof:
            cut = block.rfind(b"\n")
            if cut < 0:
                if len(block) > max_line_bytes:
                    carry, eof, length = _skip_line(source, block)
                    yield replace(_overlong(block[:RAW_KEPT], line, length, max_line_bytes), last_line=line)
                    line += 1
                    continue
                carry = block
                continue
            block, carry = block[: cut + 1], block[cut + 1 :]
        else:
            carry = b""
        if not block:
            break
        clean, screened = _screen(block, line, max_line_bytes)
        if source.fmt == "csv":
            chunk = _parse_csv(clean, line, source.columns, source.name)
        else:
            chunk = _parse_jsonl(clean, line)
        if screened:
            chunk.block = block
            chunk.rejected = screened + chunk.rejected
            chunk.rows_read += len(screened)
        chunk.bytes_read = consumed + len(block)
        consumed = 0
        line += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        chunk.last_line = line - 1
        yield chunk


def _skip_line(source: Source, head: bytes) -> tuple[bytes, bool, int]:
    """Read past the end of an overlong line that starts with ``head`` (no newline in it); returns what
    follows the line, whether the input ended, and the line's length in bytes."""
    length = len(head)
    while True:
        data = _read(source.stream, _SKIP_BYTES, source.name)
        if not data:
            return b"", True, length
        cut = data.find(b"\n")
        if cut >= 0:
            return data[cut + 1:], False, length + cut
        length += len(data)


def _overlong(head: bytes, line: int, length: int, limit: int) -> RawChunk:
    """The chunk of one overlong line: nothing but its rejection (the block keeps the line's start)."""
    empty = pa.array([], pa.string())
    detail = f"{length:,} bytes or more, longer than max_line_bytes {limit:,}"
    return RawChunk(ts=empty, device=empty, sensor=empty, value=empty, lines=np.empty(0, np.int64), block=head,
                    first_line=line, rejected=[(line, "", "line_too_long", detail)], rows_read=1)


def _screen(block: bytes, first_line: int, max_line_bytes: int) -> tuple[bytes, list[tuple[int, str, str, str]]]:
    """The block with every line that cannot be a row blanked out (its line break kept, so the line
    numbers stay), and those lines' rejections."""
    bad: dict[int, tuple[str, str]] = {}
    starts, ends, lengths = _line_bounds(block)
    if len(block) > max_line_bytes:
        for big in np.flatnonzero(lengths > max_line_bytes).tolist():
            bad[big] = ("line_too_long", f"{int(lengths[big]):,} bytes, longer than max_line_bytes {max_line_bytes:,}")
    if b"\r" in block:
        buf = np.frombuffer(block, np.uint8)
        cr = np.flatnonzero(buf == 13)
        inner = cr[(cr + 1 < len(buf)) & (buf[np.minimum(cr + 1, len(buf) - 1)] != 10)]
        for row in np.unique(np.searchsorted(ends, inner)).tolist():
            if row < len(starts) and lengths[row] > 0:
                bad.setdefault(row, ("bad_row", "carriage return inside the row"))
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as exc:  # the slow way from the first bad line on: each line on its own
        for k in range(int(np.searchsorted(ends, exc.start)), len(starts)):
            try:
                block[starts[k]:ends[k]].decode("utf-8")
            except UnicodeDecodeError as line_exc:
                bad.setdefault(k, ("not_utf8", f"byte 0x{block[starts[k] + line_exc.start]:02x} at column "
                                               f"{line_exc.start + 1} is not UTF-8"))
    if not bad:
        return block, []
    pieces, kept_from = [], 0
    rejected = []
    for line in sorted(bad):
        pieces.append(block[kept_from:starts[line]])
        kept_from = int(ends[line])
        reason, detail = bad[line]
        rejected.append((first_line + line, "", reason, detail))
    pieces.append(block[kept_from:])
    return b"".join(pieces), rejected


def _line_bounds(block: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(block)]))
    if block.endswith(b"\n"):
        starts, ends = starts[:-1], ends[:-1]
    lengths = ends - starts
    has_cr = np.zeros(len(ends), dtype=bool)
    nonempty = lengths > 0
    has_cr[nonempty] = buf[ends[nonempty] - 1] == 13
    return starts, ends, lengths - has_cr


def _parse_csv(block: bytes, first_line: int, columns: list[str], name: str) -> RawChunk:
    fast = _parse_csv_fast(block, first_line, columns)
    if fast is not None:
        return fast
    starts, ends, lengths = _line_bounds(block)
    n = len(starts)
    if b'"' in block:
        return _parse_csv_slow(block, first_line, columns, starts, ends, lengths)
    buf = np.frombuffer(block, np.uint8)
    comma_line = np.searchsorted(ends, np.flatnonzero(buf == 44))
    commas = np.bincount(comma_line, minlength=n)[:n]
    blank = lengths == 0
    good = ~blank & (commas == 3)
    rejected: list[tuple[int, str, str, str]] = []
    if good.all():
        clean = block
    else:
        for i in np.flatnonzero(~blank & ~good):
            raw = block[starts[i]:ends[i]].decode("utf-8", errors="replace").rstrip("\r")
            reason = "missing_field" if commas[i] < 3 else "extra_field"
            rejected.append((first_line + int(i), raw, reason, f"{commas[i] + 1} fields, expected 4"))
        clean = b"\n".join(block[starts[i]:ends[i]] for i in np.flatnonzero(good))
    lines = first_line + np.flatnonzero(good).astype(np.int64)
    if len(lines):
        table = _read_csv_block(clean, columns)
        if table.num_rows != len(lines):
            raise SourceReadError(f"{name}: lines {first_line}-{first_line + n - 1}: cannot be parsed as CSV")
        cols = {c: table.column(c).combine_chunks() for c in columns}
    else:
        cols = {c: pa.array([], pa.string()) for c in columns}
    return RawChunk(ts=cols["TS"], device=cols["Device"], sensor=cols["Sensor"], value=cols["Value"],
                    lines=lines, block=block, first_line=first_line, rejected=rejected,
                    rows_read=int((~blank).sum()))


def _read_csv_block(data: bytes, columns: list[str]) -> pa.Table:
    return pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=columns, block_size=max(len(data) + 1, 1 << 20)),
        parse_options=pa_csv.ParseOptions(),
        convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string()),
                                              strings_can_be_null=False, quoted_strings_can_be_null=False),
    )


def _parse_csv_fast(block: bytes, first_line: int, columns: list[str]) -> RawChunk | None:
    """A block without blank lines or quotes whose every line has four fields: Arrow alone."""
    if b'"' in block or b"\n\n" in block or b"\n\r\n" in block or block.startswith((b"\n", b"\r\n")):
        return None
    n = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
    try:
        table = _read_csv_block(block, columns)
    except pa.ArrowInvalid:
        return None  # a row of the wrong length: the careful path finds it
    if table.num_rows != n:
        return None
    cols = {c: table.column(c).combine_chunks() for c in columns}
    return RawChunk(ts=cols["TS"], device=cols["Device"], sensor=cols["Sensor"], value=cols["Value"],
                    lines=np.arange(first_line, first_line + n, dtype=np.int64), block=block,
                    first_line=first_line, rows_read=n)


def _parse_csv_slow(block: bytes, first_line: int, columns: list[str], starts: np.ndarray,
                    ends: np.ndarray, lengths: np.ndarray) -> RawChunk:
    """Quoted fields: the csv module, line by line (quoted line breaks are not supported)."""
    values: dict[str, list[str]] = {c: [] for c in columns}
    lines: list[int] = []
    rejected: list[tuple[int, str, str, str]] = []
    rows = 0
    for i in range(len(starts)):
        if lengths[i] == 0:
            continue
        rows += 1
        raw = block[starts[i]:ends[i]].decode("utf-8", errors="replace").rstrip("\r")
        fields = next(csv.reader([raw]))
        if len(fields) != 4:
            reason = "missing_field" if len(fields) < 4 else "extra_field"
            rejected.append((first_line + i, raw, reason, f"{len(fields)} fields, expected 4"))
            continue
        for column, text in zip(columns, fields, strict=True):
            values[column].append(text)
        lines.append(first_line + i)
    return RawChunk(ts=pa.array(values["TS"], pa.string()), device=pa.array(values["Device"], pa.string()),
                    sensor=pa.array(values["Sensor"], pa.string()), value=pa.array(values["Value"], pa.string()),
                    lines=np.asarray(lines, dtype=np.int64), block=block, first_line=first_line,
                    rejected=rejected, rows_read=rows)


def _parse_jsonl(block: bytes, first_line: int) -> RawChunk:
    starts, ends, lengths = _line_bounds(block)
    nonblank = np.flatnonzero(lengths > 0)
    clean = block if len(nonblank) == len(starts) else b"\n".join(block[starts[i]:ends[i]] for i in nonblank)
    lines = first_line + nonblank.astype(np.int64)
    fast = _jsonl_arrow(clean, len(nonblank))
    if fast is not None:
        return RawChunk(*fast, lines=lines, block=block, first_line=first_line, rows_read=len(nonblank))
    values: dict[str, list[str | None]] = {f: [] for f in FIELDS}
    good: list[int] = []
    rejected: list[tuple[int, str, str, str]] = []
    for i in nonblank:
        raw = block[starts[i]:ends[i]].decode("utf-8", errors="replace").rstrip("\r")
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            rejected.append((first_line + int(i), raw, "bad_row", f"not JSON: {exc.msg}"))
            continue
        if not isinstance(record, dict):
            rejected.append((first_line + int(i), raw, "bad_row", "not a JSON object"))
            continue
        for key in FIELDS:
            found = record.get(key)
            if found is None and key == "Sensor":
                found = record.get("Tag")
            values[key].append(None if found is None else found if isinstance(found, str) else json.dumps(found))
        good.append(first_line + int(i))
    return RawChunk(ts=pa.array(values["TS"], pa.string()), device=pa.array(values["Device"], pa.string()),
                    sensor=pa.array(values["Sensor"], pa.string()), value=pa.array(values["Value"], pa.string()),
                    lines=np.asarray(good, dtype=np.int64), block=block, first_line=first_line,
                    rejected=rejected, rows_read=len(nonblank))


def _jsonl_arrow(clean: bytes, expected: int) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array] | None:
    """Parse with Arrow when every line is a flat object of simple values; ``None`` to fall back."""
    if expected == 0:
        return None
    try:
        table = pa_json.read_json(io.BytesIO(clean))
    except pa.ArrowInvalid:
        return None
    if table.num_rows != expected:
        return None
    out = []
    for key in FIELDS:
        name = key if key in table.column_names else "Tag" if key == "Sensor" and "Tag" in table.column_names \
            else None
        if name is None:
            out.append(pa.nulls(expected, pa.string()))
            continue
        column = table.column(name).combine_chunks()
        if pa.types.is_nested(column.type) or pa.types.is_boolean(column.type):
            return None
        if pa.types.is_timestamp(column.type):
            return None  # keep the text as written
        if key == "Sensor" and name == "Sensor" and "Tag" in table.column_names:
            return None
        out.append(column.cast(pa.string()))
    return out[0], out[1], out[2], out[3]
