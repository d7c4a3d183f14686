"""PyTorch module -> one self-describing ONNX file (needs torch and onnx).

Dynamo exporter, opset 18 (safe for ONNX Runtime and TensorRT), a dynamic batch dimension on the first
input, weights inside the file, fabguard metadata attached, the model checked, and the file written
whole (:func:`~fabguard.outputs.atomic_path`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from fabguard.outputs import atomic_path
from fabguard.runtime.metadata import attach

OPSET = 18


@contextlib.contextmanager
def quiet_exporter():
    """Silence the dynamo exporter's chatter (a warning per missing torchvision op, none of which is
    used, and deprecation warnings from torch's own pytree code); neither concerns the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_module(module, example, path: str | os.PathLike, input_name: str, output_names: Sequence[str],
                  metadata: Mapping, max_batch: int | None = None) -> Path:
    """Export ``module`` (evaluated on the batch tensor ``example``) to ``path`` with ``metadata``."""
    import onnx
    import torch

    batch = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch")
    with quiet_exporter():
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[input_name], output_names=list(output_names),
                                    dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    model = program.model_proto
    attach(model, metadata)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save_model(model, os.fspath(tmp))
    return Path(path)
