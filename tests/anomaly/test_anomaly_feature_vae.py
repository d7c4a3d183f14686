"""The feature-space VAE (issue 12): its architecture and budget, training recipe, latent space, heatmap,
and the CLI from training to the inspector's latent vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fabguard.anomaly.base import Detector
from fabguard.anomaly.feature_vae import FeatureVAEDetector
from fabguard.anomaly.runtime import Inspector
from fabguard.anomaly.vae import parameter_count
from fabguard.cli import main
from fabguard.errors import InputError, InvalidParameterError

from tests.anomaly.conftest import latent_bound


def test_the_case_study_architecture_fits_the_budget_with_a_128_dim_latent():
    """At 256 x 256 (224 crop): 232 x 28 x 28 features -> 128 x 7 x 7 -> latent 128; the trained part is the
    issue's 4.7M parameters, backbone included the model stays far under the case study's 15M."""
    net = FeatureVAEDetector().check_params()._module(pretrained=False).eval()
    trained = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("features."))
    assert trained == 4_720_488 and parameter_count(net) < 15_000_000
    with torch.inference_mode():
        f = net.embed(torch.rand(2, 3, 256, 256))
        score, heatmap, mu = net(torch.rand(2, 3, 256, 256))
        assert f.shape == (2, 232, 28, 28) and net.decode(mu).shape == f.shape
    assert score.shape == (2,) and heatmap.shape == (2, 256, 256) and mu.shape == (2, 128)


def test_training_follows_the_recipe_and_keeps_the_best_epoch(detectors, normals):
    detector = detectors["feature-vae"]
    history = detector.history_
    assert [h["beta"] for h in history[:3]] == pytest.approx([0.0, 0.01, 0.02])  # 0 -> 0.1 over 10 epochs
    assert history[0]["lr"] == pytest.approx(1e-3) and history[-1]["lr"] < history[0]["lr"]  # cosine
    best = min(history, key=lambda h: h["val_recon"])
    assert detector.best_epoch_ == best["epoch"]
    assert history[-1]["train_recon"] < history[0]["train_recon"]
    # the restored weights are the best epoch's: its validation loss, recomputed from the posterior mean
    from fabguard.anomaly.feature_vae import feature_vae_loss
    from fabguard.anomaly.images import split

    m = detector.model_
    _, val = split(len(normals), detector.val_fraction, detector.seed)
    with torch.inference_mode():
        f = m.embed(torch.from_numpy(normals.images[val]))
        recon = float(feature_vae_loss(m, f, 0.0, sample=False)[0])
    assert recon == best["val_recon"]  # the same computation on the same batch: bit for bit


def test_standardisation_uses_training_statistics(detectors, normals):
    from fabguard.anomaly.images import split

    detector = detectors["feature-vae"]
    m, batch = detector.model_, detector.batch_size
    train, val = split(len(normals), detector.val_fraction, detector.seed)
    images = torch.from_numpy(normals.images[train])
    # The training features again, in the batches training used: the same float32 operations on the same
    # inputs, so the same bits (another batching would reorder the backbone's sums).
    with torch.inference_mode():
        raw = detector._features(m, normals.images[train], progress=False).double()
        f = torch.cat([m.embed(images[s:s + batch]) for s in range(0, len(images), batch)]).double()
    assert torch.equal(m.mean, raw.mean((0, 2, 3)).float())  # the training split's statistics, bit for bit
    assert torch.equal(m.std, raw.std((0, 2, 3)).float().clamp_min(1e-6))
    with torch.inference_mode():
        everything = detector._features(m, normals.images[np.concatenate([train, val])], progress=False)
    assert not torch.equal(m.mean, everything.double().mean((0, 2, 3)).float())  # not those of all images
    # Standardised, those features have mean 0 and sd 1 but for float32 rounding (u = 2^-24). The buffers are
    # the float64 statistics M, S rounded once (m = M (1 + e), s = S (1 + e'), |e|, |e'| <= u), and each value
    # z = fl(fl(x - m) / s) is y = (x - m) / s times (1 + r), |r| <= d = 2u + u^2. So mean(z) is mean(y) =
    # (M - m) / s, at most u |m| / s to first order, plus at most d mean|z|; sd(z) is sd(y) = S / s, within
    # u of 1 to first order, plus at most d rms(z) sqrt(n / (n - 1)) (the sd is a seminorm: it moves by at
    # most the change's rms, with n - 1 for n). Doubling each first-order term covers the second-order ones
    # and the float64 sums' rounding (n 2^-53 relative, checked below to be far under u).
    u, n = 2.0**-24, f[:, 0].numel()
    assert n * 2.0**-53 < u / 100
    d = 2 * u + u * u
    mean, sd = f.mean((0, 2, 3)), f.std((0, 2, 3))
    abs_mean, rms = f.abs().mean((0, 2, 3)), f.pow(2).mean((0, 2, 3)).sqrt()
    assert torch.all(mean.abs() <= 2 * (u * m.mean.double().abs() / m.std.double() + d * abs_mean))
    kept = m.std > 1e-6  # a constant channel's sd is clamped, not rescaled to 1
    assert kept.sum() > 0.9 * len(kept)
    assert torch.all(((sd - 1).abs() <= 2 * (u + d * rms * (n / (n - 1)) ** 0.5))[kept])


def test_position_errors_are_relative_to_the_training_mean_error(detectors, normals):
    """``scale`` is each position's mean squared error over the training images (what ``_fit`` used): the
    training images' relative errors then average 1 at every position."""
    from fabguard.anomaly.images import split

    detector = detectors["feature-vae"]
    m, batch = detector.model_, detector.batch_size
    train, _ = split(len(normals), detector.val_fraction, detector.seed)
    images = torch.from_numpy(normals.images[train])
    with torch.inference_mode():  # the batches training used: the same float32 operations, the same bits
        f = torch.cat([m.embed(images[s:s + batch]) for s in range(0, len(images), batch)])
        raw = torch.cat([m.squared_errors(x, m.encode(x)[0]) for x in f.split(batch)])
        relative = torch.cat([m.position_errors(x, m.encode(x)[0]) for x in f.split(batch)])
    assert m.scale.shape == raw.shape[1:] and torch.equal(m.scale, raw.double().mean(0).float())
    assert not torch.equal(m.scale, torch.full_like(m.scale, float(m.scale.mean())))  # it varies by position
    # relative = fl(raw / scale): one rounding each (u = 2^-24), and scale the float64 mean rounded once, so
    # the float64 mean of relative is 1 within 2u + u^2 (doubled for the float64 sum's own rounding)
    u = 2.0**-24
    torch.testing.assert_close(relative.double().mean(0), torch.ones_like(m.scale, dtype=torch.float64),
                               rtol=0, atol=2 * (2 * u + u * u))


