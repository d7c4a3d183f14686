"""The case study's convolutional VAE, on pretrained feature maps instead of pixels (issue 12).

A pixel-space VAE reconstructs the fine texture of normal and defective parts alike (transistor image
AUROC 0.78, docs/anomaly.md); on the patch features of an ImageNet backbone, where a defect is a change
of local shape rather than of brightness, the same kind of model separates them. The features are
PatchCore's (:mod:`.backbone`: efficientnet-lite0 blocks 4 and 14 of the 224 centre crop, each
3x3-averaged, the coarse one upsampled: 232 x 28 x 28), standardised per channel with training
statistics. Encoder: two 3x3 stride-2 conv blocks (BatchNorm, LeakyReLU 0.2) to 256 and 128 channels,
flattened (128 x 7 x 7), linear heads to mu and log-variance of the latent (128). Decoder: linear to
128 x 7 x 7, two 4x4 stride-2 transposed convs back to 256 and 232 channels. About 4.7M trained
parameters (plus the frozen backbone).

Training is the case study's recipe, the loop the pixel VAE uses too (:mod:`.training`: AdamW, cosine
learning rate, KL annealing, clipping, early stopping on the validation reconstruction loss with the best
checkpoint kept) with a Gaussian decoder: the loss is the summed squared error of the features + beta * KL,
since features are not in [0, 1]; 60 epochs (20 were measured to be too few, docs/anomaly.md). The
backbone is frozen, so its features are computed once before the first epoch; an epoch is then the VAE
alone (most of it the last transposed conv, 232 x 28 x 28 outputs). Scoring uses the posterior mean: the
per-position error is the mean squared feature error over channels, divided by that position's mean over the
training images (the transistor's leads and case edges are reconstructed less well than the background even
when normal, so a raw error map's maximum sits there: image AUROC 0.981 raw, 0.995 normalised over 5 seeds,
docs/anomaly.md); the image score is its largest (``aggregation="max"``) or mean value; the heatmap is that
map upsampled and smoothed as PatchCore's.
The module's third output is mu, the image's place in the latent space.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fabguard.anomaly.backbone import (
    EfficientNetFeatures,
    block_shapes,
    block_stride,
    check_backbone,
    gaussian_kernel,
    parse_crop,
    parse_layers,
    patch_features,
    patch_heatmap,
)
from fabguard.anomaly.base import CLIOption, Detector
from fabguard.anomaly.training import RECIPE_CONSTRAINTS, VAETraining
from fabguard.errors import InputError, InvalidParameterError
from fabguard.params import NONE, Instance, Interval, Options

CHANNELS = (256, 128)  # the two encoder blocks; the decoder mirrors them
AGGREGATIONS = ("max", "mean")


def _block(layer: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(layer, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2))


class FeatureVAE(nn.Module):
    """RGB batch -> (scores, heatmaps, mu): a VAE over the standardised backbone feature map."""

    def __init__(self, features: EfficientNetFeatures, input_size: int, crop_size: int, pool: int, grid: int,
                 latent_dim: int, sigma: float, aggregation: str):
        super().__init__()
        self.features = features.eval().requires_grad_(False)  # frozen: see ``train``
        self.input_size, self.crop_size, self.pool, self.aggregation = input_size, crop_size, pool, aggregation
        dim = features.channels
        self.side = grid // 2 ** len(CHANNELS)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("scale", torch.ones(grid, grid))  # mean training error per position: ``_fit``
        self.register_buffer("kernel", gaussian_kernel(sigma) if sigma > 0 else torch.ones(1))
        flat = CHANNELS[-1] * self.side ** 2
        self.encoder = nn.Sequential(
            _block(nn.Conv2d(dim, CHANNELS[0], 3, stride=2, padding=1, bias=False), CHANNELS[0]),
            _block(nn.Conv2d(CHANNELS[0], CHANNELS[1], 3, stride=2, padding=1, bias=False), CHANNELS[1]),
            nn.Flatten())
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)
        self.expand = nn.Linear(latent_dim, flat)
        self.decoder = nn.Sequential(
            _block(nn.ConvTranspose2d(CHANNELS[1], CHANNELS[0], 4, stride=2, padding=1, bias=False), CHANNELS[0]),
            nn.ConvTranspose2d(CHANNELS[0], dim, 4, stride=2, padding=1))

    def train(self, mode: bool = True):
        """The backbone stays in eval mode (its BatchNorm keeps the ImageNet statistics): it is frozen."""
        super().train(mode)
        self.features.eval()
        return self

    def embed(self, images):
        """RGB batch -> standardised patch features (N, D, h, w)."""
        f = patch_features(self.features, images, self.input_size, self.crop_size, self.pool)
        return (f - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def encode(self, f):
        h = self.encoder(f)
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        return self.decoder(self.expand(z).view(-1, CHANNELS[-1], self.side, self.side))

    def squared_errors(self, f, z):
        """Mean squared feature error per position (N, h, w) of the reconstruction from ``z``."""
        return ((f - self.decode(z)) ** 2).mean(1)

    def position_errors(self, f, z):
        """``squared_errors`` relative to each position's mean over the training images (``scale``)."""
        return self.squared_errors(f, z) / self.scale

    def forward(self, images):
        f = self.embed(images)
        mu, _ = self.encode(f)
        err = self.position_errors(f, mu)
        score = err.flatten(1).amax(1) if self.aggregation == "max" else err.flatten(1).mean(1)
        return score, patch_heatmap(err, self.kernel, self.input_size, self.crop_size), mu


