"""The training loop both VAEs share: the case study's recipe (section 3.5).

AdamW with a cosine learning rate down to ``lr_min``, the KL weight annealed linearly from 0 to ``beta``,
gradient-norm clipping, and early stopping on the validation reconstruction loss with the best state kept.
The pixel VAE and the feature VAE differ only in what a batch is (augmented grey images; backbone features
computed once) and in their loss, which they pass in; the loop, its log and its checks are this one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fabguard.errors import InputError
from fabguard.params import Interval

# the recipe's parameters, checked as every detector parameter is (Detector._parameter_constraints)
RECIPE_CONSTRAINTS = {
    "beta": [Interval(float, 0, None)],
    "epochs": [Interval(int, 1, None)],
    "batch_size": [Interval(int, 2, None)],  # BatchNorm needs two images
    "lr": [Interval(float, 0, None, "neither")],
    "lr_min": [Interval(float, 0, None)],
    "weight_decay": [Interval(float, 0, None)],
    "kl_anneal_epochs": [Interval(int, 0, None)],
    "grad_clip": [Interval(float, 0, None, "neither")],
    "patience": [Interval(int, 1, None)],
}

# (index of the batch's training items, KL weight, generator) -> per-image mean (recon, kl, recon + beta kl)
BatchLoss = Callable[[torch.Tensor, float, torch.Generator], Sequence[torch.Tensor]]


class EarlyStopping:
    """Keeps a copy of the best state; ``step`` says stop after ``patience`` epochs without improvement."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.best_state, self.waited = patience, math.inf, 0, None, 0

    def step(self, epoch: int, value: float, module: nn.Module) -> bool:
        if value < self.best:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            self.best_state = copy.deepcopy(module.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience


class VAETraining:
    """Mixin for a :class:`~fabguard.anomaly.base.Detector` trained by :meth:`_train`: it has the recipe's
    parameters (``RECIPE_CONSTRAINTS``) and ``seed``, and keeps the epoch log (``history_``, the loss
    curves) and the best epoch in the saved model."""

    def beta_at(self, epoch: int) -> float:
        """KL weight of an epoch (0-based): linear from 0 to ``beta`` over ``kl_anneal_epochs``."""
        if self.kl_anneal_epochs <= 0:
            return self.beta
        return self.beta * min(1.0, epoch / self.kl_anneal_epochs)

    def describe_training(self) -> str:
        return f"best epoch {self.best_epoch_} of {len(self.history_)}"

    def _extra_state(self) -> dict:
        return {"history": self.history_, "best_epoch": self.best_epoch_}

    def _load_extra_state(self, extra: dict) -> None:
        self.history_, self.best_epoch_ = extra["history"], extra["best_epoch"]

    def _train(self, net: nn.Module, params: list, n_train: int, batch_loss: BatchLoss,
               val_recon: Callable[[], torch.Tensor], progress: bool, what: str) -> nn.Module:
        """Train ``params`` of ``net`` on ``n_train`` items (shuffled by ``seed``; ``batch_loss`` reads a
        batch of them), validating with ``val_recon`` (in eval mode, no gradients) after every epoch;
        returns ``net`` with the best epoch's state. ``what`` names the model in progress and errors."""
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs, eta_min=self.lr_min)
        self.history_, stopper = [], EarlyStopping(self.patience)
        bar = tqdm(range(self.epochs), desc=f"training {what}", unit="epoch", disable=not progress)
        for epoch in bar:
            beta, lr = self.beta_at(epoch), optimizer.param_groups[0]["lr"]
            net.train()
            sums, seen = np.zeros(3), 0
            order = torch.randperm(n_train, generator=generator)
            for start in range(0, n_train, self.batch_size):
                index = order[start:start + self.batch_size]
                if len(index) < 2:  # BatchNorm needs two images
                    continue
                losses = batch_loss(index, beta, generator)
                optimizer.zero_grad()
                losses[2].backward()
                nn.utils.clip_grad_norm_(params, self.grad_clip)
                optimizer.step()
                sums += [v.item() * len(index) for v in losses]
                seen += len(index)
            schedule.step()
            net.eval()
            with torch.no_grad():
                val = float(val_recon())
            recon, kl, total = (float(v) for v in sums / max(seen, 1))
            self.history_.append({"epoch": epoch + 1, "beta": beta, "lr": lr, "train_recon": recon,
                                  "train_kl": kl, "train_total": total, "val_recon": val})
            bar.set_postfix(recon=f"{recon:.4g}", kl=f"{kl:.4g}", val=f"{val:.4g}")
            if not math.isfinite(total):
                raise InputError(f"{what} training diverged at epoch {epoch + 1} (loss {total}); "
                                 "lower the learning rate")
            if stopper.step(epoch + 1, val, net):
                break
        if stopper.best_state is None:
            raise InputError(f"{what} validation loss was never finite ({val}); lower the learning rate")
        net.load_state_dict(stopper.best_state)
        self.best_epoch_ = stopper.best_epoch
        return net