def test_a_model_saved_without_the_position_scale_is_refused_clearly(detectors):
    state = {k: v for k, v in detectors["feature-vae"].model_.state_dict().items() if k != "scale"}
    with pytest.raises(InputError, match="no 'scale' in its state"):
        detectors["feature-vae"]._new_module(state)


def test_score_is_the_largest_position_error_and_the_heatmap_its_smoothed_map(detectors, test_set):
    detector = detectors["feature-vae"]
    m = detector.model_
    images = torch.from_numpy(test_set.images)
    with torch.inference_mode():
        f = m.embed(images)
        err = m.position_errors(f, m.encode(f)[0])
        score, heatmap, _ = m(images)
    torch.testing.assert_close(score, err.flatten(1).amax(1))
    # a normalised blur of the upsampled map: within the map's range, peak where the error peaks
    assert float(heatmap.max()) <= float(err.max()) + 1e-6 and float(heatmap.min()) >= float(err.min()) - 1e-6
    m.aggregation = "mean"
    try:
        with torch.inference_mode():
            mean_score = m(images)[0]
    finally:
        m.aggregation = "max"
    torch.testing.assert_close(mean_score, err.flatten(1).mean(1))


def test_latent_is_the_posterior_mean_and_separates_defects(detectors, test_set):
    detector = detectors["feature-vae"]
    mu = detector.latent(test_set.images, batch_size=3)
    with torch.inference_mode():
        expected = detector.model_.encode(detector.model_.embed(torch.from_numpy(test_set.images)))[0].numpy()
    # batches of 3 vs one batch of 16: the convolutions may sum in another order, as another runtime would
    assert np.abs(mu - expected).max() <= latent_bound(detector, test_set.images)
    np.testing.assert_array_equal(mu, detector.latent(test_set.images, batch_size=3))  # deterministic
    with pytest.raises(InputError, match="the pca detector has no latent space"):
        detectors["pca"].latent(test_set.images)


