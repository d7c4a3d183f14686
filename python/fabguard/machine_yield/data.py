"""Production records: one row per (batch, step), validated into the arrays the core works on.

Row numbers in error messages count data rows from 1 in the order given (a CSV header is not a
row), so that ``row 7`` is the seventh record of the file or table.

pandas is imported only where it is used: a long-format CSV whose columns pyarrow reads with their
types (counts as integers, ids as text or integers) is validated on numpy arrays, so that
``fabguard yield detect FILE.csv`` does not pay pandas' import (0.5 s, more than the EM); any
other input (a DataFrame, Parquet, the authors' format, cells pyarrow does not type) goes through
pandas, with the same checks after the types are settled.

Validated arrays are read-only, and every fit checks them again (:meth:`ProductionData.check`, then
the C++ core before it trusts an index): arrays written to after validation, or a
``ProductionData`` built by hand, end in an :class:`~fabguard.errors.InputError`, never a crash.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fabguard.errors import InputError
from fabguard.params import Options, check

if TYPE_CHECKING:
    import pandas as pd

REQUIRED = ("batch", "step", "machine", "pieces_in", "defects")
#: The machine of a step whose machine id is missing: such steps are kept (their pieces and defects
#: belong to the route) and share this pseudo-machine, which the detector estimates but never flags.
NO_MACHINE = "(no machine id)"
#: The authors' wide CSV (their 2019 script): one row per (lot, step).
AUTHORS = ("Lot", "Final", "CurrentTotalNum", "TotalNum", "BadNum")
_PROCESS = re.compile(r"^Process([0-9]+)_MachineNo$")
MAX_STEP_DIGITS = 18  # a step a 64-bit Final can name
OPTIONAL = ("inspected",)
COUNTS = ("step", "pieces_in", "defects")
MAX_COUNT = 2**53  # counts are summed in float64 by the EM: larger ones would lose pieces
MAX_TOTAL = 2**63  # per-machine totals of pieces_in are reported as int64
DTYPES = {"batch_ptr": np.int64, "machine": np.int32, "pieces_in": np.int64, "defects": np.int64,
          "inspects": np.uint8}
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


@dataclass(frozen=True, eq=False)
class ProductionData:
    """Validated production records, rows grouped by batch in step order.

    Batches keep the order of their first appearance in the input; machines are numbered in the
    order they first appear in that sorted table.
    """

    batch_ids: np.ndarray  # (n_batches,) original batch ids
    machine_ids: np.ndarray  # (n_machines,) original machine ids
    batch_ptr: np.ndarray  # (n_batches + 1,) int64 row offsets
    machine: np.ndarray  # (n_rows,) int32 machine index
    pieces_in: np.ndarray  # (n_rows,) int64
    defects: np.ndarray  # (n_rows,) int64
    inspects: np.ndarray  # (n_rows,) uint8
    source: str = "input"

    @property
    def n_batches(self) -> int:
        return len(self.batch_ids)

    @property
    def n_machines(self) -> int:
        return len(self.machine_ids)

    @property
    def n_rows(self) -> int:
        return len(self.machine)

    def check(self) -> ProductionData:
        """Check the arrays' types, lengths, index ranges and counts again (in the C++ core, O(rows)):
        they may have been written to since validation, or built by hand. Raises InputError."""
        self._core_view()
        return self

    def _core_view(self):
        """A new C++ view of the arrays, which validates them; InputError names what is wrong."""
        from fabguard import _core

        for name, dtype in DTYPES.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != 1:
                got = (f"{value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray)
                       else type(value).__name__)
                raise InputError(f"{self.source}: ProductionData.{name} must be a 1-d {np.dtype(dtype)} array; "
                                 f"got {got}")
        if len(self.batch_ptr) != self.n_batches + 1:
            raise InputError(f"{self.source}: ProductionData.batch_ptr has {len(self.batch_ptr)} offsets for "
                             f"{self.n_batches} batch ids; expected {self.n_batches + 1}")
        try:
            view = _core.Production(self.batch_ptr, self.machine, self.pieces_in, self.defects, self.inspects,
                                    self.n_machines)
        except ValueError as exc:
            raise InputError(f"{self.source}: invalid ProductionData: {exc}") from None
        over = _overflowing_total(self.machine, self.pieces_in, self.n_machines)
        if over is not None:
            raise InputError(f"{self.source}: the pieces_in of machine {_plain(self.machine_ids[over[0]])} add up "
                             f"to {over[2]:.4g}, beyond the 64-bit integer range; split the data")
        return view

    @cached_property
    def batch_of_row(self) -> np.ndarray:
        return _frozen(np.repeat(np.arange(self.n_batches), np.diff(self.batch_ptr)))

    @cached_property
    def start_pieces(self) -> np.ndarray:
        return _frozen(self.pieces_in[self.batch_ptr[:-1]])

    @cached_property
    def final_good(self) -> np.ndarray:
        last = self.batch_ptr[1:] - 1
        return _frozen(self.pieces_in[last] - self.defects[last])

    @cached_property
    def batch_yield(self) -> np.ndarray:
        """Final good pieces over pieces at start, per batch."""
        return _frozen(self.final_good / self.start_pieces)

    @cached_property
    def detected_after(self) -> np.ndarray:
        """Per row: defects detected at later steps of the same batch."""
        total = np.cumsum(self.defects)
        return _frozen(total[self.batch_ptr[1:] - 1][self.batch_of_row] - total)

    @cached_property
    def first_use(self) -> np.ndarray:
        """Per row: True where the machine is used for the first time in its batch."""
        key = self.batch_of_row.astype(np.int64) * self.n_machines + self.machine
        first = np.zeros(self.n_rows, dtype=bool)
        first[np.unique(key, return_index=True)[1]] = True
        return _frozen(first)

    @cached_property
    def core(self):
        """The validated C++ view (shares these arrays, no copy; the core validates them again on
        every fit)."""
        return self._core_view()

    def usage_columns(self) -> dict:
        """Per machine, as numpy arrays: batches that used it, uses (steps), pieces processed,
        defects detected, whether it inspects."""
        m = self.machine
        return {
            "machine": self.machine_ids,
            "batches": np.bincount(m[self.first_use], minlength=self.n_machines),
            "uses": np.bincount(m, minlength=self.n_machines),
            "pieces": np.bincount(m, weights=self.pieces_in, minlength=self.n_machines).astype(np.int64),
            "detected": np.bincount(m, weights=self.defects, minlength=self.n_machines).astype(np.int64),
            "inspects": np.bincount(m, weights=self.inspects, minlength=self.n_machines) > 0,
        }

    def machine_usage(self) -> pd.DataFrame:
        """:meth:`usage_columns` as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.usage_columns())

    def to_frame(self) -> pd.DataFrame:
        """The records as a long table in the input format."""
        import pandas as pd

        starts = self.batch_ptr[:-1]
        return pd.DataFrame(
            {
                "batch": self.batch_ids[self.batch_of_row],
                "step": np.arange(self.n_rows) - np.repeat(starts, np.diff(self.batch_ptr)) + 1,
                "machine": self.machine_ids[self.machine],
                "pieces_in": self.pieces_in,
                "defects": self.defects,
                "inspected": self.inspects.astype(bool),
            }
        )


