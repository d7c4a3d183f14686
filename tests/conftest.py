"""Project-wide test settings."""

import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
