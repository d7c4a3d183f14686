"""Shared fixtures: a small synthetic MVTec-layout dataset (64x64) and detectors fitted on it once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall small ops on shared CPUs

SIZE = 64


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from fabguard.anomaly.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "wafer", size=SIZE, n_train=30, n_test_good=8,
                        n_test_defect=4, seed=0)


@pytest.fixture(scope="session")
def normals(synthetic_root):
    from fabguard.anomaly.images import load_dataset

    return load_dataset(synthetic_root, SIZE, "train")


@pytest.fixture(scope="session")
def test_set(synthetic_root):
    from fabguard.anomaly.images import load_dataset

    return load_dataset(synthetic_root, SIZE, "test")


@pytest.fixture(scope="session")
def detectors(normals) -> dict:
    """One small fitted detector of each kind."""
    from fabguard.anomaly.feature_vae import FeatureVAEDetector
    from fabguard.anomaly.patchcore import PatchCoreDetector
    from fabguard.anomaly.pca import PCADetector
    from fabguard.anomaly.vae import VAEDetector

    return {
        "pca": PCADetector(n_components=8, input_size=SIZE).fit(normals.images),
        "vae": VAEDetector(epochs=3, batch_size=8, input_size=SIZE).fit(normals.images),
        "patchcore": PatchCoreDetector(input_size=SIZE, crop_size=None, coreset_ratio=0.25).fit(normals.images),
        "feature-vae": FeatureVAEDetector(input_size=SIZE, crop_size=None, epochs=15, batch_size=8).fit(normals.images),
    }


@pytest.fixture(scope="session")
def artifacts(detectors, tmp_path_factory) -> dict:
    """Each detector exported to ONNX."""
    from fabguard.anomaly.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    return {kind: export_onnx(d, folder / f"{kind}.onnx") for kind, d in detectors.items()}


def chain_bound(module, images) -> float:
    """float32 bound (``fabguard.runtime.parity.float32_bound``) on how far two runtimes can differ in a
    value computed by ``module`` on ``images``, summed over its layers as a chain adds its layers' bounds.

    Every Conv2d / ConvTranspose2d / Linear output is a sum of fan-in terms ``w * x`` (plus a bias): depth
    = the fan-in, scale = the largest ``sum |w| |x| + |b|`` over the layer's outputs on these images
    (computed here with the absolute weights on the absolute inputs). Activations, pooling and
    normalisation between them are contractions or constant affine maps folded into the convolutions.
    """
    import torch
    from torch import nn
    from fabguard.runtime.parity import float32_bound

    terms, busy = [], []

    def hook(layer, inputs, _output):
        if busy:  # the call below runs the layer (and so this hook) once more
            return
        busy.append(layer)
        params = {"weight": layer.weight.abs()}
        if layer.bias is not None:
            params["bias"] = layer.bias.abs()
        # the layer's own forward (padding included) with |w|, |b| on |x|: sum |w| |x| + |b| per output
        scale = float(torch.func.functional_call(layer, params, (inputs[0].abs(),)).max())
        busy.clear()
        # weight: Linear (out, in); Conv2d (out, in / groups, kh, kw); ConvTranspose2d (in, out / groups, kh, kw)
        w = layer.weight
        if isinstance(layer, nn.ConvTranspose2d):
            depth = w.shape[0] // layer.groups * w.shape[2] * w.shape[3]
        else:
            depth = w[0].numel()
        terms.append(float32_bound(scale, depth))

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.inference_mode():
            module(torch.from_numpy(images))
    finally:
        for handle in handles:
            handle.remove()
    return sum(terms)


def parity_bounds(detector, images) -> tuple[float, float]:
    """(score bound, heatmap bound): how far ONNX Runtime and PyTorch may differ on ``images``, from the
    float32 arithmetic of the detector's graph (scale and depth of each reduction argued below)."""
    return _bounds(detector, images)[:2]


def latent_bound(detector, images) -> float:
    """How far ONNX Runtime and PyTorch may differ in the latent output (posterior mean) on ``images``."""
    return _bounds(detector, images)[2]


