"""scikit-learn's estimator contract for every detector: parameters in, validated at fit, state out."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from fabguard import registry
from fabguard.errors import InputError, InvalidParameterError

KINDS = ("pca", "vae", "patchcore", "feature-vae")


@pytest.mark.parametrize("kind", KINDS)
def test_get_params_set_params_and_clone_round_trip(kind):
    cls = registry.get("detector", kind)
    detector = cls(input_size=32, seed=5)
    params = detector.get_params(deep=True)
    assert params == detector.get_params(deep=False) and params["input_size"] == 32 and params["seed"] == 5
    assert cls(**params).get_params() == params
    assert detector.set_params(seed=7) is detector and detector.seed == 7
    copy = clone(detector)
    assert type(copy) is cls and copy is not detector and copy.get_params() == detector.get_params()
    with pytest.raises(ValueError, match="Invalid parameter"):
        detector.set_params(no_such_parameter=1)


@pytest.mark.parametrize("kind", KINDS)
def test_clone_of_a_fitted_detector_is_unfitted_and_refits_the_same(detectors, kind):
    fitted = detectors[kind]
    check_is_fitted(fitted)
    learned = {k for k in vars(fitted) if not k.startswith("_") and k not in fitted.get_params()}
    assert learned and all(k.endswith("_") for k in learned), learned  # learned state ends in "_"
    copy = clone(fitted)
    assert not any(k.endswith("_") for k in vars(copy))
    with pytest.raises(InputError, match="not fitted"):
        copy.score(np.zeros((1, 3, 64, 64), np.float32))


@pytest.mark.parametrize("kind, param, value", [
    ("pca", "n_components", "x"), ("pca", "n_components", 0), ("pca", "input_size", 0),
    ("pca", "seed", -1), ("pca", "val_fraction", 1.0), ("pca", "review_quantile", 0.0),
    ("vae", "epochs", 0), ("vae", "batch_size", 1), ("vae", "beta", float("nan")), ("vae", "lr", 0.0),
    ("vae", "augment", "colour"), ("patchcore", "coreset_ratio", 0.0), ("patchcore", "crop_size", -32),
    ("patchcore", "layers", "4,14"), ("patchcore", "batch_size", 0),
])
def test_fit_refuses_a_bad_parameter_naming_it(normals, kind, param, value):
    detector = registry.get("detector", kind)(input_size=64).set_params(**{param: value})
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter of {type(detector).__name__}") as err:
        detector.fit(normals.images)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    assert not hasattr(detector, "model_")


def test_review_quantile_above_reject_quantile_is_refused(normals):
    detector = registry.get("detector", "pca")(input_size=64, review_quantile=0.99, reject_quantile=0.9)
    with pytest.raises(InvalidParameterError, match="'review_quantile'"):
        detector.fit(normals.images)
