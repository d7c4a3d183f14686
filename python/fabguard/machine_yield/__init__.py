"""Which machines are making bad product? Machine yields and inspection miss rates from batch routes
and detected defect counts (Adipraja et al., IEEE TSMC 2024), with baselines, a simulator and
sizing by simulation.

>>> from fabguard.machine_yield import LowYieldDetector, simulate
>>> sim = simulate(n_machines=50, n_batches=1000, n_low=3, seed=1)
>>> LowYieldDetector(seed=1).fit(sim.data).low_yield_machines_  # doctest: +SKIP

Names are imported on first use (PEP 562), so that importing the package, or building the
``fabguard yield`` command line, loads neither pandas nor scipy; ``simulate`` is imported at once
because the submodule of the same name would otherwise shadow the function.
"""

from importlib import import_module

from fabguard.machine_yield.simulate import Simulation, simulate

_LAZY = {
    "CommonalityAnalysis": "baselines",
    "GLMYieldEstimator": "baselines",
    "LowYieldDetector": "detector",
    "ProductionData": "data",
    "load_production": "data",
    "YieldReport": "report",
    "batches_needed": "sizing",
}

__all__ = sorted([*_LAZY, "Simulation", "simulate"])


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
