"""ONNX Runtime vs PyTorch: the largest differences, and the float32 bound they are judged against.

Both backends compute in float32 but may sum in different orders (blocked matrix products, fused
kernels). A sum of ``depth`` terms computed in float32 in any order is within ``(depth - 1) * u * sum|x|``
of the exact sum (``u = 2**-24``, the unit round-off; Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., eq. 4.4), so two orders differ by at most twice that. :func:`float32_bound`
applies it with ``scale`` an upper bound of ``sum|x|``; a chain of layers adds the bounds of its layers.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = 2.0**-24


def float32_bound(scale: float, depth: int) -> float:
    """Largest difference two float32 summation orders of ``depth`` terms with ``sum|x| <= scale`` can give."""
    return 2.0 * max(depth - 1, 1) * UNIT_ROUNDOFF * float(scale)


def max_abs_diff(a, b) -> float:
    """Largest absolute difference of two arrays of the same shape (inf if a value is not finite in one)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)))
