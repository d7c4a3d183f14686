"""A fourth detector is one class plus one registration line: the CLI, loading, evaluation and export
find it through the registry (the trivial detector below exists only for this test)."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from fabguard import registry
from fabguard.anomaly.base import CLIOption, Detector
from fabguard.cli import main
from fabguard.params import Interval


class MeanImageDistance(nn.Module):
    """Per-pixel |x - mean image| ** power, averaged over channels; the score is its mean."""

    def __init__(self, size: int, power: float):
        super().__init__()
        self.power = power
        self.register_buffer("mean", torch.zeros(3, size, size))

    def forward(self, images):
        heatmap = (images - self.mean).abs().pow(self.power).mean(1)
        return heatmap.flatten(1).mean(1), heatmap


class MeanDistanceDetector(Detector):
    kind = "mean-distance"
    _parameter_constraints = {**Detector._parameter_constraints, "power": [Interval(float, 0, None, "neither")]}
    cli_options = {"power": CLIOption("--power", float, "mean-distance: exponent of the pixel distance (default 2)")}

    def __init__(self, power: float = 2.0, input_size: int = 256, val_fraction: float = 0.2,
                 review_quantile: float = 0.95, reject_quantile: float = 0.995, seed: int = 0):
        self.power = power
        self.input_size = input_size
        self.val_fraction = val_fraction
        self.review_quantile = review_quantile
        self.reject_quantile = reject_quantile
        self.seed = seed

    def _fit(self, train, val, progress):
        module = MeanImageDistance(self.input_size, self.power)
        module.mean.copy_(torch.from_numpy(train.mean(0)))
        return module

    def _new_module(self, state):
        return MeanImageDistance(self.input_size, self.power)

    def reference(self, images, normals=None):
        return np.broadcast_to(self.model_.mean.numpy(), images.shape).copy()


registry.register("detector", "mean-distance", f"{__name__}:MeanDistanceDetector")


def test_a_registered_detector_trains_evaluates_exports_and_inspects_through_the_cli(tmp_path, capsys):
    data, model = tmp_path / "data", tmp_path / "mean.pt"
    assert main(["anomaly", "synthetic", "--out", str(data), "--size", "32", "--train", "12"]) == 0
    assert main(["anomaly", "train", "--model", "mean-distance", "--power", "1.5", "--data", str(data),
                 "--size", "32", "--out", str(model), "--quiet"]) == 0
    loaded = Detector.load(model)
    assert type(loaded) is MeanDistanceDetector and loaded.power == 1.5
    assert main(["anomaly", "evaluate", "--model", str(model), "--data", str(data), "--out",
                 str(tmp_path / "eval"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "all_metrics.json").read_text())
    assert metrics[0]["model"] == "mean-distance" and metrics[0]["params"]["power"] == 1.5
    assert main(["anomaly", "export", "--model", str(model), "--out", str(tmp_path / "mean.onnx")]) == 0
    capsys.readouterr()
    assert main(["anomaly", "inspect", "--artifact", str(tmp_path / "mean.onnx"), str(data / "test" / "good")]) == 0
    assert "mean-distance model" in capsys.readouterr().err


def test_its_flag_belongs_to_it_alone(tmp_path, capsys):
    assert "mean-distance" in registry.available("detector")
    assert main(["anomaly", "train", "--model", "pca", "--power", "3", "--data", str(tmp_path),
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "--power is an option of the mean-distance detector, not of pca" in capsys.readouterr().err
    assert main(["anomaly", "train", "--model", "mean-distance", "--power", "0", "--data", str(tmp_path),
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "--power: the 'power' parameter of MeanDistanceDetector must be" in capsys.readouterr().err
