"""Feature preprocessing held as plain arrays, so a saved model is data and routes without scikit-learn.

Numeric columns: median imputation, columns constant on the training rows dropped, standard scaling;
categorical columns: most frequent value imputation, one-hot encoding (an unseen category encodes as
all zeros). The output is float32, the precision the networks run in: a value whose standardised form
does not fit in float32 is refused with its column and row instead of becoming inf inside a graph.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fabguard.errors import InputError, ModelFileError

FLOAT32_MAX = float(np.finfo(np.float32).max)


class Preprocessor:
    """Unfitted preprocessing of ``columns``; those in ``categorical`` hold categories. ``__init__`` only
    stores its arguments (scikit-learn's contract); learned state has a trailing underscore."""

    def __init__(self, columns=(), categorical=()):
        self.columns = columns
        self.categorical = categorical

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.columns if c not in self.categorical]

    @property
    def encoded(self) -> list[str]:
        return [c for c in self.columns if c in self.categorical]

    def fit(self, x: pd.DataFrame) -> "Preprocessor":
        """Learn the statistics from the rows of ``x`` (numeric columns float, categorical ones strings)."""
        if len(x) == 0:
            raise InputError(f"{x.attrs.get('source', 'table')}: no rows to fit the preprocessing on")
        num = x[self.numeric].to_numpy(dtype=np.float64) if self.numeric else np.empty((len(x), 0))
        observed = ~np.isnan(num)
        median = np.array([np.median(num[observed[:, j], j]) if observed[:, j].any() else np.nan
                           for j in range(num.shape[1])])
        filled = np.where(observed, num, median)
        # a column never observed, or constant once imputed, carries nothing to learn
        kept = observed.any(axis=0) & (np.ptp(filled, axis=0) > 0)
        self.median_, self.kept_ = median, kept
        self.mean_, self.scale_ = filled[:, kept].mean(axis=0), filled[:, kept].std(axis=0)
        self.fill_, self.categories_ = [], []
        for c in self.encoded:
            counts = x[c].dropna().value_counts()
            top = sorted(counts.index[counts == counts.max()]) if len(counts) else ["missing"]
            self.fill_.append(str(top[0]))
            self.categories_.append(sorted(set(x[c].dropna().astype(str)) | {str(top[0])}))
        return self

    @property
    def n_outputs(self) -> int:
        return int(self.kept_.sum()) + sum(len(c) for c in self.categories_)

    def transform(self, x: pd.DataFrame, rows: np.ndarray | None = None) -> np.ndarray:
        """``(n, n_outputs)`` float32: scaled numeric columns, then one-hot categories. ``rows``: the
        positions of ``x``'s rows in the table it came from (for error messages; default 0..n-1)."""
        num = x[self.numeric].to_numpy(dtype=np.float64) if self.numeric else np.empty((len(x), 0))
        num = np.where(np.isnan(num), self.median_, num)[:, self.kept_]
        z = (num - self.mean_) / self.scale_
        too_big = np.abs(z) > FLOAT32_MAX
        if too_big.any():
            row, j = np.argwhere(too_big)[0]
            column = np.asarray(self.numeric)[self.kept_][j]
            position = row if rows is None else rows[row]
            raise InputError(f"{x.attrs.get('source', 'table')}: column '{column}', data row {position + 1}: value "
                             f"{float(num[row, j])!r} is too far outside the training range (mean {self.mean_[j]:.4g}, "
                             f"sd {self.scale_[j]:.4g}) to be scored in float32")
        parts = [z]
        for c, fill, categories in zip(self.encoded, self.fill_, self.categories_):
            values = x[c].astype(object).where(x[c].notna(), fill).astype(str).to_numpy()
            parts.append(values[:, None] == np.asarray(categories, dtype=object)[None, :])
        return np.hstack(parts).astype(np.float32) if parts else np.empty((len(x), 0), np.float32)

    def to_data(self) -> tuple[dict, dict]:
        """(JSON-able description, named arrays) of the fitted state."""
        return ({"columns": list(self.columns), "categorical": list(self.categorical), "fill": self.fill_,
                 "categories": self.categories_},
                {"median": self.median_, "kept": self.kept_, "mean": self.mean_, "scale": self.scale_})

    @classmethod
    def from_data(cls, spec: dict, arrays: dict) -> "Preprocessor":
        """The inverse of :meth:`to_data`; refuses parts whose shapes do not fit together."""
        pre = cls(tuple(spec["columns"]), tuple(spec["categorical"]))
        pre.fill_, pre.categories_ = [str(f) for f in spec["fill"]], [[str(v) for v in c] for c in spec["categories"]]
        pre.median_, pre.mean_, pre.scale_ = (np.asarray(arrays[k], dtype=np.float64)
                                              for k in ("median", "mean", "scale"))
        pre.kept_ = np.asarray(arrays["kept"], dtype=bool)
        n_kept = int(pre.kept_.sum())
        if (pre.median_.shape != pre.kept_.shape or pre.kept_.shape != (len(pre.numeric),)
                or pre.mean_.shape != (n_kept,) or pre.scale_.shape != (n_kept,) or not np.all(pre.scale_ > 0)
                or len(pre.fill_) != len(pre.encoded) or len(pre.categories_) != len(pre.encoded)):
            raise ModelFileError("preprocessing arrays do not match the columns they describe")
        return pre
