"""The simulator follows Table V and is reproducible."""

import numpy as np
import pandas as pd
import pytest

from fabguard.errors import InputError
from fabguard.machine_yield import simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(100, 1500, 4, 0.4, seed=9)


def test_reproducible_and_seeded(sim):
    again = simulate(100, 1500, 4, 0.4, seed=9)
    pd.testing.assert_frame_equal(sim.data.to_frame(), again.data.to_frame())
    pd.testing.assert_frame_equal(sim.truth, again.truth)
    other = simulate(100, 1500, 4, 0.4, seed=10)
    assert not sim.data.to_frame().equals(other.data.to_frame())


def test_fewer_batches_are_a_prefix(sim):
    short = simulate(100, 500, 4, 0.4, seed=9)
    long = sim.data.to_frame()
    pd.testing.assert_frame_equal(short.data.to_frame(), long.iloc[: short.data.n_rows].reset_index(drop=True))
    pd.testing.assert_frame_equal(short.truth.drop(columns=["defects_made", "in_data"]),
                                  sim.truth.drop(columns=["defects_made", "in_data"]))


def test_table_v(sim):
    data, truth = sim.data, sim.truth
    lengths = np.diff(data.batch_ptr)
    assert lengths.min() >= 5 and lengths.max() <= 50 and 18 < lengths.mean() < 22
    start = data.start_pieces
    assert start.min() >= 1 and start.max() <= 20000 and 1800 < start.mean() < 2400
    last = data.batch_ptr[1:] - 1
    assert data.inspects[last].all()
    per_batch = np.add.reduceat(data.inspects.astype(int), data.batch_ptr[:-1])
    assert per_batch.min() >= 2
    assert truth["has_inspection"].sum() == 30
    miss = truth.loc[truth["has_inspection"], "miss_rate"]
    assert miss.between(0.0, 0.15).all() and 0.08 < miss.mean() < 0.12
    assert truth.loc[~truth["has_inspection"], "miss_rate"].isna().all()
    assert truth["low_yield"].sum() == 4 and (truth.loc[truth["low_yield"], "yield"] == 0.4).all()
    healthy = truth.loc[~truth["low_yield"], "yield"]
    assert healthy.between(0.998, 1.0).all()
    # a step inspects exactly when its machine has inspection equipment
    has = truth["has_inspection"].to_numpy()[[int(m[1:]) - 1 for m in data.machine_ids]]
    np.testing.assert_array_equal(data.inspects.astype(bool), has[data.machine])


def test_defect_counts_match_the_yields(sim):
    """The binomial draws: total defects made equals its expectation given the routes."""
    data, truth = sim.data, sim.truth
    yields = truth.set_index("machine").loc[data.machine_ids, "yield"].to_numpy()
    log_p = np.log(yields)[data.machine]
    route_yield = np.exp(np.add.reduceat(log_p, data.batch_ptr[:-1]))
    expected = np.sum(data.start_pieces * (1 - route_yield))
    made = truth["defects_made"].sum()
    assert abs(made - expected) < 4 * np.sqrt(expected)
    # detected defects never exceed what was made
    assert data.defects.sum() <= made


def test_unused_machines_are_not_in_the_data():
    sim = simulate(300, 10, 1, seed=1)
    assert sim.data.n_machines == sim.truth["in_data"].sum() < 300


@pytest.mark.parametrize("kwargs", [{"n_machines": 1}, {"n_low": 50}, {"low_yield": 1.5}, {"n_batches": 0},
                                    {"healthy_yield": (0.9, 0.8)}, {"inspect_share": 0.0}])
def test_impossible_configurations(kwargs):
    args = {"n_machines": 20, "n_batches": 10, "n_low": 1} | kwargs
    with pytest.raises(InputError):
        simulate(**args)
