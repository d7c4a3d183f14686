"""The case study's convolutional VAE (sections 2 and 3.4-3.5), within its 15M-parameter budget.

Encoder: four 3x3 stride-2 conv blocks (BatchNorm, LeakyReLU) 1 -> 32 -> 64 -> 128 -> 256 channels, as
in the case study's table. The table then flattens 256 x 16 x 16 = 65,536 values into two linear heads
(2 x 8.4M parameters, 17M+ with the decoder's mirror), over the budget; here a 1x1 conv first squeezes
the 256 channels to ``bottleneck_channels`` (32: 8,192 values), which keeps the spatial layout and the
latent size 128 and brings the whole model to about 4.2M parameters. The decoder mirrors it with
transposed convs and ends in a sigmoid. Loss: BCE (summed over pixels) + beta * KL, reparameterized.

Scoring uses the posterior mean (no sampling), so scores are deterministic and exportable:
score = mean squared reconstruction error, heatmap = per-pixel squared error (case study section 2);
the posterior mean itself is the module's third output (the latent vector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fabguard.anomaly.augment import PRESETS, Augmentation
from fabguard.anomaly.base import CLIOption, Detector, to_gray
from fabguard.anomaly.training import RECIPE_CONSTRAINTS, VAETraining
from fabguard.errors import InvalidParameterError
from fabguard.params import Interval, Options

CHANNELS = (32, 64, 128, 256)


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2))


class ConvVAE(nn.Module):
    """Grayscale convolutional VAE; ``forward`` takes the RGB batch and returns (scores, heatmaps)."""

    def __init__(self, input_size: int = 256, latent_dim: int = 128, bottleneck_channels: int = 32):
        super().__init__()
        self.side = input_size // 2 ** len(CHANNELS)
        self.bottleneck_channels = bottleneck_channels
        flat = bottleneck_channels * self.side ** 2
        encoder, c_in = [], 1
        for c in CHANNELS:
            encoder.append(_block(nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), c))
            c_in = c
        encoder.append(_block(nn.Conv2d(c_in, bottleneck_channels, 1, bias=False), bottleneck_channels))
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)
        self.expand = nn.Linear(latent_dim, flat)
        decoder = [_block(nn.Conv2d(bottleneck_channels, CHANNELS[-1], 1, bias=False), CHANNELS[-1])]
        for c_in, c in zip(CHANNELS[::-1], CHANNELS[-2::-1]):
            decoder.append(_block(nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1, bias=False), c))
        decoder.append(nn.ConvTranspose2d(CHANNELS[0], 1, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, gray):
        """(N, 1, S, S) -> posterior mean and log-variance (N, latent)."""
        h = self.encoder(gray)
        return self.mu(h), self.logvar(h)

    def decode_logits(self, z):
        h = F.leaky_relu(self.expand(z), 0.2).view(-1, self.bottleneck_channels, self.side, self.side)
        return self.decoder(h)

    def reconstruct(self, images):
        """RGB batch -> (grey input (N, S, S), reconstruction from the posterior mean (N, S, S))."""
        gray = to_gray(images)
        mu, _ = self.encode(gray.unsqueeze(1))
        return gray, torch.sigmoid(self.decode_logits(mu)).squeeze(1)

    def forward(self, images):
        gray = to_gray(images)
        mu, _ = self.encode(gray.unsqueeze(1))
        heatmap = (gray - torch.sigmoid(self.decode_logits(mu)).squeeze(1)) ** 2
        return heatmap.flatten(1).mean(1), heatmap, mu


def vae_loss(net: ConvVAE, gray, beta: float, sample: bool = True):
    """Per-image means over the batch: BCE summed over pixels, KL summed over latent dims."""
    mu, logvar = net.encode(gray)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
    logits = net.decode_logits(z)
    recon = F.binary_cross_entropy_with_logits(logits, gray, reduction="sum") / len(gray)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(gray)
    return recon, kl, recon + beta * kl


class VAEDetector(VAETraining, Detector):
    """Convolutional VAE trained as in the case study 3.5 (AdamW, cosine LR, KL annealing, clipping,
    early stopping on validation reconstruction loss, best checkpoint kept)."""

    kind = "vae"
    has_latent = True
    loss_label = "BCE"
    _parameter_constraints = {
        **Detector._parameter_constraints,
        "latent_dim": [Interval(int, 1, None)],
        "bottleneck_channels": [Interval(int, 1, None)],
        **RECIPE_CONSTRAINTS,
        "augment": [Options(tuple(PRESETS))],
    }
    cli_options = {
        "epochs": CLIOption("--epochs", int, "vae: maximum epochs (default 50)"),
        "beta": CLIOption("--beta", float, "vae: KL weight after annealing (default 1)"),
        "batch_size": CLIOption("--batch-size", int, "vae: batch size (default 32)"),
        "patience": CLIOption("--patience", int, "vae: early-stopping patience in epochs (default 10)"),
        "augment": CLIOption("--augment", str, "vae: training augmentation preset (default none; see "
                             "docs/anomaly.md)", tuple(PRESETS)),
    }

    def __init__(self, latent_dim: int = 128, bottleneck_channels: int = 32, beta: float = 1.0,
                 epochs: int = 50, batch_size: int = 32, lr: float = 1e-3, lr_min: float = 1e-5,
                 weight_decay: float = 1e-5, kl_anneal_epochs: int = 10, grad_clip: float = 1.0,
                 patience: int = 10, augment: str = "none", input_size: int = 256, val_fraction: float = 0.2,
                 review_quantile: float = 0.95, reject_quantile: float = 0.995, seed: int = 0):
        self.latent_dim = latent_dim
        self.bottleneck_channels = bottleneck_channels
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_min = lr_min
        self.weight_decay = weight_decay
        self.kl_anneal_epochs = kl_anneal_epochs
        self.grad_clip = grad_clip
        self.patience = patience
        self.augment = augment
        self.input_size = input_size
        self.val_fraction = val_fraction
        self.review_quantile = review_quantile
        self.reject_quantile = reject_quantile
        self.seed = seed

    def check_params(self):
        """The common checks, and an input size the four stride-2 blocks halve exactly."""
        super().check_params()
        if self.input_size % 16 or self.input_size < 32:
            raise InvalidParameterError(f"the 'input_size' parameter of VAEDetector must be a multiple of 16 and "
                                        f"at least 32 (four stride-2 blocks); got {self.input_size!r}")
        return self

    def _model_bytes(self, n_images):
        """Activations kept for the backward pass (about 64 floats per pixel and image of a batch)."""
        return 4.0 * self.input_size ** 2 * (64 * self.batch_size + n_images)

    def _new_module(self, state=None):
        return ConvVAE(self.input_size, self.latent_dim, self.bottleneck_channels)

    def _fit(self, train, val, progress):
        augment, net = Augmentation.preset(self.augment), self._new_module()
        train_t, val_gray = torch.from_numpy(train), to_gray(torch.from_numpy(val)).unsqueeze(1)

        def batch_loss(index, beta, generator):
            return vae_loss(net, to_gray(augment(train_t[index], generator)).unsqueeze(1), beta)

        return self._train(net, list(net.parameters()), len(train_t), batch_loss,
                           lambda: vae_loss(net, val_gray, 0.0, sample=False)[0], progress, "VAE")

    def reference(self, images, normals=None):
        """The reconstruction from the posterior mean, grey replicated to RGB."""
        self._check_fitted()
        with torch.inference_mode():
            _, recon = self.model_.reconstruct(torch.from_numpy(images))
        return recon.unsqueeze(1).expand(-1, 3, -1, -1).numpy()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
