"""Tables of inspection results: column roles, validation with clear errors, loaders, preprocessing.

A table has one row per product: a binary label (fault at final test), basic inspection results
(every product), advanced inspection results (missing where the product was not sampled) and,
optionally, a time column. A product counts as *sampled* when any of its advanced results is present.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fabguard.errors import InputError


@dataclasses.dataclass(frozen=True)
class Roles:
    """Which column plays which part. ``categorical`` lists the basic/advanced columns that hold
    categories (one-hot encoded); every other feature column must be numeric."""

    label: str
    basic: tuple[str, ...]
    advanced: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    time: str | None = None

    def __post_init__(self):
        for name in ("basic", "advanced", "categorical"):
            value = getattr(self, name)
            # one column name given as a string is one column, not its characters
            value = (value,) if isinstance(value, str) else tuple(value)
            object.__setattr__(self, name, value)
        for name, value in [("label", self.label), ("time", self.time)] + [
                (name, c) for name in ("basic", "advanced", "categorical") for c in getattr(self, name)]:
            if not (isinstance(value, str) and value) and not (name == "time" and value is None):
                raise InputError(f"roles: {name} column names must be non-empty strings, got {value!r}")
        if not self.basic:
            raise InputError("roles: at least one basic feature column is needed")
        if not self.advanced:
            raise InputError("roles: at least one advanced feature column is needed")
        named = [self.label, *self.basic, *self.advanced] + ([self.time] if self.time else [])
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:
            raise InputError(f"roles: column(s) {twice} given more than one role (label, basic, advanced, time)")
        stray = sorted(set(self.categorical) - set(self.basic) - set(self.advanced))
        if stray:
            raise InputError(f"roles: categorical column(s) {stray} are neither basic nor advanced features")

    @property
    def features(self) -> tuple[str, ...]:
        return self.basic + self.advanced

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Roles":
        return cls(**d)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV (UTF-8, a byte-order mark is accepted) or Parquet file as a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read as a table: {exc}") from exc
    if frame.empty:
        raise InputError(f"{path}: the table has no rows")
    frame.attrs["source"] = str(path)
    return frame


def _where(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "table")


def _row(position: int) -> str:
    return f"data row {position + 1}"


def _show(value) -> str:
    """A cell value as the user wrote it (``inf``, ``'x1'``), not as numpy's repr (``np.float64(inf)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_columns(frame: pd.DataFrame, columns) -> None:
    """Refuse a table that lacks a column the roles name (an unknown column), or holds one of them twice
    (possible in a DataFrame, where selecting it would give a table instead of a column)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        known = ", ".join(map(str, frame.columns[:20]))
        raise InputError(f"{_where(frame)}: unknown column(s) {missing}; the table has: {known}"
                         + (" ..." if len(frame.columns) > 20 else ""))
    twice = [c for c in dict.fromkeys(columns) if frame.columns.has_duplicates and int((frame.columns == c).sum()) > 1]
    if twice:
        raise InputError(f"{_where(frame)}: column(s) {twice} appear more than once in the table; "
                         "give each column one name")


def labels(frame: pd.DataFrame, roles: Roles) -> np.ndarray:
    """The label as 0/1 integers. Accepts 0/1, -1/1 (secom) and booleans; refuses anything else,
    missing labels and a single class."""
    check_columns(frame, [roles.label])
    raw = frame[roles.label]
    missing = np.flatnonzero(raw.isna().to_numpy())
    if missing.size:
        raise InputError(f"{_where(frame)}: column '{roles.label}', {_row(missing[0])}: label is missing "
                         f"({missing.size} missing in all)")
    values = pd.to_numeric(raw.astype(object).replace({True: 1, False: 0}), errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if bad.size:
        raise InputError(f"{_where(frame)}: column '{roles.label}', {_row(bad[0])}: label "
                         f"{_show(raw.iloc[bad[0]])} is not 0/1, -1/1 or a boolean")
    kinds = set(np.unique(values))
    if kinds <= {0, 1}:
        y = values.to_numpy(dtype=int)
    elif kinds <= {-1, 1}:
        y = (values.to_numpy() == 1).astype(int)
    else:
        raise InputError(f"{_where(frame)}: column '{roles.label}': labels {sorted(kinds)} are not binary "
                         "(expected 0/1 or -1/1)")
    if len(np.unique(y)) < 2:
        raise InputError(f"{_where(frame)}: column '{roles.label}': every product has label {y[0]}; "
                         "training needs both faulty and good products")
    return y


def features(frame: pd.DataFrame, roles: Roles, columns) -> pd.DataFrame:
    """The feature columns with numeric columns as float and categorical ones as strings (missing
    stays missing). A value that is not a number in a numeric column is an error naming it."""
    columns = list(columns)
    check_columns(frame, columns)
    out = {}
    for c in columns:
        col = frame[c]
        if c in roles.categorical:
            out[c] = col.astype(object).where(col.isna(), col.astype(str))
            continue
        if pd.api.types.is_bool_dtype(col):
            raise InputError(f"{_where(frame)}: column '{c}' is boolean; declare it categorical or encode it as 0/1")
        try:
            num = pd.to_numeric(col, errors="coerce")
        except OverflowError:  # an integer beyond any float (JSON and Python allow any number of digits)
            raise InputError(f"{_where(frame)}: column '{c}': a value too large to be a number") from None
        bad = np.flatnonzero((num.isna() & col.notna()).to_numpy())
        if bad.size:
            raise InputError(f"{_where(frame)}: column '{c}', {_row(bad[0])}: value {_show(col.iloc[bad[0]])} "
                             "is not a number (declare the column categorical if it holds categories)")
        num = num.astype(float)
        infinite = np.flatnonzero(np.isinf(num.to_numpy()))
        if infinite.size:
            raise InputError(f"{_where(frame)}: column '{c}', {_row(infinite[0])}: value "
                             f"{_show(col.iloc[infinite[0]])} is not a finite number")
        out[c] = num
    result = pd.DataFrame(out, index=frame.index)
    result.attrs["source"] = _where(frame)
    return result


def check_observed(frame: pd.DataFrame, columns, what: str) -> None:
    """Refuse feature columns that are missing on every row of ``frame`` (nothing to learn from)."""
    empty = [c for c in columns if frame[c].isna().all()]
    if empty:
        raise InputError(f"{_where(frame)}: {what} column(s) {empty} are missing on every row")


def check_rows_observed(frame: pd.DataFrame, columns, what: str) -> None:
    """Refuse products whose ``what`` features are all missing (no basis for a prediction)."""
    empty = np.flatnonzero(frame[list(columns)].isna().all(axis=1).to_numpy())
    if empty.size:
        raise InputError(f"{_where(frame)}: {_row(empty[0])}: all {what} features are missing "
                         f"({empty.size} such row(s))")


def sampled(frame: pd.DataFrame, roles: Roles) -> np.ndarray:
    """True where the product went through the advanced inspection (any advanced result present)."""
    check_columns(frame, roles.advanced)
    return frame[list(roles.advanced)].notna().any(axis=1).to_numpy()


def mask_unsampled(frame: pd.DataFrame, roles: Roles, rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """A copy where only a random ``rate`` share of products keep their advanced results: the
    situation at training time, made from a table where everything was measured."""
    if not 0 < rate <= 1:
        raise InputError(f"sample rate {rate} is not in (0, 1]")
    out = frame.copy()
    keep = np.zeros(len(frame), bool)
    keep[rng.choice(len(frame), size=max(1, round(rate * len(frame))), replace=False)] = True
    out.loc[~keep, list(roles.advanced)] = np.nan
    return out


AI4I_ROLES = Roles(
    label="Machine_failure",
    basic=("Type", "Air temperature [K]", "Process temperature [K]", "Rotational speed [rpm]"),
    advanced=("Torque [Nm]", "Tool wear [min]"),
    categorical=("Type",),
    time="UDI",
)


def load_ai4i2020(path: str | os.PathLike) -> tuple[pd.DataFrame, Roles]:
    """UCI AI4I 2020 (``ai4i2020.csv`` or its folder). The failure-mode columns TWF, HDF, PWF, OSF, RNF
    are components of the label and are dropped so that they can never become features. ``UDI`` (the
    product sequence number) serves as time."""
    path = Path(path)
    if path.is_dir():
        path = path / "ai4i2020.csv"
    frame = read_table(path)
    frame = frame.drop(columns=[c for c in ("TWF", "HDF", "PWF", "OSF", "RNF", "Product ID") if c in frame.columns])
    check_columns(frame, [AI4I_ROLES.label, *AI4I_ROLES.features, AI4I_ROLES.time])
    return frame, AI4I_ROLES


# SECOM columns whose missing-row pattern is shared by a block measured on only a subset of lots
# (blocks observed on 138, 226, 549, 618, 773 and 852 of 1567 lots): the stand-in for advanced
# inspection. Derived once from the data (columns grouped by identical missing pattern, blocks observed
# on fewer than 1000 lots); tests/active/test_active_data.py re-derives it from the file.
SECOM_ADVANCED = (72, 73, 85, 109, 110, 111, 112, 157, 158, 220, 244, 245, 246, 247, 292, 293, 345, 346,
                  358, 382, 383, 384, 385, 492, 516, 517, 518, 519, 578, 579, 580, 581)


def secom_column(i: int) -> str:
    return f"sensor_{i:03d}"


def load_secom(folder: str | os.PathLike) -> tuple[pd.DataFrame, Roles]:
    """UCI SECOM: 590 sensors, label -1/1 -> 0/1 and timestamp. Advanced = ``SECOM_ADVANCED`` blocks,
    basic = every other sensor. Only the lots where at least one advanced block was measured are kept
    (1506 of 1567), so that every kept lot has an advanced result to route to."""
    folder = Path(folder)
    data, label_file = folder / "secom.data", folder / "secom_labels.data"
    for f in (data, label_file):
        if not f.is_file():
            raise InputError(f"{f}: no such file (expected the UCI SECOM folder)")
    x = pd.read_csv(data, sep=r"\s+", header=None, na_values="NaN")
    meta = pd.read_csv(label_file, sep=r"\s+", header=None)
    if x.shape[1] != 590 or len(meta) != len(x):
        raise InputError(f"{folder}: expected 590 sensor columns and one label per row, got {x.shape} "
                         f"and {len(meta)} labels")
    x.columns = [secom_column(i) for i in range(590)]
    advanced = tuple(secom_column(i) for i in SECOM_ADVANCED)
    extra = pd.DataFrame({"label": (meta[0] == 1).astype(int),
                          "timestamp": pd.to_datetime(meta[1], format="%d/%m/%Y %H:%M:%S")})
    frame = pd.concat([x, extra], axis=1)
    frame = frame[frame[list(advanced)].notna().any(axis=1)].reset_index(drop=True)
    frame.attrs["source"] = str(folder)
    roles = Roles(label="label", basic=tuple(c for c in x.columns if c not in advanced), advanced=advanced,
                  time="timestamp")
    return frame, roles
