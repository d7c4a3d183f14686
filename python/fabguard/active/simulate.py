"""Seeded simulator of basic and advanced inspections with a controllable information gap.

The fault logit is ``signal * (sqrt(1 - gap) * s_basic + sqrt(gap) * gate * s_advanced) + b``: ``s_basic``
and ``s_advanced`` are standardised, mildly non-linear functions of independent basic and advanced
measurements, so ``info_gap`` is the share of the signal that only the advanced inspection sees.
``gate`` (mean square 1) makes the advanced signal matter more for products with a high last basic
feature (``locality`` > 0), like a product type whose failures depend on an advanced measurement: the
structure a learned value-of-inspection rule can find and an uncertainty rule cannot.
The intercept ``b`` gives the requested fault rate. Label noise replaces a share of recorded labels
by random draws at the fault rate (so the fault rate is kept), the regime where soft teacher targets
should help a student most.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit

from fabguard.active.data import Roles, mask_unsampled
from fabguard.errors import InputError
from fabguard.params import check_memory

# Named regimes for benchmarks: where distillation should help (noisy or scarce labels) and where it
# cannot (no information gap: the teacher knows nothing the student could not learn itself).
REGIMES = {
    "reference": dict(n_products=6000, info_gap=0.5, label_noise=0.0, fault_rate=0.05),
    "noisy_labels": dict(n_products=6000, info_gap=0.5, label_noise=0.4, fault_rate=0.05),
    "scarce_labels": dict(n_products=2500, info_gap=0.5, label_noise=0.0, fault_rate=0.03),
    "no_gap": dict(n_products=6000, info_gap=0.0, label_noise=0.0, fault_rate=0.05),
}


def _standardise(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


def simulate_inspections(n_products: int = 5000, n_basic: int = 6, n_advanced: int = 4, info_gap: float = 0.5,
                         label_noise: float = 0.0, fault_rate: float = 0.05, sample_rate: float = 1.0,
                         signal: float = 4.0, locality: float = 1.5, seed: int = 0) -> tuple[pd.DataFrame, Roles]:
    """A table (``basic_*``, ``advanced_*``, ``fault``, ``time``) and its roles. ``sample_rate`` < 1 blanks
    the advanced results of the products that were not sampled."""
    checks = {"info_gap": 0 <= info_gap <= 1, "label_noise": 0 <= label_noise < 1, "fault_rate": 0 < fault_rate < 1,
              "n_products": n_products >= 20, "n_basic": n_basic >= 2, "n_advanced": n_advanced >= 1,
              "signal": signal > 0, "locality": locality >= 0}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise InputError(f"simulate: parameter(s) out of range: {bad}")
    # a few float64 copies of the table (draws, frame, masking) are alive at once
    check_memory(6 * 8 * n_products * (n_basic + n_advanced + 4), f"simulating {n_products} products",
                 "use fewer products")
    rng = np.random.default_rng(seed)
    xb = rng.normal(size=(n_products, n_basic))
    xa = rng.normal(size=(n_products, n_advanced))
    s_basic = _standardise(xb @ rng.normal(size=n_basic) + 0.5 * xb[:, 0] * xb[:, 1])
    s_advanced = _standardise(xa @ rng.normal(size=n_advanced) + 0.5 * (xa[:, 0] ** 2 - 1))
    gate = expit(locality * xb[:, -1])
    gate /= np.sqrt(np.mean(gate**2))
    z = signal * (np.sqrt(1 - info_gap) * s_basic + np.sqrt(info_gap) * gate * s_advanced)
    intercept = brentq(lambda b: expit(z + b).mean() - fault_rate, -50, 50)
    y = rng.random(n_products) < expit(z + intercept)
    noisy = rng.random(n_products) < label_noise
    y = np.where(noisy, rng.random(n_products) < fault_rate, y)
    frame = pd.DataFrame(xb, columns=[f"basic_{i}" for i in range(n_basic)])
    for i in range(n_advanced):
        frame[f"advanced_{i}"] = xa[:, i]
    frame["fault"] = y.astype(int)
    frame["time"] = np.arange(n_products)
    roles = Roles(label="fault", basic=tuple(f"basic_{i}" for i in range(n_basic)),
                  advanced=tuple(f"advanced_{i}" for i in range(n_advanced)), time="time")
    if sample_rate < 1:
        frame = mask_unsampled(frame, roles, sample_rate, rng)
    frame.attrs["source"] = f"simulate(seed={seed})"
    return frame, roles
