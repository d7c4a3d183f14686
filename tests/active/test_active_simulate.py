import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.preprocessing import PolynomialFeatures
from sklearn.pipeline import make_pipeline

from fabguard.active.data import sampled
from fabguard.active.simulate import REGIMES, simulate_inspections
from fabguard.errors import InputError


def auroc(frame, columns):
    model = make_pipeline(PolynomialFeatures(2), LogisticRegression(max_iter=2000))
    p = cross_val_predict(model, frame[list(columns)], frame["fault"], cv=3, method="predict_proba")[:, 1]
    return roc_auc_score(frame["fault"], p)


def test_seeded_and_at_the_requested_fault_rate():
    a, roles = simulate_inspections(n_products=3000, fault_rate=0.07, seed=4)
    b, _ = simulate_inspections(n_products=3000, fault_rate=0.07, seed=4)
    c, _ = simulate_inspections(n_products=3000, fault_rate=0.07, seed=5)
    assert a.equals(b) and not a.equals(c)
    assert a["fault"].mean() == pytest.approx(0.07, abs=0.015)  # statistical: sd ~0.005 at 3000 products
    assert roles.basic == tuple(f"basic_{i}" for i in range(6)) and len(roles.advanced) == 4


def test_information_gap_controls_what_the_advanced_inspection_adds():
    none, roles = simulate_inspections(n_products=4000, info_gap=0.0, seed=0)
    half, _ = simulate_inspections(n_products=4000, info_gap=0.5, seed=0)
    assert abs(auroc(none, roles.features) - auroc(none, roles.basic)) < 0.02
    assert auroc(half, roles.features) - auroc(half, roles.basic) > 0.08


def test_label_noise_keeps_the_fault_rate_and_blurs_the_signal():
    clean, roles = simulate_inspections(n_products=4000, seed=1)
    noisy, _ = simulate_inspections(n_products=4000, label_noise=0.5, seed=1)
    assert noisy["fault"].mean() == pytest.approx(clean["fault"].mean(), abs=0.015)
    assert auroc(noisy, roles.features) < auroc(clean, roles.features) - 0.1


def test_sampling_rate_blanks_advanced_results_and_parameters_are_checked():
    frame, roles = simulate_inspections(n_products=1000, sample_rate=0.25, seed=2)
    assert sampled(frame, roles).sum() == 250
    assert frame[list(roles.basic)].notna().all().all()
    with pytest.raises(InputError, match=r"\['info_gap', 'fault_rate'\]"):
        simulate_inspections(info_gap=1.5, fault_rate=0.0)
    assert set(REGIMES) == {"reference", "noisy_labels", "scarce_labels", "no_gap"}
