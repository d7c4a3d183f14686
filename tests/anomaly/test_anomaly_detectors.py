"""The three detectors: they find injected defects, train as specified, and save / load exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.anomaly.conftest import parity_bounds
from fabguard.anomaly.base import Detector, Thresholds, to_gray
from fabguard.anomaly.images import split
from fabguard.anomaly.patchcore import PatchCoreDetector, greedy_coreset
from fabguard.anomaly.pca import PCADetector
from fabguard.anomaly.training import EarlyStopping
from fabguard.anomaly.vae import ConvVAE, VAEDetector, parameter_count
from fabguard.errors import InputError
from fabguard.runtime.parity import float32_bound

KINDS = ("pca", "vae", "patchcore", "feature-vae")


@pytest.mark.parametrize("kind", KINDS)
def test_detectors_separate_defects_from_normals(detectors, test_set, kind):
    scores, heatmaps = detectors[kind].score(test_set.images)
    assert scores.shape == (len(test_set),) and heatmaps.shape == test_set.masks.shape
    assert np.isfinite(scores).all() and (heatmaps >= 0).all()
    assert roc_auc_score(test_set.labels, scores) >= 0.9
    assert roc_auc_score(test_set.masks.ravel(), heatmaps.ravel()) >= 0.8


@pytest.mark.parametrize("kind", KINDS)
def test_thresholds_come_from_held_out_normals_and_pass_new_normals(detectors, normals, test_set, kind):
    detector = detectors[kind]
    assert detector.n_val_ == 6 and detector.n_train_ == 24  # 30 normal images, 80 / 20
    # the thresholds are quantiles of the scores of the held-out images (not of the training images,
    # which a memory bank or an autoencoder fits more closely): recomputed here from those images
    train, val = split(len(normals), detector.val_fraction, detector.seed)
    held_out, _ = detector.score(normals.images[val])
    np.testing.assert_array_equal(held_out, detector.val_scores_)
    assert detector.thresholds_ == Thresholds.calibrate(held_out, 0.95, 0.995)
    training, _ = detector.score(normals.images[train])
    assert detector.thresholds_ != Thresholds.calibrate(training, 0.95, 0.995)


def test_calibrated_thresholds_flag_new_normals_at_about_the_target_rate():
    """40 validation images, REVIEW at their 0.9 quantile (the 37th of 40: 3 above it), 200 new normals.
    If the 240 scores are exchangeable, the share of new normals above the threshold is Beta(4, 37)
    distributed (mean 9.8%), above 25% with probability < 1%; a share of 50 or more flagged means
    thresholds that do not come from held-out normals."""
    from fabguard.anomaly.synthetic import synthetic_set

    images = synthetic_set(100, 0, 32, seed=3).images
    detector = PCADetector(n_components=8, input_size=32, val_fraction=0.4, review_quantile=0.9,
                           reject_quantile=0.99).fit(images)
    assert detector.n_val_ == 40
    scores, _ = detector.score(synthetic_set(200, 0, 32, seed=4).images)
    assert (detector.decide(scores) != "PASS").sum() < 50


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_exact(detectors, test_set, kind, tmp_path):
    detector = detectors[kind]
    detector.save(tmp_path / "m.pt")
    loaded = Detector.load(tmp_path / "m.pt")
    assert type(loaded) is type(detector) and loaded.get_params() == detector.get_params()
    assert loaded.thresholds_ == detector.thresholds_ and loaded.fingerprint_ == detector.fingerprint_
    a, b = detector.score(test_set.images), loaded.score(test_set.images)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_fit_warns_when_validation_is_too_small_for_the_quantile(normals):
    with pytest.warns(UserWarning, match="largest of the 6 validation scores"):
        PCADetector(n_components=3, input_size=64).fit(normals.images)  # 6 < 1 / (1 - 0.95)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PCADetector(n_components=3, input_size=64, review_quantile=0.5).fit(normals.images)


def test_reference_images_have_the_image_shape(detectors, test_set, normals):
    for detector in detectors.values():
        ref = detector.reference(test_set.images[:2], normals.images)
        assert ref.shape == (2, 3, 64, 64) and ref.min() >= 0 and ref.max() <= 1


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a fabguard anomaly model"):
        Detector.load(tmp_path / "x.pt")
    with pytest.raises(InputError, match="no such model file"):
        Detector.load(tmp_path / "missing.pt")


def test_unfitted_and_wrong_size_inputs(detectors):
    with pytest.raises(InputError, match="not fitted"):
        PCADetector().score(np.zeros((1, 3, 256, 256), np.float32))
    with pytest.raises(InputError, match="size 64x64"):
        detectors["pca"].score(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="NaN"):
        detectors["vae"].fit(np.full((4, 3, 64, 64), np.nan, np.float32))


def test_pca_scoring_matches_scikit_learn(normals, test_set):
    from sklearn.decomposition import PCA

    detector = PCADetector(n_components=5, input_size=64, seed=1).fit(normals.images)
    train, _ = split(len(normals), 0.2, 1)
    x = to_gray(torch.from_numpy(normals.images[train])).flatten(1).numpy()
    pca = PCA(5, random_state=1).fit(x)
    t = to_gray(torch.from_numpy(test_set.images)).flatten(1).numpy()
    expected = ((t - pca.inverse_transform(pca.transform(t))) ** 2).mean(1)
    # the same float32 arithmetic in another order: the parity bound of the PCA graph applies
    bound, _ = parity_bounds(detector, test_set.images)
    np.testing.assert_allclose(detector.score(test_set.images)[0], expected, rtol=0, atol=bound)
    with pytest.raises(InputError, match="needs at least that many training images"):
        PCADetector(n_components=25, input_size=64).fit(normals.images)


def test_vae_within_parameter_budget_and_shapes():
    net = ConvVAE(256)
    assert parameter_count(net) < 15_000_000
    assert net.mu.out_features == 128
    scores, heatmaps, mu = net.eval()(torch.rand(2, 3, 256, 256))
    assert scores.shape == (2,) and heatmaps.shape == (2, 256, 256) and mu.shape == (2, 128)


def test_vae_training_log_annealing_and_best_checkpoint(detectors, normals):
    vae = detectors["vae"]
    history = vae.history_
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {"train_recon", "train_kl", "train_total", "val_recon", "beta", "lr"} <= set(history[0])
    assert [h["beta"] for h in history] == [vae.beta_at(e) for e in range(3)] == [0.0, 0.1, 0.2]
    for h in history:
        # per batch, total = recon + beta * kl in float32 (two roundings of non-negative terms), then
        # averaged in float64: off by at most 2 u (recon + beta kl)
        expected = h["train_recon"] + h["beta"] * h["train_kl"]
        assert h["train_total"] == pytest.approx(expected, rel=0, abs=float32_bound(expected, 2))
    assert history[0]["lr"] == 1e-3 and history[-1]["lr"] < history[0]["lr"]  # epoch 1: the lr given, unchanged
    assert vae.best_epoch_ == 1 + int(np.argmin([h["val_recon"] for h in history]))


def test_early_stopping_keeps_best_state_and_stops_after_patience():
    net = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(patience=2)
    assert not stopper.step(1, 5.0, net)
    with torch.no_grad():
        net.weight.fill_(7.0)
    assert not stopper.step(2, 4.0, net)
    with torch.no_grad():
        net.weight.fill_(9.0)
    assert not stopper.step(3, 4.5, net)
    assert stopper.step(4, 4.0, net)  # equal is no improvement
    assert stopper.best_epoch == 2 and stopper.best_state["weight"].item() == 7.0


def test_vae_input_size_must_fit_the_architecture(normals):
    with pytest.raises(InputError, match="multiple of 16"):
        VAEDetector(input_size=40).fit(normals.images[:, :, :40, :40])


def test_greedy_coreset_covers_outliers_and_is_seeded():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.01, (500, 4)), [[10, 0, 0, 0], [0, -10, 0, 0], [0, 0, 10, 10]]])
    features = torch.tensor(points, dtype=torch.float32)
    chosen = greedy_coreset(features, 4, seed=0)
    assert {500, 501, 502} <= set(chosen.tolist())
    assert len(set(chosen.tolist())) == 4
    assert torch.equal(chosen, greedy_coreset(features, 4, seed=0))


def test_patchcore_memory_bank_size_and_validation(detectors, normals):
    pc = detectors["patchcore"]
    n_patches = 24 * (64 // 8) ** 2
    assert len(pc.model_.bank) == round(0.25 * n_patches)
    assert pc.model_.bank.shape[1] == 40 + 192
    with pytest.raises(InputError, match="multiple of 32"):
        PatchCoreDetector(input_size=64, crop_size=48).fit(normals.images)
    with pytest.raises(InputError, match="coreset_ratio"):
        PatchCoreDetector(input_size=64, crop_size=None, coreset_ratio=0).fit(normals.images)
    with pytest.raises(InputError, match="feature layers"):
        PatchCoreDetector(input_size=64, crop_size=None, layers=(14, 4)).fit(normals.images)


def test_public_api():
    import fabguard.anomaly as api

    assert getattr(api, "__file__", None), (
        "fabguard/anomaly/__init__.py was not loaded: the editable install's file map predates it; "
        "re-run `pip install -e . --no-build-isolation`")
    for name in api.__all__:
        assert getattr(api, name) is not None
    assert api.PCADetector is PCADetector and api.load_detector is Detector.load
    with pytest.raises(AttributeError):
        api.NoSuchThing
