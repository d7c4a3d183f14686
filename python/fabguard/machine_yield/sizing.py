"""How many batches does detection need? Recall and precision by simulation.

Repetition r of a scenario simulates with a seed drawn from (seed, r) alone, and batch i of a
simulation depends only on (seed, i): the data for 1,000 batches is the first 1,000 batches of the
data for 2,000, so recall across batch counts is compared on common random numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fabguard.machine_yield._forms import PROBABILITY, SEED64, YIELD
from fabguard.machine_yield.detector import LowYieldDetector
from fabguard.machine_yield.simulate import BYTES_PER_BATCH, BYTES_PER_MACHINE, simulate
from fabguard.params import POSITIVE_INT, Interval, check, check_memory


def rep_seed(seed: int, rep: int) -> int:
    return int(np.random.SeedSequence([seed, rep]).generate_state(1, dtype=np.uint64)[0] >> 1)


def evaluate(n_machines: int, n_batches: int, n_low: int, low_yield: float = 0.4, *, reps: int = 20,
             seed: int = 0, detector=None, progress: bool = False, **simulate_kwargs) -> pd.DataFrame:
    """Detection on ``reps`` simulated data sets; one row per repetition with recall (share of the
    true low-yield machines flagged), precision (share of flagged machines truly low; NaN if none
    flagged) and the counts behind them. ``detector``: a :class:`LowYieldDetector` (default) or a
    baseline; one with a ``seed`` gets each repetition's seed."""
    check("reps", reps, POSITIVE_INT, owner="evaluate")
    detector = detector or LowYieldDetector()
    rows = []
    for rep in tqdm(range(reps), desc=f"{n_machines} machines x {n_batches} batches", disable=not progress, leave=False):
        s = rep_seed(seed, rep)
        sim = simulate(n_machines, n_batches, n_low, low_yield, seed=s, **simulate_kwargs)
        fitted = copy.copy(detector)
        if hasattr(fitted, "seed"):
            fitted.seed = s
        flagged = set(fitted.fit(sim.data).report_.low_yield)
        truth = set(sim.low_yield_machines)
        hits = len(flagged & truth)
        rows.append({
            "rep": rep, "seed": s, "true_low": len(truth), "flagged": len(flagged), "hits": hits,
            "recall": hits / len(truth) if truth else np.nan,
            "precision": hits / len(flagged) if flagged else np.nan,
        })
    return pd.DataFrame(rows)


def summarize(trials: pd.DataFrame) -> dict:
    """Mean recall over repetitions (the paper's figure) and pooled precision (hits / flagged)."""
    flagged = int(trials["flagged"].sum())
    return {
        "recall": float(trials["recall"].mean()),
        "precision": float(trials["hits"].sum() / flagged) if flagged else float("nan"),
        "flagged_per_rep": float(trials["flagged"].mean()),
    }


@dataclass(frozen=True)
class SizingResult:
    batches: int | None  # smallest batch count that reached the target recall; None if none did
    target_recall: float
    tried: pd.DataFrame  # one row per batch count tried: batches, recall, precision, flagged_per_rep


def batches_needed(n_machines: int, n_low: int, low_yield: float = 0.4, *, target_recall: float = 0.95,
                   reps: int = 20, seed: int = 0, detector: LowYieldDetector | None = None,
                   start: int | None = None, max_batches: int | None = None, resolution: float = 0.05,
                   progress: bool = False) -> SizingResult:
    """Smallest number of batches whose mean recall over ``reps`` simulations reaches
    ``target_recall``: doubling from ``start`` (default 2 x machines) up to ``max_batches``
    (default 64 x machines), then bisection until the bracket is within ``resolution`` of its top.
    Recall is estimated, not exact: with 20 repetitions one missed machine in 20 moves it by
    0.05 / n_low. Arguments out of range and a largest simulation that cannot fit in memory are
    refused before the first simulation."""
    owner = "batches_needed"
    check("n_machines", n_machines, Interval(int, 2, None), owner=owner)
    check("n_low", n_low, Interval(int, 1, n_machines), owner=owner)
    check("low_yield", low_yield, PROBABILITY, owner=owner)
    check("target_recall", target_recall, YIELD, owner=owner)
    check("reps", reps, POSITIVE_INT, owner=owner)
    check("seed", seed, SEED64, owner=owner)
    for name, value in (("start", start), ("max_batches", max_batches)):
        if value is not None:
            check(name, value, POSITIVE_INT, owner=owner)
    check("resolution", resolution, YIELD, owner=owner)
    start = start or 2 * n_machines
    max_batches = max_batches or 64 * n_machines
    check_memory(float(max(start, max_batches)) * BYTES_PER_BATCH + n_machines * BYTES_PER_MACHINE,
                 f"sizing up to {max(start, max_batches)} batches over {n_machines} machines", "lower max_batches")
    tried: dict[int, dict] = {}

    def recall_at(n: int) -> float:
        if n not in tried:
            tried[n] = summarize(evaluate(n_machines, n, n_low, low_yield, reps=reps, seed=seed,
                                          detector=detector, progress=progress))
            if progress:
                tqdm.write(f"{n} batches: recall {tried[n]['recall']:.3f}, precision {tried[n]['precision']:.3f}")
        return tried[n]["recall"]

    lo, hi = 0, start
    while recall_at(hi) < target_recall:
        if hi >= max_batches:
            return SizingResult(None, target_recall, _table(tried))
        lo, hi = hi, min(2 * hi, max_batches)
    while hi - lo > max(1, resolution * hi):
        mid = (lo + hi) // 2
        if recall_at(mid) >= target_recall:
            hi = mid
        else:
            lo = mid
    return SizingResult(hi, target_recall, _table(tried))


def _table(tried: dict[int, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"batches": n, **v} for n, v in sorted(tried.items())])
