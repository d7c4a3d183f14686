"""fabguard: yield and quality engineering for batch manufacturing.

Subpackages (imported on demand, so that embedding one does not load the others' dependencies):

- ``fabguard.machine_yield``: low-yield machines from batch routes and inspection counts (EM).
- ``fabguard.anomaly``: unsupervised visual anomaly detection with ONNX / TensorRT inference.
- ``fabguard.active``: active inspection with knowledge distillation.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fabguard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
