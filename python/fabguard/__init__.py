"""fabguard: yield and quality engineering for batch manufacturing.

Subpackages (imported on demand, so that embedding one does not load the others' dependencies):

- ``fabguard.machine_yield``: low-yield machines from batch routes and inspection counts (EM).
- ``fabguard.anomaly``: unsupervised visual anomaly detection with ONNX / TensorRT inference.
- ``fabguard.active``: active inspection with knowledge distillation.

Importing ``fabguard`` itself imports nothing else, so that the command line can catch Ctrl-C from its
first moment.
"""

__all__ = ["__version__"]


def __getattr__(name: str):
    if name != "__version__":
        raise AttributeError(f"module 'fabguard' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fabguard")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"
