"""Teacher, student and value models, the distillation loss and out-of-fold predictions.

Networks are small PyTorch MLP ensembles (every member exportable to ONNX as one graph); the
gradient-boosting teacher is scikit-learn's HistGradientBoostingClassifier. Every classifier exposes
``decision_function`` (a logit) so teacher and student outputs are interchangeable before calibration.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from fabguard.active.limits import MEMBERS
from fabguard.active.system import logit_of
from fabguard.errors import InputError
from fabguard.params import FRACTION_OPEN, POSITIVE_INT, SEED, Instance, Interval, ValidatedParams, check


def distillation_loss(student_logit: torch.Tensor, y: torch.Tensor, teacher_logit: torch.Tensor,
                      lam: float, temperature: float) -> torch.Tensor:
    """Mean over products of ``(1 - lam) * BCE(y, p_s) + lam * T^2 * KL(teacher_T || student_T)`` where the
    product has a teacher output, and of plain ``BCE(y, p_s)`` where it has none (``teacher_logit`` NaN).

    ``p_T = sigmoid(logit / T)``; KL is between Bernoulli distributions. Products without a teacher
    output keep their full label weight, so distillation changes only the targets of sampled products.
    """
    bce = F.binary_cross_entropy_with_logits(student_logit, y, reduction="none")
    has = ~torch.isnan(teacher_logit)
    t = torch.where(has, teacher_logit, torch.zeros_like(teacher_logit)) / temperature
    s = student_logit / temperature
    p_t = torch.sigmoid(t)
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    per_product = torch.where(has, (1 - lam) * bce + lam * temperature**2 * kl, bce)
    return per_product.mean()


class Ensemble(nn.Module):
    """Members side by side: ``(n, features) -> (n, members)``. One graph for ONNX export."""

    def __init__(self, members: list[nn.Module], scale=1.0, shift=0.0):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float32)))
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], dim=1) * self.scale + self.shift


def _mlp(n_in: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers, width = [], n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 1))


def as_float32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


_NET_CONSTRAINTS = {
    "hidden": [Instance((tuple, list))], "dropout": [Interval(float, 0, 1, "left")], "n_members": [MEMBERS],
    "lr": [Interval(float, 0, None, "neither")], "weight_decay": [Interval(float, 0, None)],
    "batch_size": [POSITIVE_INT], "max_epochs": [POSITIVE_INT], "patience": [POSITIVE_INT],
    "holdout": [FRACTION_OPEN], "random_state": [SEED],
}


class _NetEnsemble(ValidatedParams, BaseEstimator):
    """Shared training: each member gets its own seed and early-stopping holdout (the same loss on the
    holdout decides the epoch); the best epoch's weights are kept."""

    def _check_hidden(self) -> None:
        for width in self.hidden:
            check("hidden", width, POSITIVE_INT, owner=type(self).__name__)

    def _fit_members(self, x: np.ndarray, loss, stratify: np.ndarray | None) -> tuple[list[nn.Module], list[int]]:
        """``n_members`` networks minimising ``loss(output, row_indices)``, and their best epochs."""
        x = torch.from_numpy(as_float32(x))
        n = len(x)
        if stratify is not None and np.bincount(stratify).min() < 2:
            stratify = None  # too few of a class to split it
        members, epochs = [], []
        for m in range(self.n_members):
            seed = int(self.random_state) * 1009 + m
            torch.manual_seed(seed)
            net = _mlp(x.shape[1], tuple(self.hidden), self.dropout)
            if n < 4:  # too few rows to hold any out: the training rows decide the epoch
                fit_idx = hold_idx = np.arange(n)
            else:
                fit_idx, hold_idx = train_test_split(np.arange(n), test_size=self.holdout, random_state=seed,
                                                     stratify=stratify)
            fit_idx, hold_idx = torch.from_numpy(fit_idx), torch.from_numpy(hold_idx)
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(seed)
            best, best_state, best_epoch = np.inf, copy.deepcopy(net.state_dict()), 0
            for epoch in range(self.max_epochs):
                net.train()
                for batch in fit_idx[torch.randperm(len(fit_idx), generator=gen)].split(self.batch_size):
                    opt.zero_grad()
                    loss(net(x[batch]).squeeze(1), batch).backward()
                    opt.step()
                net.eval()
                with torch.no_grad():
                    held = float(loss(net(x[hold_idx]).squeeze(1), hold_idx))
                if held < best - 1e-6:
                    best, best_state, best_epoch = held, copy.deepcopy(net.state_dict()), epoch
                elif epoch - best_epoch >= self.patience:
                    break
            net.load_state_dict(best_state)
            members.append(net.eval())
            epochs.append(best_epoch + 1)
        return members, epochs

    def member_outputs(self, x) -> np.ndarray:
        """``(n, members)`` raw member outputs (logits for a classifier)."""
        check_is_fitted(self)
        x = validate_data(self, x, reset=False, dtype=np.float32)
        with torch.no_grad():
            return self.net_(torch.from_numpy(as_float32(x))).numpy().astype(np.float64)