def load_production(source, format: str = "auto", in_progress: str = "include") -> ProductionData:
    """Read and validate production records.

    ``source``: a CSV or Parquet path, a pandas DataFrame, a dict of equal-length arrays, or an
    existing :class:`ProductionData` (checked again, then returned as is). ``format``:

    - ``"long"``: columns ``batch``, ``step`` (1-based order within the batch), ``machine``,
      ``pieces_in``, ``defects``, and optionally ``inspected`` (default: a machine inspects wherever
      it detected a defect somewhere in the data);
    - ``"authors"``: the wide CSV of the authors' script, one row per (lot, step): ``Lot``,
      ``Process001_MachineNo``, ``Process002_MachineNo``, ... (machines of steps 1..current),
      ``Final`` (the step's 1-based position, or -1 on the lot's last step), ``CurrentTotalNum``
      (pieces processed at the step), ``TotalNum`` (pieces the lot started with), ``BadNum``
      (defects detected at the step);
    - ``"auto"`` (default): ``authors`` when the columns are those, else ``long``.

    A lot of the authors' format without a -1 row is still in progress: ``in_progress="include"``
    (default) keeps it, since its pieces not flagged so far enter the likelihood like a finished
    lot's final good pieces (good, or defects not detected yet), ``"exclude"`` drops it. A step
    without a machine id becomes the pseudo-machine ``NO_MACHINE``. Raises
    :class:`~fabguard.errors.InputError` naming the source, row, batch and column (as the file
    names it) of the first problem found.
    """
    check("format", format, Options(("auto", "long", "authors")), owner="load_production")
    check("in_progress", in_progress, Options(("include", "exclude")), owner="load_production")
    if isinstance(source, ProductionData):
        return source.check()
    typed = _read_typed_csv(source) if format != "authors" else None
    if typed is not None:
        return _build(typed)
    frame, name = _read(source)
    if format == "authors" or (format == "auto" and _is_authors(frame.columns)):
        return _from_authors(frame, name, in_progress == "include")
    return _validate(frame, name)


