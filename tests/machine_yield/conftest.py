import pytest

from fabguard.machine_yield import simulate


@pytest.fixture(scope="session")
def small_sim():
    """40 machines, 400 batches, 3 low-yield machines at 0.4."""
    return simulate(n_machines=40, n_batches=400, n_low=3, low_yield=0.4, seed=11)


@pytest.fixture
def table():
    """A valid hand-written table (two batches) as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(
        {
            "batch": ["B1"] * 4 + ["B2"] * 3,
            "step": [1, 2, 3, 4, 1, 2, 3],
            "machine": ["M1", "M2", "M3", "M4", "M2", "M3", "M4"],
            "pieces_in": [100, 100, 98, 98, 50, 50, 49],
            "defects": [0, 2, 0, 3, 0, 1, 2],
        }
    )
