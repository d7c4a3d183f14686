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

Training is the case study's recipe (AdamW, cosine learning rate, KL annealing, clipping, early stopping
on the validation reconstruction loss with the best checkpoint kept) with a Gaussian decoder: the loss is
the summed squared error of the features + beta * KL, since features are not in [0, 1]; 60 epochs (20
were measured to be too few, docs/anomaly.md). Scoring uses
the posterior mean: the per-position error is the mean squared feature error over channels; the image
score is its largest (``aggregation="max"``) or mean value; the heatmap is that map upsampled and
smoothed as PatchCore's. The module's third output is mu, the image's place in the latent space.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fabguard.anomaly.backbone import (EfficientNetFeatures, block_shapes, block_stride, check_backbone,
                                       gaussian_kernel, parse_crop, parse_layers, patch_features, patch_heatmap)
from fabguard.anomaly.base import CLIOption, Detector
from fabguard.anomaly.vae import EarlyStopping
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
        self.features = features
        self.input_size, self.crop_size, self.pool, self.aggregation = input_size, crop_size, pool, aggregation
        dim = features.channels
        self.side = grid // 2 ** len(CHANNELS)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
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

    def embed(self, images):
        """RGB batch -> standardised patch features (N, D, h, w)."""
        f = patch_features(self.features, images, self.input_size, self.crop_size, self.pool)
        return (f - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def encode(self, f):
        h = self.encoder(f)
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        return self.decoder(self.expand(z).view(-1, CHANNELS[-1], self.side, self.side))

    def position_errors(self, f, z):
        """Mean squared feature error per position (N, h, w) of the reconstruction from ``z``."""
        return ((f - self.decode(z)) ** 2).mean(1)

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


class FeatureVAEDetector(Detector):
    """Convolutional VAE on efficientnet-lite0 feature maps, trained with the case study's recipe."""

    kind = "feature-vae"
    reference_label = "nearest normal (latent)"
    has_latent = True
    loss_label = "squared feature error"
    _parameter_constraints = {
        **Detector._parameter_constraints,
        "layers": [Instance((tuple, list))],
        "crop_size": [NONE, Interval(int, 1, None)],
        "pool": [Interval(int, 1, None)],
        "latent_dim": [Interval(int, 1, None)],
        "beta": [Interval(float, 0, None)],
        "epochs": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 2, None)],  # BatchNorm needs two images
        "lr": [Interval(float, 0, None, "neither")],
        "lr_min": [Interval(float, 0, None)],
        "weight_decay": [Interval(float, 0, None)],
        "kl_anneal_epochs": [Interval(int, 0, None)],
        "grad_clip": [Interval(float, 0, None, "neither")],
        "patience": [Interval(int, 1, None)],
        "sigma": [Interval(float, 0, None)],
        "aggregation": [Options(AGGREGATIONS)],
    }
    cli_options = {
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

    def describe_training(self):
        return f"best epoch {self.best_epoch_} of {len(self.history_)}"

    def _module(self, pretrained: bool) -> FeatureVAE:
        features = EfficientNetFeatures(tuple(self.layers), pretrained)
        return FeatureVAE(features, self.input_size, self.crop_size or self.input_size, self.pool, self._grid(),
                          self.latent_dim, self.sigma, self.aggregation)

    def _new_module(self, state):
        return self._module(pretrained=False)

    def beta_at(self, epoch: int) -> float:
        """KL weight of an epoch (0-based): linear from 0 to ``beta`` over ``kl_anneal_epochs``."""
        if self.kl_anneal_epochs <= 0:
            return self.beta
        return self.beta * min(1.0, epoch / self.kl_anneal_epochs)

    def _features(self, net: FeatureVAE, images: np.ndarray, progress: bool):
        """Raw patch features (N, D, h, w) of ``images`` (the backbone is frozen: computed once)."""
        with torch.no_grad():
            return torch.cat([patch_features(net.features, torch.from_numpy(images[s:s + self.batch_size]),
                                             net.input_size, net.crop_size, net.pool)
                              for s in tqdm(range(0, len(images), self.batch_size), desc="features",
                                            disable=not progress, leave=False)])

    def _fit(self, train, val, progress):
        net = self._module(pretrained=True)
        net.features.eval().requires_grad_(False)
        train_f, val_f = self._features(net, train, progress), self._features(net, val, progress)
        net.mean = train_f.double().mean((0, 2, 3)).float()
        net.std = train_f.double().std((0, 2, 3)).float().clamp_min(1e-6)
        train_f, val_f = ((f - net.mean.view(1, -1, 1, 1)) / net.std.view(1, -1, 1, 1) for f in (train_f, val_f))
        params = [p for name, p in net.named_parameters() if not name.startswith("features.")]
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs, eta_min=self.lr_min)
        self.history_, stopper = [], EarlyStopping(self.patience)
        bar = tqdm(range(self.epochs), desc="training feature VAE", unit="epoch", disable=not progress)
        for epoch in bar:
            beta, lr = self.beta_at(epoch), optimizer.param_groups[0]["lr"]
            net.train()
            net.features.eval()  # frozen: its BatchNorm keeps ImageNet statistics
            sums, seen = np.zeros(3), 0
            order = torch.randperm(len(train_f), generator=generator)
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                if len(index) < 2:  # BatchNorm needs two images
                    continue
                losses = feature_vae_loss(net, train_f[index], beta)
                optimizer.zero_grad()
                losses[2].backward()
                nn.utils.clip_grad_norm_(params, self.grad_clip)
                optimizer.step()
                sums += [v.item() * len(index) for v in losses]
                seen += len(index)
            schedule.step()
            net.eval()
            with torch.no_grad():
                val_recon = float(feature_vae_loss(net, val_f, beta, sample=False)[0])
            recon, kl, total = (float(v) for v in sums / max(seen, 1))
            self.history_.append({"epoch": epoch + 1, "beta": beta, "lr": lr, "train_recon": recon,
                                  "train_kl": kl, "train_total": total, "val_recon": val_recon})
            bar.set_postfix(recon=f"{recon:.0f}", kl=f"{kl:.1f}", val=f"{val_recon:.0f}")
            if not math.isfinite(total):
                raise InputError(f"feature VAE training diverged at epoch {epoch + 1} (loss {total}); "
                                 "lower the learning rate")
            if stopper.step(epoch + 1, val_recon, net):
                break
        if stopper.best_state is None:
            raise InputError(f"feature VAE validation loss was never finite ({val_recon}); lower the learning rate")
        net.load_state_dict(stopper.best_state)
        self.best_epoch_ = stopper.best_epoch
        return net

    def reference(self, images, normals):
        """The normal image (among ``normals``) whose latent mean is nearest: feature reconstructions have
        no picture, and the nearest normal in the latent space shows what the model holds as similar."""
        self._check_fitted()
        if normals is None or len(normals) == 0:
            raise InputError("the feature VAE's reference image needs the normal (training) images")
        a, b = self.latent(images), self.latent(normals)
        return normals[((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).argmin(1)]

    def _extra_state(self):
        return {"history": self.history_, "best_epoch": self.best_epoch_}

    def _load_extra_state(self, extra):
        self.history_, self.best_epoch_ = extra["history"], extra["best_epoch"]