def _is_authors(columns) -> bool:
    columns = [str(c) for c in columns]
    return all(c in columns for c in AUTHORS) and any(_PROCESS.match(c) for c in columns)


def _from_authors(frame: pd.DataFrame, name: str, in_progress: bool) -> ProductionData:
    """The authors' wide rows as long rows (one for one), validated with the file's column names.

    A step number is only a name: each row reads the cell of its own step, so memory and time follow
    the file's size, not the numbers in its header (``Process999999999999_MachineNo`` costs one
    column). A step without its column (``Process001`` and ``Process005`` only) has no machine id.
    """
    import pandas as pd

    columns = {str(c): c for c in frame.columns}
    missing = [c for c in AUTHORS if c not in columns]
    process = {}
    for c, column in columns.items():
        if m := _PROCESS.match(c):
            if len(m.group(1)) > MAX_STEP_DIGITS:  # also before int(), which refuses over 4300 digits
                raise InputError(f"{name}: column {c[:40]}...: a step number of {len(m.group(1))} digits (at most "
                                 f"{MAX_STEP_DIGITS})")
            number = int(m.group(1))
            if number < 1:
                raise InputError(f"{name}: column {c}: step {number} is not a step position (steps count from 1)")
            if number in process:
                raise InputError(f"{name}: column {c}: step {number} already has column {process[number]}")
            process[number] = column
    if missing or not process:
        raise InputError(f"{name}: the authors' format needs columns {list(AUTHORS)} and Process001_MachineNo, "
                         f"...; missing {missing or ['Process001_MachineNo']}")
    names = {"batch": "Lot", "step": "Final", "pieces_in": "CurrentTotalNum", "defects": "BadNum",
             "machine": "Process<step>_MachineNo"}
    frame = frame.rename(columns={columns[c]: c for c in AUTHORS})
    where = _Where(_batch_of(frame, "Lot"), name, names)
    for column in ("Lot", "Final", "CurrentTotalNum", "TotalNum", "BadNum"):
        nulls = np.flatnonzero(frame[column].isna().to_numpy())
        if len(nulls):
            raise where.fail(int(nulls[0]), None, f"column {column!r}: missing value")
    final = _integers(frame, "Final", where)
    # the last step's position: the lot's row count (steps run 1..J; a gap is refused below)
    rows_in_lot = frame.groupby("Lot", sort=False, dropna=False)["Lot"].transform("size").to_numpy()
    step = np.where(final == -1, rows_in_lot, final)
    bad = np.flatnonzero((step < 1) | (step > max(process)) | ((final < 1) & (final != -1)))
    if len(bad):
        r = int(bad[0])
        raise where.fail(r, "step", f"{final[r]} is not a step position in 1..{max(process)} or -1 (the last step)")
    machine = np.full(len(frame), None, dtype=object)
    for number, column in process.items():
        at = step == number
        machine[at] = frame[column].to_numpy(dtype=object)[at]
    machine = pd.Series(machine)
    machine = machine.where(machine.notna() & (machine.astype(str).str.strip() != ""), NO_MACHINE).to_numpy()
    long = pd.DataFrame({"batch": frame["Lot"].to_numpy(), "step": step, "machine": machine,
                         "pieces_in": frame["CurrentTotalNum"].to_numpy(), "defects": frame["BadNum"].to_numpy()})
    total = _integers(frame, "TotalNum", where)
    pieces = _integers(long, "pieces_in", where)
    first = np.flatnonzero((step == 1) & (total != pieces))
    if len(first):
        r = int(first[0])
        raise where.fail(r, None, f"column 'TotalNum': {total[r]} pieces at start, but CurrentTotalNum at step 1 "
                                  f"is {pieces[r]}")
    rows = np.arange(len(frame))
    if not in_progress:
        finished = pd.Series(final == -1).groupby(long["batch"].to_numpy()).transform("any").to_numpy()
        long, rows = long[finished].reset_index(drop=True), rows[finished]
    return _validate(long, name, names, rows)