class NetClassifier(ClassifierMixin, _NetEnsemble):
    """MLP ensemble for a binary fault label, optionally distilled from teacher logits.

    With ``distill_lambda = 0`` it is the plain (undistilled) model: the teacher MLP and the baseline
    student. ``fit(x, y, teacher_logit=...)`` takes the teacher's logits (NaN where the product has
    none) for the distillation term. The score is the mean of the members' probabilities; any two
    labels are accepted (``classes_``, the second is the positive one).
    """

    _parameter_constraints = {**_NET_CONSTRAINTS, "distill_lambda": [Interval(float, 0, 1)],
                              "temperature": [Interval(float, 0, None, "neither")]}

    def __init__(self, hidden=(64, 32), dropout=0.1, n_members=3, distill_lambda=0.0, temperature=1.0,
                 lr=3e-3, weight_decay=1e-4, batch_size=256, max_epochs=200, patience=10, holdout=0.15,
                 random_state=0):
        self.hidden, self.dropout, self.n_members = hidden, dropout, n_members
        self.distill_lambda, self.temperature = distill_lambda, temperature
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.max_epochs, self.patience, self.holdout, self.random_state = max_epochs, patience, holdout, random_state

    def fit(self, x, y, teacher_logit=None):
        self._validate_params()
        self._check_hidden()
        x, y = validate_data(self, x, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise InputError(f"Only binary classification is supported: NetClassifier needs two classes in y, "
                             f"got {len(self.classes_)} class(es): {self.classes_[:5].tolist()}")
        y = (y == self.classes_[1]).astype(np.int64)
        yt = torch.from_numpy(y.astype(np.float32))
        tt = torch.full_like(yt, float("nan")) if teacher_logit is None else \
            torch.from_numpy(np.asarray(teacher_logit, dtype=np.float32))
        lam, temp = float(self.distill_lambda), float(self.temperature)
        members, self.epochs_ = self._fit_members(
            x, lambda out, idx: distillation_loss(out, yt[idx], tt[idx], lam, temp), y)
        self.net_ = Ensemble(members).eval()
        return self

    def member_proba(self, x) -> np.ndarray:
        return expit(self.member_outputs(x))

    def decision_function(self, x) -> np.ndarray:
        return logit_of(self.member_proba(x).mean(axis=1))

    def predict_proba(self, x) -> np.ndarray:
        p = self.member_proba(x).mean(axis=1)
        return np.column_stack([1 - p, p])

    def predict(self, x) -> np.ndarray:
        """The more probable class (the positive one from probability 0.5 on)."""
        check_is_fitted(self)
        return self.classes_[(self.predict_proba(x)[:, 1] >= 0.5).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class NetRegressor(RegressorMixin, _NetEnsemble):
    """MLP ensemble for one or more real targets (the values of inspection), one network per target
    and member, trained with squared error on the standardised target. The scaling is part of the
    network, so its ONNX graph predicts in target units: output columns are target-major
    ``(target 0 members..., target 1 members...)``."""

    _parameter_constraints = dict(_NET_CONSTRAINTS)

    def __init__(self, hidden=(32,), dropout=0.1, n_members=1, lr=3e-3, weight_decay=1e-3, batch_size=256,
                 max_epochs=200, patience=10, holdout=0.2, random_state=0):
        self.hidden, self.dropout, self.n_members = hidden, dropout, n_members
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.max_epochs, self.patience, self.holdout, self.random_state = max_epochs, patience, holdout, random_state

    def fit(self, x, y):
        """``y``: ``(n,)`` or ``(n, targets)`` real targets."""
        self._validate_params()
        self._check_hidden()
        x, y = validate_data(self, x, y, dtype=np.float32, multi_output=True, y_numeric=True)
        target = np.asarray(y, dtype=np.float64)
        self.n_targets_ = 1 if target.ndim == 1 else target.shape[1]
        target = target[:, None] if target.ndim == 1 else target
        shift, scale = target.mean(axis=0), np.where(target.std(axis=0) > 0, target.std(axis=0), 1.0)
        members, self.epochs_ = [], []
        for j in range(target.shape[1]):
            tt = torch.from_numpy(((target[:, j] - shift[j]) / scale[j]).astype(np.float32))
            nets, epochs = self._fit_members(x, lambda out, idx, tt=tt: F.mse_loss(out, tt[idx]), None)
            members += nets
            self.epochs_ += epochs
        self.net_ = Ensemble(members, scale=np.repeat(scale, self.n_members),
                             shift=np.repeat(shift, self.n_members)).eval()
        return self

    def combine(self, member_outputs: np.ndarray) -> np.ndarray:
        """``(n, targets)`` means over members from the network's raw ``(n, targets * members)`` output."""
        return member_outputs.reshape(len(member_outputs), -1, self.n_members).mean(axis=2)

    def predict(self, x) -> np.ndarray:
        """``(n,)`` for one target, ``(n, targets)`` for several."""
        out = self.combine(self.member_outputs(x))
        return out[:, 0] if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


def make_teacher(kind: str, random_state: int = 0, **net_params):
    """The advanced model: ``mlp`` (NetClassifier) or ``gbm`` (HistGradientBoostingClassifier); both are
    saved as ONNX graphs (:mod:`fabguard.active.trees` writes the trees)."""
    if kind == "mlp":
        return NetClassifier(random_state=random_state, **net_params)
    if kind == "gbm":
        return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=300, early_stopping=True,
                                              validation_fraction=0.15, n_iter_no_change=20,
                                              l2_regularization=1.0, random_state=random_state)
    raise InputError(f"teacher kind {kind!r} is not 'mlp' or 'gbm'")


def out_of_fold(estimator, x, y, rows: np.ndarray, n_folds: int, random_state: int, **fit_arrays) -> np.ndarray:
    """Logits for ``rows``, each from a clone of ``estimator`` fitted on every row except the rows of
    its fold (stratified folds over ``rows``). Rows outside ``rows`` are always in the fitting set.
    Extra per-row arrays (``teacher_logit``) are passed to ``fit`` sliced alike."""
    x, y, rows = np.asarray(x), np.asarray(y), np.asarray(rows)
    minority = int(min(np.bincount(y[rows], minlength=2)))
    if minority < 2:
        raise InputError(f"out-of-fold predictions need at least 2 faulty and 2 good products among "
                         f"{len(rows)}, found {minority} of the rarer class")
    folds = StratifiedKFold(min(n_folds, minority), shuffle=True, random_state=random_state)
    out = np.empty(len(rows))
    for _, held in folds.split(rows, y[rows]):
        keep = np.ones(len(x), bool)
        keep[rows[held]] = False
        model = clone(estimator).fit(x[keep], y[keep], **{k: np.asarray(v)[keep] for k, v in fit_arrays.items()})
        out[held] = model.decision_function(x[rows[held]])
    return out
