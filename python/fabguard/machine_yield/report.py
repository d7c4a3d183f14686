"""The result of a low-yield screen: a table per machine, the flagged list, JSON and a forest plot.

The table may be handed over as numpy columns and becomes a pandas DataFrame on first access, so
that the command line's text report (:meth:`YieldReport.to_text`) needs no pandas import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from fabguard.errors import InputError
from fabguard.outputs import atomic_path

if TYPE_CHECKING:
    import pandas as pd


class YieldReport:
    """Per-machine estimates and the low-yield list of one screening method.

    ``machines`` has one row per machine, sorted by ``yield`` (lowest first), with at least:
    ``machine, batches, uses, pieces, inspects, yield, ci_low, ci_high, p_value, significant,
    low_yield``. ``significant`` marks machines whose yield is significantly below the threshold;
    ``low_yield`` is the list to act on. ``display_limit`` caps how many flagged machines
    :meth:`to_text` lists (the fdr rule's ``max_candidates``: a display limit, not a decision).
    Methods add their own columns (see each estimator). ``machines`` may be given as a mapping of
    column name to equal-length numpy arrays.
    """

    def __init__(self, method: str, machines, threshold: float, alpha: float, params: dict | None = None,
                 summary: dict | None = None, display_limit: int | None = None):
        self.method = method
        self._columns = dict(machines) if isinstance(machines, Mapping) else None
        self._frame = None if isinstance(machines, Mapping) else machines
        self.threshold = threshold
        self.alpha = alpha
        self.params = {} if params is None else params
        self.summary = {} if summary is None else summary
        self.display_limit = display_limit

    def __repr__(self) -> str:
        return (f"YieldReport(method={self.method!r}, machines={len(self._column('machine'))}, "
                f"threshold={self.threshold!r}, low_yield={self.low_yield!r})")

    @property
    def machines(self) -> pd.DataFrame:
        """The per-machine table (a DataFrame; built from the columns on first access)."""
        if self._frame is None:
            import pandas as pd

            self._frame = pd.DataFrame(self._columns)
        return self._frame

    def _column(self, name: str) -> np.ndarray:
        return self._columns[name] if self._frame is None else self._frame[name].to_numpy()

    def _names(self) -> list:
        return list(self._columns) if self._frame is None else list(self._frame.columns)

    @property
    def low_yield(self) -> list:
        """Flagged machines, lowest estimated yield first (for commonality: smallest p first)."""
        return self._column("machine")[self._column("low_yield").astype(bool)].tolist()

    def to_pandas(self) -> pd.DataFrame:
        return self.machines.copy()

    def to_dict(self) -> dict:
        import pandas as pd

        records = json.loads(self.machines.to_json(orient="records", double_precision=15))
        return {
            "method": self.method,
            "threshold": _finite_or_none(self.threshold),
            "alpha": self.alpha,
            "low_yield": json.loads(pd.Series(self.low_yield, dtype=object).to_json(orient="values")),
            "params": self.params,
            "summary": self.summary,
            "display_limit": self.display_limit,
            "machines": records,
        }

    def to_json(self, path=None, indent: int | None = 2) -> str:
        """The report as JSON (NaN as null); also written atomically to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(text + "\n")
        return text

    def to_text(self, top: int = 15) -> str:
        """A terminal table: the flagged machines and the lowest ``top`` estimates."""
        flagged = self._column("low_yield").astype(bool)
        if self.display_limit is not None:
            flagged &= np.cumsum(flagged) <= self.display_limit
        shown = flagged | (np.arange(len(flagged)) < top)
        columns = {c: self._column(c)[shown] for c in ("machine", "batches", "pieces", "yield", "ci_low", "ci_high",
                                                         "p_value", "q_value", "miss_rate", "status", "low_yield")
                   if c in self._names()}
        table = text_table(columns, dict.fromkeys(("yield", "ci_low", "ci_high", "miss_rate"), "{:.4f}".format)
                           | dict.fromkeys(("p_value", "q_value"), "{:.2e}".format))
        low = self.low_yield
        listed = low if self.display_limit is None else low[: self.display_limit]
        head = (f"{self.method}: {len(flagged)} machines, threshold {self.threshold:.5f}, alpha {self.alpha}; "
                f"low-yield: {', '.join(map(str, listed)) or 'none'}")
        if len(listed) < len(low):
            head += f" ... ({len(low)} flagged; the first {len(listed)} listed)"
        significant = int(self._column("significant").sum())
        if significant > len(low):
            head += f" ({significant} significant; the list is capped at {len(low)})"
        if "status" in self._names():
            few = int((self._column("status") == "too few batches").sum())
            if few:
                head += f"; {few} machine(s) in too few batches to tell"
        return head + "\n" + table

    def plot(self, path=None, top: int = 30):
        """Forest plot of the lowest ``top`` yields (and every flagged machine) with their CIs, the
        threshold, and the flagged machines in red. Saved atomically to ``path`` if given. Needs
        matplotlib (``pip install 'fabguard[plot]'``)."""
        require_matplotlib()
        from matplotlib.figure import Figure

        m = self.machines
        shown = m[m["low_yield"] | (np.arange(len(m)) < top)].iloc[::-1]
        fig = Figure(figsize=(7.5, 1.2 + 0.28 * len(shown)), layout="constrained")
        ax = fig.add_subplot()
        y = np.arange(len(shown))
        est = shown["yield"].to_numpy(float)
        lo = shown["ci_low"].to_numpy(float)
        hi = shown["ci_high"].to_numpy(float)
        flagged = shown["low_yield"].to_numpy(bool)
        for mask, color, label in ((~flagged, "0.35", "not flagged"), (flagged, "tab:red", "low-yield")):
            if mask.any():
                err = np.vstack([est[mask] - lo[mask], hi[mask] - est[mask]])
                err = np.where(np.isfinite(err), err, 0.0)
                ax.errorbar(est[mask], y[mask], xerr=err, fmt="o", color=color, ms=4, capsize=2, label=label)
        if math.isfinite(self.threshold):
            ax.axvline(self.threshold, color="tab:blue", ls="--", lw=1, label=f"threshold {self.threshold:.4f}")
        ax.set_yticks(y, [str(v) for v in shown["machine"]])
        # Logit scale: healthy machines sit within 1e-3 of 1 and low ones far below, and both
        # their CIs must stay readable on one axis.
        ax.set_xscale("logit", one_half="0.5")
        left, right = _logit_limits(np.r_[est, lo, hi, self.threshold])
        ticks = [t for t in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 0.9999, 0.99999) if left <= t <= right]
        ax.set_xlim(left, right)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("estimated yield, logit scale" + (" (with CI)" if np.isfinite(lo).any() else ""))
        ax.set_title(f"{self.method}: lowest {min(top, len(m))} machines")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        ax.grid(axis="x", alpha=0.3)
        if path is not None:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=120, format=str(path).rsplit(".", 1)[-1].lower())
        return fig


