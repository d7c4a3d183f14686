"""Shared fixtures: small simulated tables and one fitted system, reused to keep the suite fast."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from fabguard.active.data import mask_unsampled
from fabguard.active.estimator import ActiveInspector
from fabguard.active.simulate import simulate_inspections

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """``shared_data(*parts)``: a path under ../shared/data, or skip the test when it is not there."""

    def locate(*parts) -> Path:
        path = SHARED_DATA.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"{path} not available")
        return path

    return locate


@pytest.fixture(scope="session")
def table():
    """1600 simulated products, every advanced result present, with a 400-product test part."""
    frame, roles = simulate_inspections(n_products=2000, fault_rate=0.08, seed=3)
    return frame.iloc[:1600].copy(), frame.iloc[1600:].copy(), roles


@pytest.fixture(scope="session")
def dev(table):
    """The development part with advanced results kept on 40% of products."""
    frame, _, roles = table
    return mask_unsampled(frame, roles, 0.4, np.random.default_rng(0))


@pytest.fixture(scope="session")
def inspector(dev, table):
    return ActiveInspector(table[2], n_members=2, n_folds=3, random_state=0).fit(dev)


@pytest.fixture(scope="session")
def saved(inspector, tmp_path_factory):
    from fabguard.active.export import save

    directory = tmp_path_factory.mktemp("model")
    return directory, save(inspector, directory)
