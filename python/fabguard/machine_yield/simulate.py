"""Simulated production after the paper's Table V, with the truth beside it.

Defaults follow Table V: raw pieces per batch N(2000, 1500) clipped to [1, 20000], steps per batch
N(20, 7) clipped to [5, 50], inspection steps per batch N(10% of the length, 2) clipped to
[2, length] with the last step always inspecting, 30% of machines with inspection equipment whose
detection accuracy is N(0.90, 0.02) clipped to [0.85, 1]. Each step draws its machine uniformly
from the inspecting machines (inspection steps) or the others. Defects are drawn per piece
(binomial) and removed when detected.

Healthy yields are Uniform(0.998, 1.0) by default: the paper gives no distribution, and its
Table VII shows healthy machines estimated at 0.9995-0.9996, so healthy machines lose a few
pieces per thousand at most while a low-yield machine (0.4 in Table VI) loses most of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fabguard.errors import InputError, InvalidParameterError
from fabguard.machine_yield._forms import PROBABILITY, PROBABILITY_OPEN, SEED64
from fabguard.params import Interval, check, check_memory

if TYPE_CHECKING:  # pandas is imported when a simulation runs: ``import fabguard.machine_yield`` stays light
    import pandas as pd

    from fabguard.machine_yield.data import ProductionData

#: Peak memory per simulated batch and per machine. Simulating 50,000 batches (20 steps each on
#: average) and writing them as CSV peaked at 2.8 KB per batch; 4 KB leaves room for longer routes.
BYTES_PER_BATCH, BYTES_PER_MACHINE = 4_000, 200


@dataclass(frozen=True)
class Simulation:
    """Simulated records and the truth per machine."""

    data: ProductionData
    truth: pd.DataFrame  # machine, yield, low_yield, has_inspection, miss_rate, defects_made

    @property
    def low_yield_machines(self) -> list:
        return self.truth.loc[self.truth["low_yield"], "machine"].tolist()


def simulate(
    n_machines: int = 250,
    n_batches: int = 2000,
    n_low: int = 3,
    low_yield: float = 0.4,
    *,
    healthy_yield: tuple[float, float] = (0.998, 1.0),
    inspect_share: float = 0.3,
    seed: int = 0,
) -> Simulation:
    """Simulate ``n_batches`` batches over ``n_machines`` machines, ``n_low`` of them at
    ``low_yield``. The same arguments always give the same data, on any machine. Refuses, before
    simulating, arguments out of range (InvalidParameterError) and sizes that cannot fit in memory
    (ResourceError)."""
    import pandas as pd

    from fabguard import _core
    from fabguard.machine_yield.data import ProductionData, _frozen

    check("n_machines", n_machines, Interval(int, 2, None), owner="simulate")
    check("n_batches", n_batches, Interval(int, 1, None), owner="simulate")
    check("n_low", n_low, Interval(int, 0, n_machines), owner="simulate")
    check("low_yield", low_yield, PROBABILITY, owner="simulate")
    if not (isinstance(healthy_yield, (tuple, list)) and len(healthy_yield) == 2
            and all(PROBABILITY.accepts(v) for v in healthy_yield)):
        raise InvalidParameterError(f"the 'healthy_yield' parameter of simulate must be a pair (low, high) of "
                                    f"numbers in [0, 1]; got {healthy_yield!r}")
    check("inspect_share", inspect_share, PROBABILITY_OPEN, owner="simulate")
    check("seed", seed, SEED64, owner="simulate")
    check_memory(float(n_batches) * BYTES_PER_BATCH + float(n_machines) * BYTES_PER_MACHINE,
                 f"simulating {n_batches} batches over {n_machines} machines", "simulate fewer batches")

    config = _core.SimConfig()
    config.n_machines, config.n_batches, config.n_low = int(n_machines), int(n_batches), int(n_low)
    config.low_yield = float(low_yield)
    config.healthy_min, config.healthy_max = map(float, healthy_yield)
    config.inspect_share = float(inspect_share)
    config.seed = int(seed)
    try:
        sim = _core.simulate(config)
    except ValueError as exc:
        raise InputError(f"simulate: {exc}") from exc

    used = np.bincount(sim["machine"], minlength=n_machines) > 0  # unused machines are not in the data
    width = len(str(n_machines))
    names = np.array([f"M{m + 1:0{width}d}" for m in range(n_machines)], dtype=object)
    new_index = np.cumsum(used) - 1
    data = ProductionData(
        batch_ids=_frozen(np.array([f"B{b + 1:06d}" for b in range(n_batches)], dtype=object)),
        machine_ids=_frozen(names[used]),
        batch_ptr=_frozen(sim["batch_ptr"]),
        machine=_frozen(new_index[sim["machine"]].astype(np.int32)),
        pieces_in=_frozen(sim["pieces_in"]),
        defects=_frozen(sim["defects"]),
        inspects=_frozen(sim["inspects"]),
        source=f"simulate(seed={seed})",
    )
    data.core  # noqa: B018  (validates the arrays in the core)
    truth = pd.DataFrame(
        {
            "machine": names,
            "yield": sim["yield"],
            "low_yield": sim["low"].astype(bool),
            "has_inspection": sim["has_inspection"].astype(bool),
            "miss_rate": sim["miss_rate"],
            "defects_made": sim["defects_made"],
            "in_data": used,
        }
    )
    return Simulation(data, truth)
