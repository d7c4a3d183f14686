"""The drift reference a model carries: its validation scores and 128-value embeddings.

A fitted detector stores it in its metadata (``drift_reference``), so the exported artifact tells the
service what normal looks like to this model: the line's PASS scores and embeddings are compared with it
(:mod:`fabguard.serve.drift`). Torch-free, like :mod:`fabguard.anomaly.thresholds`: the serving side reads it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fabguard.errors import ModelFileError

EMBEDDING_DIM = 128  # the vector logged per inspection: a 128-wide latent, else the heatmap grid
EMBED_GRID = (8, 16)  # rows x columns of the heatmap grid embedding (8 x 16 = 128 cells)
REFERENCE_ROWS = 512  # validation embeddings kept in the artifact (512 B each as float32)


def grid_embedding(heatmaps) -> np.ndarray:
    """(N, 128) embedding of (N, H, W) heatmaps, for detectors without a 128-wide latent: each heatmap
    averaged over an 8 x 16 grid (rows x columns, row-major; ``numpy.array_split`` cells): where on the
    image the anomaly lies and how strong it is."""
    h = np.asarray(heatmaps)
    (n, height, width), (k_rows, k_cols) = h.shape, EMBED_GRID
    if height % k_rows == 0 and width % k_cols == 0:  # equal cells (256 x 256): half reduceat's time
        cells = h.reshape(n, k_rows, height // k_rows, k_cols, width // k_cols)
        sums = cells.sum(axis=4, dtype=np.float64).sum(axis=2)
        return sums.reshape(n, -1) / (cells.shape[2] * cells.shape[4])
    rows, cols = (np.array_split(np.arange(size), k) for size, k in zip(h.shape[1:], EMBED_GRID))
    # summed in float64 as it goes (no float64 copy of the heatmaps first: a third less time, same sums)
    sums = np.add.reduceat(np.add.reduceat(h, [r[0] for r in rows], axis=1, dtype=np.float64),
                           [c[0] for c in cols], axis=2)
    return (sums / np.outer([len(r) for r in rows], [len(c) for c in cols])).reshape(len(h), -1)


@dataclass(frozen=True)
class DriftReference:
    """The validation images' ``scores`` and their embeddings (``embedding``: "latent", the posterior mean
    of a 128-wide latent, else "heatmap_grid", :func:`grid_embedding`). Row i of ``embeddings`` belongs to
    ``scores[i]`` (the first ``REFERENCE_ROWS`` of the shuffled validation split), so the monitor can keep
    the rows a PASS decision would have kept. As JSON: scores as numbers, embeddings as base64 of float32
    little-endian (as the service logs each inspection's vector)."""

    scores: np.ndarray  # (n_val,) float64
    embedding: str
    embeddings: np.ndarray  # (k, 128) float32, k <= n_val

    KINDS: ClassVar[tuple[str, ...]] = ("latent", "heatmap_grid")
    KEYS: ClassVar[tuple[str, ...]] = ("scores", "embedding", "embedding_rows", "embeddings")

    def as_dict(self) -> dict:
        data = np.ascontiguousarray(self.embeddings, dtype="<f4")
        return {"scores": [float(s) for s in self.scores], "embedding": self.embedding,
                "embedding_rows": len(data), "embeddings": base64.b64encode(data.tobytes()).decode("ascii")}

    @classmethod
    def from_dict(cls, data, where: str) -> "DriftReference":
        """The reference read from a model file or artifact (``where``), checked: a crafted one is refused."""
        if not isinstance(data, dict) or sorted(data) != sorted(cls.KEYS):
            raise ModelFileError(f"{where}: drift_reference must be an object with keys {', '.join(cls.KEYS)}")
        scores = data["scores"]
        if not isinstance(scores, list) or not scores or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise ModelFileError(f"{where}: drift_reference scores must be a non-empty list of finite numbers")
        if data["embedding"] not in cls.KINDS:
            raise ModelFileError(f"{where}: drift_reference embedding must be one of {', '.join(cls.KINDS)}; "
                                 f"got {data['embedding']!r}")
        rows = data["embedding_rows"]
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= len(scores):
            raise ModelFileError(f"{where}: drift_reference embedding_rows must be an integer in "
                                 f"[1, {len(scores)}]; got {rows!r}")
        try:
            raw = base64.b64decode(data["embeddings"], validate=True)
        except (TypeError, ValueError):
            raw = b""
        if len(raw) != rows * EMBEDDING_DIM * 4:
            raise ModelFileError(f"{where}: drift_reference embeddings must be base64 of {rows} x {EMBEDDING_DIM} "
                                 "float32 values")
        embeddings = np.frombuffer(raw, "<f4").reshape(rows, EMBEDDING_DIM).astype(np.float32)
        if not np.isfinite(embeddings).all():
            raise ModelFileError(f"{where}: drift_reference embeddings contain NaN or infinite values")
        return cls(np.asarray(scores, np.float64), data["embedding"], embeddings)