def text_table(columns: dict, formats: dict) -> str:
    """Columns of numpy arrays as ``DataFrame.to_string(index=False, formatters=formats,
    na_rep="-")`` lays them out, without pandas: right-aligned, one space apart, each as wide as its
    longest cell; the header of a column of unformatted numbers or booleans takes a leading space,
    where pandas keeps room for a sign; a missing value is "-"."""
    blocks = []
    for name, values in columns.items():
        fmt = formats.get(name, str)
        cells = ["-" if _is_missing(v) else fmt(v) for v in values]
        head = name if name in formats or values.dtype.kind in "OUS" else " " + name
        width = max([len(head), *map(len, cells)])
        blocks.append([head.rjust(width), *(c.rjust(width) for c in cells)])
    return "\n".join(" ".join(row) for row in zip(*blocks))


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def require_matplotlib() -> None:
    """Refuse a plot, before any work, where matplotlib (an extra, not in the core install) is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise InputError("plotting needs matplotlib, which is not installed: pip install 'fabguard[plot]'")


def flag(estimate: np.ndarray, p_value: np.ndarray, threshold: float, alpha: float,
         max_candidates: int, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(significant, low_yield): estimate below the threshold with p < alpha; the first
    ``max_candidates`` of those in ``order``."""
    significant = (estimate < threshold) & (p_value < alpha)
    low = np.zeros(len(estimate), dtype=bool)
    ranked = order[significant[order]][:max_candidates]
    low[ranked] = True
    return significant, low


def _logit_limits(values: np.ndarray) -> tuple[float, float]:
    v = np.clip(values[np.isfinite(values)], 1e-6, 1 - 1e-6)
    z = np.log(v / (1 - v))
    pad = 0.08 * (z.max() - z.min() + 1.0)
    lo, hi = z.min() - pad, z.max() + pad
    return 1 / (1 + np.exp(-lo)), 1 / (1 + np.exp(-hi))


def _finite_or_none(x: float):
    return float(x) if x is not None and math.isfinite(x) else None
