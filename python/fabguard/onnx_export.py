"""What both ONNX exports (anomaly detectors, active-inspection networks) share."""

from __future__ import annotations

import contextlib
import logging
import warnings

OPSET = 18


@contextlib.contextmanager
def quiet_exporter():
    """Silence the dynamo exporter's chatter: a warning per missing torchvision op (none is used here)
    and a deprecation warning from torch's own pytree code; neither concerns the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)