def test_reference_is_the_nearest_normal_in_the_latent_space(detectors, normals, test_set):
    detector = detectors["feature-vae"]
    ref = detector.reference(test_set.images[:3], normals.images)
    a, b = detector.latent(test_set.images[:3]), detector.latent(normals.images)
    np.testing.assert_array_equal(ref, normals.images[((a[:, None] - b[None]) ** 2).sum(-1).argmin(1)])
    with pytest.raises(InputError, match="needs the normal"):
        detector.reference(test_set.images[:1], None)


@pytest.mark.parametrize("params, name", [
    ({"crop_size": 48}, "crop_size"),  # a multiple of the stride 32? no
    ({"layers": (14,), "crop_size": None}, "crop_size"),  # grid 64 / 32 = 2: not halved twice
    ({"latent_dim": 0}, "latent_dim"), ({"beta": -1.0}, "beta"), ({"aggregation": "median"}, "aggregation"),
    ({"batch_size": 1}, "batch_size"), ({"pool": 2}, "pool"), ({"layers": (14, 4)}, "layers"),
])
def test_bad_parameters_are_refused_before_work(normals, params, name):
    detector = FeatureVAEDetector(input_size=64, **params)
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of FeatureVAEDetector"):
        detector.fit(normals.images)
    assert not hasattr(detector, "model_")


@pytest.mark.parametrize("train_loss, val_loss, message", [
    (float("inf"), 0.0, "feature VAE training diverged at epoch 1"),
    (1.0, float("nan"), r"feature VAE validation loss was never finite \(nan\)"),
])
def test_the_shared_training_loop_refuses_non_finite_losses(train_loss, val_loss, message):
    """Both VAEs train through fabguard.anomaly.training; a non-finite loss is an error, not a saved model."""
    detector = FeatureVAEDetector(epochs=3, batch_size=2, patience=1)
    net = torch.nn.Linear(1, 1)

    def batch_loss(index, beta, generator):
        loss = net.weight.sum() * 0 + train_loss
        return loss, loss, loss

    with pytest.raises(InputError, match=message):
        detector._train(net, list(net.parameters()), 4, batch_loss, lambda: torch.tensor(val_loss), False,
                        "feature VAE")


def test_seeded_training_is_reproducible(normals):
    a = FeatureVAEDetector(input_size=64, crop_size=None, epochs=2, batch_size=8, seed=3).fit(normals.images[:12])
    b = FeatureVAEDetector(input_size=64, crop_size=None, epochs=2, batch_size=8, seed=3).fit(normals.images[:12])
    np.testing.assert_array_equal(a.val_scores_, b.val_scores_)
    assert a.history_ == b.history_


def test_cli_train_evaluate_export_inspect(tmp_path, capsys):
    data, model, onnx_path = tmp_path / "data", tmp_path / "fv.pt", tmp_path / "fv.onnx"
    assert main(["anomaly", "synthetic", "--out", str(data), "--size", "32", "--train", "10"]) == 0
    assert main(["anomaly", "train", "--model", "feature-vae", "--data", str(data), "--size", "32",
                 "--crop", "0", "--epochs", "3", "--batch-size", "4", "--latent", "16", "--aggregation", "mean",
                 "--beta", "0.5", "--out", str(model), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "feature-vae: trained on 8 images" in out and "best epoch" in out
    assert (tmp_path / "fv_loss.png").stat().st_size > 0
    loaded = Detector.load(model)
    assert type(loaded) is FeatureVAEDetector
    assert (loaded.latent_dim, loaded.aggregation, loaded.beta, loaded.crop_size) == (16, "mean", 0.5, None)
    assert main(["anomaly", "evaluate", "--model", str(model), "--data", str(data), "--out",
                 str(tmp_path / "eval"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "all_metrics.json").read_text())
    assert metrics[0]["model"] == "feature-vae" and (tmp_path / "eval" / "fv" / "loss_curves.png").is_file()
    assert main(["anomaly", "export", "--model", str(model), "--out", str(onnx_path)]) == 0
    assert "max |latent diff|" in capsys.readouterr().out
    result = Inspector(onnx_path).inspect(sorted((data / "test" / "good").iterdir())[:2])
    assert result.latents.shape == (2, 16)
    assert main(["anomaly", "train", "--model", "pca", "--latent", "8", "--data", str(data),
                 "--out", str(tmp_path / "p.pt")]) == 2
    assert "--latent is an option of the feature-vae detector, not of pca" in capsys.readouterr().err