def _read(source) -> tuple[pd.DataFrame, str]:
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), "DataFrame"
    if isinstance(source, Mapping):
        lengths = {k: len(np.asarray(v).reshape(-1)) for k, v in source.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(f"dict input: columns have different lengths {lengths}")
        return pd.DataFrame({k: np.asarray(v).reshape(-1) for k, v in source.items()}), "dict"
    path = _file(source)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path).reset_index(drop=True), str(path)
        if _is_csv(path):
            return pd.read_csv(path, skipinitialspace=True), str(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from exc
    raise InputError(f"{path}: unknown format (use .csv, .csv.gz or .parquet)")


def _file(source) -> Path:
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot read production records from {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a CSV or Parquet file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return path


def _is_csv(path: Path) -> bool:
    suffixes = "".join(path.suffixes[-2:]).lower()
    return path.suffix.lower() in (".csv", ".txt") or suffixes.endswith((".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz"))


#: Cells read as missing: pandas.read_csv's defaults.
_NULLS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
          "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclass
class _Typed:
    """Long-format records with their types settled, in input order; codes number values in order of
    first appearance."""

    name: str
    where: _Where
    batch_codes: np.ndarray
    batch_ids: np.ndarray
    step: np.ndarray
    pieces_in: np.ndarray
    defects: np.ndarray
    machine_codes: np.ndarray
    machine_values: np.ndarray
    inspected: np.ndarray | None


def _read_typed_csv(source) -> _Typed | None:
    """A plain or gzipped long-format CSV read by pyarrow, when every column it needs comes typed as
    pandas would type it: counts as integers within 2^53 without gaps, batch and machine ids as text
    or as integers without gaps (a missing machine is a step without one), ``inspected`` (if present)
    as true/false without gaps, and no space after a delimiter (pandas is asked to skip those). None
    for anything else, which then goes through pandas, whose messages name the offending cell.
    pyarrow.compute is not used: its import alone costs 50 ms."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    if not path.is_file() or not "".join(path.suffixes[-2:]).lower().endswith((".csv", ".txt", ".csv.gz")):
        return None
    import pyarrow as pa
    from pyarrow import csv

    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            import gzip

            raw = gzip.decompress(raw)
        if raw.startswith(b" ") or b", " in raw or b"\n " in raw:
            return None
        text = pa.dictionary(pa.int32(), pa.string())
        table = csv.read_csv(pa.py_buffer(raw), convert_options=csv.ConvertOptions(
            null_values=_NULLS, strings_can_be_null=True, column_types={"batch": text, "machine": text}))
        names = table.column_names  # decoded here: a header that is not UTF-8 raises UnicodeDecodeError
    except (pa.ArrowException, OSError, ValueError, EOFError):  # ValueError includes UnicodeDecodeError
        return None
    if (len(set(names)) < len(names) or table.num_rows == 0 or any(c not in names for c in REQUIRED)
            or _is_authors(names)):
        return None
    counts = {}
    for c in COUNTS:
        col = table.column(c).combine_chunks()
        if col.type != pa.int64() or col.null_count:
            return None
        counts[c] = _buffer(col, np.int64)
        if np.abs(counts[c]).max() > MAX_COUNT:
            return None
    inspected = None
    if "inspected" in names:
        col = table.column("inspected").combine_chunks()
        if col.type != pa.bool_() or col.null_count:
            return None
        inspected = _bits(col.buffers()[1], col.offset, len(col))
    coded = {c: _dictionary(table.column(c), c == "machine") for c in ("batch", "machine")}
    if coded["batch"] is None or coded["machine"] is None:
        return None
    where = _Where(_coded(*coded["batch"]), str(path))
    return _Typed(str(path), where, *coded["batch"], counts["step"], counts["pieces_in"], counts["defects"],
                  *coded["machine"], inspected)


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _dictionary(column, may_miss: bool):
    """(codes, values) of a dictionary-encoded text column, codes in order of first appearance. Values
    that are all integers become integers (pandas reads such a column as int64); a missing value
    (allowed where ``may_miss``: the machine) becomes ``NO_MACHINE``. None where pandas would read
    the column otherwise: numbers that are not all integers (pandas: floats), true/false, missing
    values not allowed or among integers (pandas: floats), integers beyond int64 or written two
    ways ("7", "07")."""
    index: dict = {}
    parts, nulls = [], []
    for chunk in column.chunks:  # each chunk has its own dictionary
        remap = np.array([index.setdefault(v, len(index)) for v in chunk.dictionary.to_pylist()] + [0], dtype=np.int64)
        valid = chunk.buffers()[0]
        null = (~_bits(valid, chunk.offset, len(chunk)) if valid is not None and chunk.null_count else
                np.zeros(len(chunk), dtype=bool))
        # a null's index is unspecified: point it at the last entry, the 0 appended
        parts.append(remap[np.where(null, len(remap) - 1, _buffer(chunk.indices, np.int32))])
        nulls.append(null)
    codes, missing = np.concatenate(parts), np.concatenate(nulls)
    values = list(index)
    if values and (all(map(_is_number, values)) or all(v.lower() in ("true", "false") for v in values)):
        if missing.any() or not all(_INTEGER.fullmatch(v) for v in values):  # pandas: floats, booleans
            return None
        numbers = [int(v) for v in values]
        if len(set(numbers)) < len(numbers) or not all(-(2**63) <= v < 2**63 for v in numbers):
            return None
        values = numbers
    if missing.any():
        if not may_miss:
            return None
        codes = np.where(missing, len(values), codes)
        values.append(NO_MACHINE)
    return codes, np.array(values + [None], dtype=object)[:-1]  # [None]: a 1-d array of objects


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _buffer(array, dtype) -> np.ndarray:
    """The values of a pyarrow array of fixed-width type, as numpy, read from its buffer (pyarrow's
    to_numpy imports pandas)."""
    width = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * width)


def _bits(buffer, offset: int, length: int) -> np.ndarray:
    """A pyarrow bitmap (booleans, validity) as a numpy bool array."""
    bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
    return bits[offset:offset + length].astype(bool)


def _coded(codes: np.ndarray, values: np.ndarray):
    return lambda row: values[codes[row]] if codes[row] >= 0 else None


def _batch_of(frame: pd.DataFrame, column: str = "batch"):
    if column not in frame.columns:
        return lambda row: None
    series = frame[column]
    return lambda row: series.iat[row]


class _Where:
    """Builds 'source: row N, batch B, column C: ...' messages for the original row order.

    ``batch_at(row)`` is the batch of a row (None if unknown); ``names`` maps the long format's
    column names to the file's; ``rows`` maps a row to its row in the file (when rows were dropped)."""

    def __init__(self, batch_at, name: str, names: dict | None = None, rows: np.ndarray | None = None):
        self.batch_at = batch_at
        self.name = name
        self.names = names or {}
        self.rows = rows

    def fail(self, row: int, column: str | None, what: str) -> InputError:
        batch = self.batch_at(row)
        where = f"{self.name}: row {(row if self.rows is None else int(self.rows[row])) + 1}"
        if not _missing(batch):
            where += f", batch {_plain(batch)}"
        if column:
            where += f", column {self.names.get(column, column)!r}"
        return InputError(f"{where}: {what}")


def _missing(value) -> bool:
    """pandas.isna of a cell; without pandas loaded the cells came from pyarrow: None or NaN."""
    if "pandas" in sys.modules:
        return bool(sys.modules["pandas"].isna(value))
    return value is None or (isinstance(value, float) and math.isnan(value))


def _validate(frame: pd.DataFrame, name: str, names: dict | None = None, rows: np.ndarray | None = None) -> ProductionData:
    """Settle the types of a long-format table with pandas (the messages name the offending cell),
    then :func:`_build`."""
    where = _Where(_batch_of(frame), name, names, rows)
    if len(frame) == 0:
        raise InputError(f"{name}: no rows")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(f"{name}: missing column(s) {missing}; found {list(frame.columns)}")
    if frame["machine"].isna().any():
        frame = frame.assign(machine=frame["machine"].astype(object).where(frame["machine"].notna(), NO_MACHINE))
        where.batch_at = _batch_of(frame)
    for column in REQUIRED:
        nulls = np.flatnonzero(frame[column].isna().to_numpy())
        if len(nulls):
            raise where.fail(int(nulls[0]), column, "missing value")
    counts = {c: _integers(frame, c, where) for c in COUNTS}
    inspected = _booleans(frame, "inspected", where) if "inspected" in frame.columns else None
    (batch_codes, batch_ids), (machine_codes, machine_values) = (_factorize(frame, c, name) for c in ("batch", "machine"))
    where.batch_at = _coded(batch_codes, np.array(batch_ids, dtype=object))
    return _build(_Typed(name, where, batch_codes, np.array(batch_ids, dtype=object), counts["step"],
                         counts["pieces_in"], counts["defects"], machine_codes,
                         np.array(machine_values, dtype=object), inspected))


def _factorize(frame: pd.DataFrame, column: str, name: str):
    import pandas as pd

    try:
        return pd.factorize(frame[column].to_numpy(), sort=False)
    except TypeError as exc:
        raise InputError(f"{name}: column {column!r} holds values that cannot be compared: {exc}") from exc


def _build(t: _Typed) -> ProductionData:
    """Check typed records (steps, counts, routes) and sort them into batches."""
    where, counts = t.where, {"step": t.step, "pieces_in": t.pieces_in, "defects": t.defects}
    inspected = t.inspected
    bad = np.flatnonzero(counts["step"] < 1)
    if len(bad):
        raise where.fail(int(bad[0]), "step", f"step numbers start at 1, got {counts['step'][bad[0]]}")
    for column in ("pieces_in", "defects"):
        bad = np.flatnonzero(counts[column] < 0)
        if len(bad):
            raise where.fail(int(bad[0]), column, f"negative count {counts[column][bad[0]]}")
    bad = np.flatnonzero(counts["defects"] > counts["pieces_in"])
    if len(bad):
        r = int(bad[0])
        raise where.fail(r, "defects", f"{counts['defects'][r]} defects exceed pieces_in {counts['pieces_in'][r]}")
    if inspected is not None:
        bad = np.flatnonzero((counts["defects"] > 0) & ~inspected)
        if len(bad):
            raise where.fail(int(bad[0]), "defects", "defects detected at a step marked inspected=false")

    batch_codes = t.batch_codes
    order = np.lexsort((counts["step"], batch_codes))
    b_sorted = batch_codes[order]
    steps = counts["step"][order]
    # a (batch, step) pair seen before: equal neighbours in the sorted order (stable, so the later
    # rows of the file); the first such row of the file
    dup = order[1:][(b_sorted[1:] == b_sorted[:-1]) & (steps[1:] == steps[:-1])]
    if len(dup):
        r = int(dup.min())
        raise where.fail(r, "step", f"step {counts['step'][r]} appears twice in this batch")

    starts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    batch_ptr = np.r_[starts, len(order)].astype(np.int64)
    position = np.arange(len(order)) - np.repeat(starts, np.diff(batch_ptr)) + 1
    gap = np.flatnonzero(steps != position)
    if len(gap):
        k = int(gap[0])
        expected = position[k]
        raise where.fail(int(order[k]), "step", f"steps are not consecutive: step {expected} is missing before step {steps[k]}")

    pieces = counts["pieces_in"][order]
    defects = counts["defects"][order]
    first = np.zeros(len(order), dtype=bool)
    first[starts] = True
    zero_start = np.flatnonzero(first & (pieces == 0))
    if len(zero_start):
        raise where.fail(int(order[zero_start[0]]), "pieces_in", "batch starts with zero pieces")
    left = np.r_[0, pieces[:-1] - defects[:-1]]
    grow = np.flatnonzero(~first & (pieces > left))
    if len(grow):
        k = int(grow[0])
        raise where.fail(
            int(order[k]), "pieces_in",
            f"{pieces[k]} pieces enter step {steps[k]} but only {left[k]} left step {steps[k] - 1}",
        )

    machine_codes, machine_ids = _first_appearance(t.machine_codes[order], t.machine_values)
    if inspected is None:
        detects = np.bincount(machine_codes, weights=defects, minlength=len(machine_ids)) > 0
        inspects = detects[machine_codes]
    else:
        inspects = inspected[order]
    _check_totals(machine_codes, pieces, order, machine_ids, where)
    return ProductionData(
        batch_ids=_frozen(t.batch_ids),
        machine_ids=_frozen(machine_ids),
        batch_ptr=_frozen(batch_ptr),
        machine=_frozen(machine_codes.astype(np.int32)),
        pieces_in=_frozen(np.ascontiguousarray(pieces, dtype=np.int64)),
        defects=_frozen(np.ascontiguousarray(defects, dtype=np.int64)),
        inspects=_frozen(np.ascontiguousarray(inspects, dtype=np.uint8)),
        source=t.name,
    )


def _first_appearance(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes renumbered 0, 1, ... in the order the values first appear in ``codes``, and the values
    in that order (those that do not appear are dropped)."""
    used, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rank = np.empty(len(used), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(used))
    ids = np.empty(len(used), dtype=object)
    ids[rank] = values[used]
    return rank[inverse.reshape(-1)], ids


def _frozen(array: np.ndarray) -> np.ndarray:
    """The array, read-only: validated data must not change under the checks that passed."""
    array.setflags(write=False)
    return array


def _check_totals(machine: np.ndarray, pieces: np.ndarray, order: np.ndarray, machine_ids, where: _Where) -> None:
    over = _overflowing_total(machine, pieces, len(machine_ids))
    if over is not None:
        m, k, total = over
        raise where.fail(int(order[k]), "pieces_in",
                         f"the pieces_in of machine {_plain(machine_ids[m])} add up to 2^63 or more here ({total:.4g} "
                         f"over all its rows), beyond the 64-bit integer range; split the data")


def _overflowing_total(machine: np.ndarray, pieces: np.ndarray, n_machines: int):
    """(machine, row, total) of the first machine whose total pieces_in reaches 2^63 (it would wrap
    around in int64) and the row where it does; None if none does. Summed in float64: each count is at
    most 2^53, so the sum is exact to far better than the margin that matters."""
    totals = np.bincount(machine, weights=pieces, minlength=n_machines)
    over = np.flatnonzero(totals >= MAX_TOTAL)
    if not len(over):
        return None
    m = int(over[0])
    rows = np.flatnonzero(machine == m)
    k = rows[int(np.argmax(np.cumsum(pieces[rows].astype(np.float64)) >= MAX_TOTAL))]
    return m, int(k), float(totals[m])


def _integers(frame: pd.DataFrame, column: str, where: _Where) -> np.ndarray:
    import pandas as pd

    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw.dtype):
        raise InputError(f"{where.name}: column {column!r} holds true/false values, not counts")
    if raw.dtype == object:
        flags = np.flatnonzero([isinstance(v, (bool, np.bool_)) for v in raw])
        if len(flags):
            raise where.fail(int(flags[0]), column, f"{raw.iat[flags[0]]} is a boolean, not a count")
    values = pd.to_numeric(raw, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if len(bad):
        r = int(bad[0])
        raise where.fail(r, column, f"not a number: {_plain(raw.iat[r])}")
    as_float = values.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(as_float) | (as_float != np.floor(as_float)))
    if len(bad):
        r = int(bad[0])
        raise where.fail(r, column, f"not a whole number: {_plain(raw.iat[r])}")
    bad = np.flatnonzero(np.abs(as_float) > MAX_COUNT)
    if len(bad):
        r = int(bad[0])
        raise where.fail(r, column, f"{_plain(raw.iat[r])} is too large (at most 2^53 = {MAX_COUNT})")
    return as_float.astype(np.int64)


def _plain(value) -> str:
    """A cell as the user wrote it: numpy scalars without their type (``5``, not ``np.uint64(5)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, str) else str(value)


def _booleans(frame: pd.DataFrame, column: str, where: _Where) -> np.ndarray:
    import pandas as pd

    raw = frame[column]
    if raw.dtype == bool:
        return raw.to_numpy()
    text = raw.astype(str).str.strip().str.lower()
    number = pd.to_numeric(raw, errors="coerce")
    true = (text.isin(_TRUE) | (number == 1)).to_numpy()
    false = (text.isin(_FALSE) | (number == 0)).to_numpy()
    bad = np.flatnonzero(~(true | false))
    if len(bad):
        r = int(bad[0])
        raise where.fail(r, column, f"not a boolean: {_plain(raw.iat[r])} (use true/false or 1/0)")
    return true
