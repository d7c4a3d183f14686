import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_auc_score

from active_bounds import float64_bound
from fabguard.active.calibration import Calibrator
from fabguard.active.models import NetClassifier, NetRegressor, distillation_loss, make_teacher, out_of_fold
from fabguard.errors import InputError
from fabguard.runtime.parity import float32_bound


def test_distillation_loss_matches_a_hand_computation():
    s = np.array([0.3, -1.2, 2.0, 0.0])
    y = np.array([1.0, 0.0, 1.0, 0.0])
    t = np.array([1.5, np.nan, -0.5, 0.8])
    lam, temp = 0.7, 3.0
    bce = -(y * np.log(expit(s)) + (1 - y) * np.log(1 - expit(s)))
    pt, ps = expit(t / temp), expit(s / temp)
    kl = pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
    expected = np.mean(np.where(np.isnan(t), bce, (1 - lam) * bce + lam * temp**2 * kl))
    got = distillation_loss(*(torch.tensor(v) for v in (s, y, t)), lam, temp)
    # float64 on both sides: per product about 20 roundings (exp/log ~1 ulp each, products, sums) on terms
    # of at most the size of the per-product losses, then a mean over 4 products
    terms = np.abs(bce).sum() + lam * temp**2 * np.nansum(np.abs(pt * np.log(pt)) + np.abs(pt * np.log(ps))
                                                         + np.abs((1 - pt) * np.log(1 - pt))
                                                         + np.abs((1 - pt) * np.log(1 - ps)))
    assert abs(float(got) - expected) <= float64_bound(terms, 20)
    plain = distillation_loss(*(torch.tensor(v) for v in (s, y, t)), 0.0, temp)
    assert abs(float(plain) - bce.mean()) <= float64_bound(np.abs(bce).sum(), 20)


def test_distillation_loss_gradient_is_zero_when_the_student_equals_the_teacher_at_lambda_one():
    t = torch.tensor([0.4, -2.0, 1.0])
    s = t.clone().requires_grad_(True)
    distillation_loss(s, torch.tensor([1.0, 1.0, 0.0]), t, 1.0, 2.0).backward()
    # exactly 0 in exact arithmetic: d/ds of T^2 KL is T (p_s(1 - p_t) - p_t(1 - p_s)) / n with p_s = p_t.
    # In float32 each of the two products carries about 8 roundings (sigmoids, 1 - p, products, the
    # chain through logsigmoid, the lambda T^2 / n factor), on terms of size T / n * p (1 - p) <= T / (4 n)
    temp, n = 2.0, 3
    assert s.grad.abs().max() <= float32_bound(2 * temp / (4 * n), 8)


