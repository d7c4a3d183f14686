"""Bounds shared by the active-inspection CLI, estimators, router and model files (light: no torch)."""

from __future__ import annotations

from fabguard.params import Interval

MAX_MEMBERS = 100  # ensemble members per network: deep ensembles gain little past ~10; 100 bounds time and memory
MEMBERS = Interval(int, 1, MAX_MEMBERS)
MAX_THREADS = 1024  # as the yield engine: more threads than any machine has cores only costs memory
THREADS = Interval(int, 1, MAX_THREADS)