def feature_vae_loss(net: FeatureVAE, f, beta: float, sample: bool = True):
    """Per-image means over the batch: squared error summed over the feature map, KL summed over latent dims."""
    mu, logvar = net.encode(f)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
    recon = ((f - net.decode(z)) ** 2).sum() / len(f)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(f)
    return recon, kl, recon + beta * kl


class FeatureVAEDetector(VAETraining, Detector):
    """Convolutional VAE on efficientnet-lite0 feature maps, trained with the case study's recipe."""

    kind = "feature-vae"
    reference_label = "nearest normal (latent)"
    has_latent = True
    loss_label = "squared feature error"
    _parameter_constraints: ClassVar[dict] = {
        **Detector._parameter_constraints,
        "layers": [Instance((tuple, list))],
        "crop_size": [NONE, Interval(int, 1, None)],
        "pool": [Interval(int, 1, None)],
        "latent_dim": [Interval(int, 1, None)],
        **RECIPE_CONSTRAINTS,
        "sigma": [Interval(float, 0, None)],
        "aggregation": [Options(AGGREGATIONS)],
    }
    cli_options: ClassVar[dict[str, CLIOption]] = {
        "epochs": CLIOption("--epochs", int, "feature-vae: maximum epochs (default 60)"),
        "beta": CLIOption("--beta", float, "feature-vae: KL weight after annealing (default 0.1)"),
        "batch_size": CLIOption("--batch-size", int, "feature-vae: batch size (default 16)"),
        "patience": CLIOption("--patience", int, "feature-vae: early-stopping patience in epochs (default 10)"),
        "latent_dim": CLIOption("--latent", int, "feature-vae: latent size (default 128)"),
        "aggregation": CLIOption("--aggregation", str, "feature-vae: image score from the position errors: "
                                 "largest or mean (default max)", AGGREGATIONS),
        "crop_size": CLIOption("--crop", parse_crop, "feature-vae: centre crop size, 0 = none (default 224)"),
        "layers": CLIOption("--layers", parse_layers, "feature-vae: backbone blocks (default 4,14)"),
    }

    def __init__(self, layers: tuple[int, ...] = (4, 14), crop_size: int | None = 224, pool: int = 3,
                 latent_dim: int = 128, beta: float = 0.1, epochs: int = 60, batch_size: int = 16,
                 lr: float = 1e-3, lr_min: float = 1e-5, weight_decay: float = 1e-5, kl_anneal_epochs: int = 10,
                 grad_clip: float = 1.0, patience: int = 10, sigma: float = 4.0, aggregation: str = "max",
                 input_size: int = 256, val_fraction: float = 0.2, review_quantile: float = 0.95,
                 reject_quantile: float = 0.995, seed: int = 0):
        self.layers = layers
        self.crop_size = crop_size
        self.pool = pool
        self.latent_dim = latent_dim
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_min = lr_min
        self.weight_decay = weight_decay
        self.kl_anneal_epochs = kl_anneal_epochs
        self.grad_clip = grad_clip
        self.patience = patience
        self.sigma = sigma
        self.aggregation = aggregation
        self.input_size = input_size
        self.val_fraction = val_fraction
        self.review_quantile = review_quantile
        self.reject_quantile = reject_quantile
        self.seed = seed

    def check_params(self):
        """The common checks, the backbone's, and a feature grid the two stride-2 blocks halve exactly."""
        super().check_params()
        owner = type(self).__name__
        check_backbone(owner, self.layers, self.pool, self.crop_size, self.input_size)
        if self._grid() % 2 ** len(CHANNELS):
            raise InvalidParameterError(
                f"the 'crop_size' parameter of {owner}: the feature grid ({self._grid()} = crop "
                f"{self.crop_size or self.input_size} / stride {block_stride(self.layers[0])}) must be a multiple "
                f"of {2 ** len(CHANNELS)} (two stride-2 blocks)")
        return self

    def _grid(self) -> int:
        return (self.crop_size or self.input_size) // block_stride(self.layers[0])

    def _model_bytes(self, n_images):
        """The feature maps of every image (kept for all epochs, and standardised copies) and a batch's
        activations."""
        dim = sum(block_shapes()[i][0] for i in self.layers)
        return 4.0 * self._grid() ** 2 * (2 * dim * n_images + 8 * CHANNELS[0] * self.batch_size)

    def _module(self, pretrained: bool) -> FeatureVAE:
        features = EfficientNetFeatures(tuple(self.layers), pretrained)
        return FeatureVAE(features, self.input_size, self.crop_size or self.input_size, self.pool, self._grid(),
                          self.latent_dim, self.sigma, self.aggregation)

    def _new_module(self, state):
        if "scale" not in state:
            raise InputError("this feature-VAE model was saved before scores became relative to the training "
                             "images' mean error per position (no 'scale' in its state): retrain it")
        return self._module(pretrained=False)

    def _features(self, net: FeatureVAE, images: np.ndarray, progress: bool):
        """Raw patch features (N, D, h, w) of ``images`` (the backbone is frozen: computed once)."""
        with torch.no_grad():
            return torch.cat([patch_features(net.features, torch.from_numpy(images[s:s + self.batch_size]),
                                             net.input_size, net.crop_size, net.pool)
                              for s in tqdm(range(0, len(images), self.batch_size), desc="features",
                                            disable=not progress, leave=False)])

    def _fit(self, train, val, progress):
        net = self._module(pretrained=True)
        train_f, val_f = self._features(net, train, progress), self._features(net, val, progress)
        net.mean = train_f.double().mean((0, 2, 3)).float()
        net.std = train_f.double().std((0, 2, 3)).float().clamp_min(1e-6)
        train_f, val_f = ((f - net.mean.view(1, -1, 1, 1)) / net.std.view(1, -1, 1, 1) for f in (train_f, val_f))
        params = [p for name, p in net.named_parameters() if not name.startswith("features.")]

        def batch_loss(index, beta, _generator):
            return feature_vae_loss(net, train_f[index], beta)

        self._train(net, params, len(train_f), batch_loss,
                    lambda: feature_vae_loss(net, val_f, 0.0, sample=False)[0], progress, "feature VAE")
        net.scale = self._position_scale(net.eval(), train_f)
        return net

    def _position_scale(self, net: FeatureVAE, train_f):
        """Mean over the training images of each position's error (the trained model, posterior mean)."""
        with torch.no_grad():
            errors = torch.cat([net.squared_errors(f, net.encode(f)[0])
                                for f in train_f.split(self.batch_size)])
        return errors.double().mean(0).float().clamp_min(1e-12)

    def reference(self, images, normals):
        """The normal image (among ``normals``) whose latent mean is nearest: feature reconstructions have
        no picture, and the nearest normal in the latent space shows what the model holds as similar."""
        self._check_fitted()
        if normals is None or len(normals) == 0:
            raise InputError("the feature VAE's reference image needs the normal (training) images")
        a, b = self.latent(images), self.latent(normals)
        return normals[((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).argmin(1)]