def _bounds(detector, images) -> tuple[float, float, float]:
    import numpy as np
    import torch

    from fabguard.anomaly.base import to_gray
    from fabguard.runtime.parity import float32_bound

    size = detector.input_size
    scores, heat = detector.score(images)
    # the score is the mean (PCA, VAE) of S*S heatmap values >= 0 or the max (PatchCore) of patch
    # distances: its own reduction has depth S*S and sum|x| / (S*S) = the score
    mean_term = float32_bound(float(np.abs(scores).max()), size * size)
    if detector.kind == "pca":
        m = detector.model_
        with torch.inference_mode():
            x = to_gray(torch.from_numpy(images)).flatten(1).double() - m.mean.double()
            c = m.components.double()
            z = x @ c.T  # projection: depth S*S, scale sum_j |x_j - mean_j| |c_kj|
            project = float32_bound(float((x.abs() @ c.abs().T).max()), size * size)
            # back-projection: depth = components, scale sum_k |z_k| |c_kj|, plus the projection's
            # error carried through sum_k |c_kj| (and the grey conversion, 3 terms of size <= 1)
            recon = float32_bound(float((z.abs() @ c.abs()).max()), c.shape[0]) + project * float(c.abs().sum(0).max())
            residual = float((x - z @ c).abs().max())
        recon += float32_bound(1.0, 3)
        heat_bound = 2 * residual * recon + recon ** 2  # d(r^2) <= 2 |r| dr + dr^2
        return heat_bound + mean_term, heat_bound, 0.0
    chain = chain_bound(detector.model_, images)
    if detector.kind == "patchcore":
        m = detector.model_
        with torch.inference_mode():
            f = m.embed(torch.from_numpy(images))
            q = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) - m.center
            # |q|^2 - 2 q.b + |b|^2 over D features: scale |q|^2 + 2 |q|.|b| + |b|^2 <= (|q| + max |b|)^2
            reach = float((q.norm(dim=1).max() + m.bank.norm(dim=1).max()) ** 2)
        # a distance is 1-Lipschitz in the features: the backbone's error counts sqrt(D) times; the squared
        # distance's own rounding error e moves the distance by at most sqrt(e)
        dist = (f.shape[1] ** 0.5) * chain + float32_bound(reach, f.shape[1]) ** 0.5
        return dist, dist, 0.0  # max, bilinear upsampling and a normalised blur do not enlarge it
    if detector.kind == "feature-vae":
        m = detector.model_
        with torch.inference_mode():
            f = m.embed(torch.from_numpy(images))
            mu, _ = m.encode(f)
            raw = m.squared_errors(f, mu)
            err = raw / m.scale
            residual = float((f - m.decode(mu)).abs().max())
        # the standardisation (x - mean) / std scales the backbone's error by 1 / std; the features f and
        # their reconstruction r are then each within delta, so (f - r)^2 within 2 |f - r| 2 delta + (2 delta)^2;
        # the mean over D channels adds its own reduction (depth D, sum|x| / D <= the largest error); dividing
        # by the per-position training mean scales that by at most 1 / min(scale) and rounds once more
        delta = chain / min(1.0, float(m.std.min()))
        raw_bound = 4 * residual * delta + 4 * delta ** 2 + float32_bound(float(raw.max()), f.shape[1])
        err_bound = raw_bound / float(m.scale.min()) + float32_bound(float(err.max()), 1)
        # max: no new error (mean: its own reduction over h * w positions); upsampling and the normalised
        # blur do not enlarge it
        score_bound = err_bound + (float32_bound(float(err.max()), err[0].numel()) if m.aggregation == "mean" else 0)
        return score_bound, err_bound, delta
    # VAE: the chain ends in a sigmoid (slope <= 1/4) and a squared error of values in [0, 1] (slope <= 2);
    # the latent (posterior mean) is an output inside the chain
    heat_bound = 2 * 0.25 * chain
    return heat_bound + mean_term, heat_bound, chain
