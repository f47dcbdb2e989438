"""PostgreSQL binary COPY blocks built with numpy, for the telemetry hot path.

A binary COPY stream is a signature, then per row an int16 field count and per field an
int32 length (-1 for NULL) followed by that many bytes, then an int16 -1 trailer; integers
and floats are big-endian. Formatting that per row in Python costs more than the database
spends storing the row (see the performance notes: 317 k rows/s from a numpy block against
190 k with ``write_row``), so the block is assembled column by column: each column's bytes
are scattered into one preallocated buffer at offsets computed with ``cumsum``.

``fix_block`` and ``lock_event_block`` turn a batch of telemetry into such a block, in the
column order of ``FIX_COPY_COLUMNS`` / ``LOCK_EVENT_COPY_COLUMNS``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from telemetry.errors import StoreError
from telemetry.models import Fix, LockEvent
from telemetry.store import _rows as R

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"


@dataclass(frozen=True, slots=True)
class FixedColumn:
    """A fixed-width column: ``values`` in a big-endian dtype (``>i8``, ``>f8``, ...), and
    ``null`` True where the field is NULL (None when nothing is)."""

    values: npt.NDArray[np.generic]
    null: npt.NDArray[np.bool_] | None = None


@dataclass(frozen=True, slots=True)
class BytesColumn:
    """A variable-width column (text, json, bytea): the encoded bytes, None for NULL."""

    parts: Sequence[bytes | None]


Column = FixedColumn | BytesColumn


def int64_column(values: Sequence[int]) -> FixedColumn:
    return FixedColumn(np.asarray(values, dtype=np.int64).astype(">i8"))


def float64_column(values: Sequence[float | None], *, nullable: bool = True) -> FixedColumn:
    """Floats; None and NaN become NULL (as SQLite stores them)."""
    arr = np.array(values, dtype=np.float64)  # None -> nan
    null = np.isnan(arr) if nullable else None
    return FixedColumn(arr.astype(">f8"), null if null is not None and null.any() else None)


def optional_int64_column(values: Sequence[int | None]) -> FixedColumn:
    null = np.fromiter((v is None for v in values), dtype=np.bool_, count=len(values))
    filled = [0 if v is None else v for v in values] if null.any() else values
    arr = np.asarray(filled, dtype=np.int64).astype(">i8")
    return FixedColumn(arr, null if null.any() else None)


def text_column(values: Sequence[str | None]) -> BytesColumn:
    return BytesColumn([None if v is None else v.encode() for v in values])


def _scatter(
    buf: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], rows: npt.NDArray[np.uint8]
) -> None:
    """Write row ``k`` of the (n, w) byte matrix ``rows`` to ``buf[at[k] : at[k] + w]``."""
    width = rows.shape[1]
    buf[at[:, None] + np.arange(width)] = rows


def copy_block(n: int, columns: Sequence[Column]) -> npt.NDArray[np.uint8]:
    """One complete binary COPY stream (signature to trailer) of ``n`` rows.

    Put the columns that are rarely NULL first: a run of fixed-width columns with no NULL in
    the batch has the same layout in every row and is written with one scatter.
    """
    ncol = len(columns)
    lengths = np.empty((n, ncol), dtype=np.int64)  # the length word of each field, -1 = NULL
    for c, col in enumerate(columns):
        if isinstance(col, FixedColumn):
            width = col.values.dtype.itemsize
            lengths[:, c] = width if col.null is None else np.where(col.null, -1, width)
        else:
            lengths[:, c] = np.fromiter(
                (-1 if p is None else len(p) for p in col.parts), dtype=np.int64, count=n
            )
    sizes = 4 + np.maximum(lengths, 0)  # bytes of each field, its length word included
    record = 2 + sizes.sum(axis=1)
    row_start = np.empty(n, dtype=np.int64)
    row_start[:1] = len(SIGNATURE)
    np.cumsum(record[:-1], out=row_start[1:])
    row_start[1:] += len(SIGNATURE)
    total = len(SIGNATURE) + int(record.sum()) + len(TRAILER)

    buf = np.empty(total, dtype=np.uint8)
    buf[: len(SIGNATURE)] = np.frombuffer(SIGNATURE, dtype=np.uint8)
    buf[total - len(TRAILER) :] = np.frombuffer(TRAILER, dtype=np.uint8)
    field_start = row_start[:, None] + 2 + np.cumsum(sizes, axis=1) - sizes

    run = _leading_dense_run(columns)
    _scatter(buf, row_start, _dense_block(n, ncol, columns[:run]))
    for c in range(run, ncol):
        col = columns[c]
        at = field_start[:, c]
        _scatter(buf, at, lengths[:, c].astype(">i4").view(np.uint8).reshape(n, 4))
        data_at = at + 4
        if isinstance(col, FixedColumn):
            width = col.values.dtype.itemsize
            data = np.ascontiguousarray(col.values).view(np.uint8).reshape(n, width)
            if col.null is None:
                _scatter(buf, data_at, data)
            else:
                keep = ~col.null
                _scatter(buf, data_at[keep], data[keep])
        else:
            blob = b"".join(p for p in col.parts if p)
            if not blob:
                continue
            widths = np.maximum(lengths[:, c], 0)
            # Destination of every byte of the concatenated blob: its row's data offset
            # plus its position within that row's part.
            part_start = np.cumsum(widths) - widths
            dest = np.repeat(data_at - part_start, widths) + np.arange(len(blob))
            buf[dest] = np.frombuffer(blob, dtype=np.uint8)
    return buf


def _leading_dense_run(columns: Sequence[Column]) -> int:
    """How many leading columns are fixed-width with no NULL in this batch."""
    for c, col in enumerate(columns):
        if not isinstance(col, FixedColumn) or col.null is not None:
            return c
    return len(columns)


def _dense_block(n: int, ncol: int, dense: Sequence[Column]) -> npt.NDArray[np.uint8]:
    """The field count and the leading dense columns of every row, as an (n, w) byte matrix
    (identical layout in every row, so one structured array holds them)."""
    fields: list[tuple[str, np.dtype]] = [("count", np.dtype(">i2"))]
    for k, col in enumerate(dense):
        assert isinstance(col, FixedColumn)
        fields += [(f"len{k}", np.dtype(">i4")), (f"val{k}", col.values.dtype)]
    block = np.empty(n, dtype=np.dtype(fields))
    block["count"] = ncol
    for k, col in enumerate(dense):
        assert isinstance(col, FixedColumn)
        block[f"len{k}"] = col.values.dtype.itemsize
        block[f"val{k}"] = col.values
    return block.view(np.uint8).reshape(n, block.dtype.itemsize)


# -- telemetry blocks ------------------------------------------------------------------------
# COPY column order: the never-NULL fixed-width columns first, so that they are written to
# the block in one piece (see ``copy_block``), the variable-width ones last; ``extra`` (JSON)
# always ends the row. Each column: its name and how a list of its values is encoded.
Encoder = Callable[[list[Any]], Column]


def _seq_column(values: list[int | None]) -> Column:
    return int64_column([R.NO_SEQ if s is None else s for s in values])


def _enum_column(values: list[Any]) -> Column:
    return text_column([None if v is None else R.enum_value(v) for v in values])


_FIX_SPEC: tuple[tuple[str, Encoder], ...] = (
    ("ts", int64_column),
    ("seq", _seq_column),
    ("received_at", int64_column),
    ("lat", float64_column),
    ("lon", float64_column),
    ("speed_kmh", float64_column),
    ("heading_deg", float64_column),
    ("hdop", float64_column),
    ("battery_pct", float64_column),
    ("sats", optional_int64_column),
    ("device_id", text_column),
)
_LOCK_EVENT_SPEC: tuple[tuple[str, Encoder], ...] = (
    ("ts", int64_column),
    ("seq", _seq_column),
    ("received_at", int64_column),
    ("lat", float64_column),
    ("lon", float64_column),
    ("battery_pct", float64_column),
    ("device_id", text_column),
    ("event", _enum_column),
    ("method", _enum_column),
)
FIX_COPY_COLUMNS = (*(name for name, _ in _FIX_SPEC), "extra")
LOCK_EVENT_COPY_COLUMNS = (*(name for name, _ in _LOCK_EVENT_SPEC), "extra")
_GET_DEVICE = operator.attrgetter("device_id")
_GET_EXTRA = operator.attrgetter("extra")


def fix_block(fixes: Sequence[Fix]) -> npt.NDArray[np.uint8]:
    """The COPY stream of ``FIX_COPY_COLUMNS`` for these fixes."""
    return _block(_FIX_SPEC, fixes)


def lock_event_block(events: Sequence[LockEvent]) -> npt.NDArray[np.uint8]:
    """The COPY stream of ``LOCK_EVENT_COPY_COLUMNS`` for these lock events."""
    return _block(_LOCK_EVENT_SPEC, events)


def _block(
    spec: tuple[tuple[str, Encoder], ...], items: Sequence[Fix] | Sequence[LockEvent]
) -> npt.NDArray[np.uint8]:
    """One pass per column, nothing formatted per row."""
    try:
        columns = [encode(list(map(operator.attrgetter(name), items))) for name, encode in spec]
        columns.append(_extra_parts(list(map(_GET_EXTRA, items)), list(map(_GET_DEVICE, items))))
        return copy_block(len(items), columns)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StoreError(f"telemetry batch cannot be stored: {exc}", rows=len(items)) from exc


def _extra_parts(values: Sequence[Any], devices: Sequence[str]) -> BytesColumn:
    return BytesColumn(
        [
            None if extra is None else R.dumps(extra, device_id=device).encode()
            for extra, device in zip(values, devices, strict=True)
        ]
    )
