"""Which machines are making bad product? Machine yields and inspection miss rates from batch routes
and detected defect counts (Adipraja et al., IEEE TSMC 2024), with baselines, a simulator and
sizing by simulation.

>>> from fabguard.machine_yield import LowYieldDetector, simulate
>>> sim = simulate(n_machines=50, n_batches=1000, n_low=3, seed=1)
>>> LowYieldDetector(seed=1).fit(sim.data).low_yield_machines_  # doctest: +SKIP
"""

from fabguard.machine_yield.baselines import CommonalityAnalysis, GLMYieldEstimator
from fabguard.machine_yield.data import ProductionData, load_production
from fabguard.machine_yield.detector import LowYieldDetector
from fabguard.machine_yield.report import YieldReport
from fabguard.machine_yield.simulate import Simulation, simulate
from fabguard.machine_yield.sizing import batches_needed

__all__ = [
    "CommonalityAnalysis",
    "GLMYieldEstimator",
    "LowYieldDetector",
    "ProductionData",
    "Simulation",
    "YieldReport",
    "batches_needed",
    "load_production",
    "simulate",
]