def problem(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    p = expit(2.5 * x[:, 0] - 2 * x[:, 1] - 2)
    return x, (rng.random(n) < p).astype(int), p


def test_net_classifier_learns_and_is_reproducible():
    x, y, p = problem()
    a = NetClassifier(n_members=2, random_state=1).fit(x[:1000], y[:1000])
    b = NetClassifier(n_members=2, random_state=1).fit(x[:1000], y[:1000])
    c = NetClassifier(n_members=2, random_state=2).fit(x[:1000], y[:1000])
    assert roc_auc_score(y[1000:], a.decision_function(x[1000:])) > 0.85
    np.testing.assert_array_equal(a.decision_function(x), b.decision_function(x))
    assert not np.allclose(a.decision_function(x), c.decision_function(x))
    assert a.member_proba(x).shape == (1500, 2)
    assert np.abs(a.predict_proba(x).sum(axis=1) - 1).max() <= float64_bound(2, 2)  # (1 - p) + p, two roundings
    assert set(a.predict(x)) == {0, 1} and (a.predict(x) == (a.predict_proba(x)[:, 1] >= 0.5)).all()


def test_the_student_follows_teacher_logits_when_distilled():
    """Labels here are pure noise; the teacher logit carries the signal. Only a distilled student can
    learn it, and only on the rows that have teacher outputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 3)).astype(np.float32)
    y = (rng.random(1200) < 0.3).astype(int)
    teacher = 3 * x[:, 0]
    has = rng.random(1200) < 0.5
    teacher_logit = np.where(has, teacher, np.nan)
    plain = NetClassifier(n_members=1, random_state=0).fit(x, y)
    distilled = NetClassifier(n_members=1, distill_lambda=0.9, temperature=2, random_state=0).fit(
        x, y, teacher_logit=teacher_logit)
    corr = lambda m: np.corrcoef(m.decision_function(x), teacher)[0, 1]
    assert corr(distilled) > 0.9 > 0.5 > abs(corr(plain))


class _Memoriser(BaseEstimator):
    """Scores 1 for rows it was fitted on (by the id in column 0), else 0: any leak shows."""

    def fit(self, x, y, tag=None):
        assert tag is None or len(tag) == len(x)  # extra arrays are sliced with the rows
        self.seen_ = set(x[:, 0].tolist())
        return self

    def decision_function(self, x):
        return np.array([float(i in self.seen_) for i in x[:, 0]])


def test_out_of_fold_never_scores_a_row_with_a_model_that_saw_it():
    x = np.arange(200.0)[:, None]
    y = (np.arange(200) % 8 == 2).astype(int)
    rows = np.arange(0, 200, 2)
    out = out_of_fold(_Memoriser(), x, y, rows, n_folds=5, random_state=0, tag=np.ones(200))
    assert out.shape == (100,) and (out == 0).all()
    # every other row was in every fit (they are not part of any held-out fold)
    with pytest.raises(InputError, match="at least 2 faulty"):
        out_of_fold(_Memoriser(), x, np.r_[1, np.zeros(199, int)], rows, 5, 0)


def test_calibrators_map_logits_to_calibrated_probabilities():
    rng = np.random.default_rng(0)
    logit = rng.normal(size=20000) * 2
    y = (rng.random(20000) < expit(0.5 * logit - 1)).astype(int)
    for method in ("platt", "isotonic"):
        p = Calibrator(method).fit(logit, y).transform(logit)
        assert abs(p.mean() - y.mean()) < 0.01  # statistical: 20000 draws, sd of the mean ~0.003
        assert np.all(np.diff(p[np.argsort(logit)]) >= 0)  # monotone maps, computed exactly monotone
    platt = Calibrator("platt").fit(logit, y).transform(np.array([2.0]))
    assert platt[0] == pytest.approx(expit(0.5 * 2 - 1), abs=0.03)
    with pytest.raises(InputError, match="single class"):
        Calibrator().fit(logit[:5], np.zeros(5))
    with pytest.raises(InputError, match="'beta'"):
        Calibrator("beta").fit(logit, y)


def test_regressor_predicts_in_target_units_and_teacher_kinds():
    x, _, p = problem(800)
    reg = NetRegressor(random_state=0).fit(x, 10 + 5 * p)
    assert np.corrcoef(reg.predict(x), p)[0, 1] > 0.9 and abs(reg.predict(x).mean() - (10 + 5 * p).mean()) < 0.2
    assert make_teacher("gbm").__class__.__name__ == "HistGradientBoostingClassifier"
    with pytest.raises(InputError, match="'svm'"):
        make_teacher("svm")
    with pytest.raises(InputError, match="'distill_lambda' parameter of NetClassifier"):
        NetClassifier(distill_lambda=1.5).fit(x, (p > 0.5).astype(int))


@pytest.mark.parametrize("model, param, value", [
    (NetClassifier, "n_members", 0), (NetClassifier, "hidden", (8, 0)), (NetClassifier, "lr", float("nan")),
    (NetClassifier, "holdout", 1.0), (NetRegressor, "batch_size", 0), (NetRegressor, "max_epochs", 2.5),
    (NetRegressor, "random_state", 2**33), (Calibrator, "method", "beta"),
])
def test_parameters_are_validated_at_fit_naming_the_parameter(model, param, value):
    x, y, _ = problem(40)
    with pytest.raises(InputError, match=f"'{param}' parameter of {model.__name__}"):
        model(**{param: value}).fit(x[:, 0] if model is Calibrator else x, y)


def test_calibrators_are_data_and_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    logit = rng.normal(size=500)
    y = (rng.random(500) < expit(logit)).astype(int)
    for method in ("platt", "isotonic"):
        cal = Calibrator(method).fit(logit, y)
        again = Calibrator.from_data(*cal.to_data())
        np.testing.assert_array_equal(again.transform(logit), cal.transform(logit))
