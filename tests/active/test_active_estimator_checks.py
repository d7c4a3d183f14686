"""scikit-learn's own estimator checks (all of them, about 10 s) on the tabular networks: one member, 8
hidden units and at most 20 epochs, since the checks test the contract, not the fit quality (such a net
still passes the accuracy checks)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from fabguard.active.models import NetClassifier, NetRegressor

FAST = {"hidden": (8,), "n_members": 1, "max_epochs": 20, "patience": 5}


@parametrize_with_checks([NetClassifier(**FAST, lr=3e-2), NetRegressor(**FAST, lr=3e-2)])
def test_scikit_learn_contract(estimator, check):
    check(estimator)
