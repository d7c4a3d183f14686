"""fabguard.params: one parameter check for every estimator, function and command."""

import math

import numpy as np
import pytest

from fabguard import params
from fabguard.errors import InputError, InvalidParameterError, ResourceError


@pytest.mark.parametrize("form, good, bad", [
    (params.SEED, [0, 1, 2**32 - 1, np.int64(7)], [-1, 2**32, 1.0, 1e23, True, "3", None]),
    (params.POSITIVE_INT, [1, 10**9], [0, -5, 2.5, False]),
    (params.FRACTION_OPEN, [0.5, 1e-9, 1 - 1e-9], [0, 1, 1.0, math.nan, math.inf, -0.1, "0.5"]),
    (params.Interval(float, 0, 1, "both"), [0, 0.0, 1.0, np.float32(0.3)], [math.nan, 1.0000001, -1e-300]),
    (params.Interval(float, None, None), [-1e308, 0, 1e308], [math.inf, -math.inf, math.nan]),
    (params.Options(("cpp", "numpy")), ["cpp", "numpy"], ["CPP", "", None, 1]),
    (params.NONE, [None], [0, "", "None"]),
])
def test_forms_accept_exactly_their_values(form, good, bad):
    assert all(form.accepts(v) for v in good), [v for v in good if not form.accepts(v)]
    assert not any(form.accepts(v) for v in bad), [v for v in bad if form.accepts(v)]


def test_refusal_names_parameter_owner_forms_and_value():
    with pytest.raises(InvalidParameterError) as info:
        params.check("fraction", "x", params.FRACTION_OPEN, params.NONE, owner="LowYieldDetector")
    message = str(info.value)
    for part in ("'fraction'", "LowYieldDetector", "(0, 1)", "None", "'x'"):
        assert part in message
    # callers may catch it as any of these
    assert isinstance(info.value, (InputError, ValueError, TypeError))


def test_seed_bounds_are_what_numpy_accepts():
    np.random.default_rng(params.MAX_SEED)
    np.random.seed(params.MAX_SEED)  # the legacy seeder is the narrowest: [0, 2**32)
    with pytest.raises(ValueError):
        np.random.seed(params.MAX_SEED + 1)
    assert params.check_seed(params.MAX_SEED) == params.MAX_SEED


class Toy(params.Estimator):
    _parameter_constraints = {"alpha": [params.Interval(float, 0, 1, "neither")], "inner": [params.NONE,
                                                                                           params.Instance(params.Estimator)]}

    def __init__(self, alpha=0.05, inner=None):
        self.alpha = alpha
        self.inner = inner

    def fit(self):
        self._validate_params()
        self.fitted_ = True
        return self


def test_estimator_contract_matches_scikit_learn():
    from sklearn.base import clone

    est = Toy(alpha=0.1, inner=Toy(alpha=0.2))
    assert est.get_params(deep=False) == {"alpha": 0.1, "inner": est.inner}
    deep = est.get_params(deep=True)
    assert deep["inner__alpha"] == 0.2 and deep["alpha"] == 0.1
    copy = clone(est)
    assert copy is not est and copy.inner is not est.inner and copy.inner.alpha == 0.2
    est.set_params(alpha=0.3, inner__alpha=0.4)
    assert (est.alpha, est.inner.alpha) == (0.3, 0.4)
    with pytest.raises(InvalidParameterError, match="no parameter 'beta'"):
        est.set_params(beta=1)
    with pytest.raises(InvalidParameterError, match="'alpha' parameter of Toy"):
        Toy(alpha=1.5).fit()
    assert not hasattr(Toy(alpha=1.5), "fitted_")  # nothing learned when refused


def test_memory_check_refuses_with_the_figure():
    available = params.available_memory()
    assert 0 < available
    params.check_memory(1024, "a tiny array")
    with pytest.raises(ResourceError, match=r"needs about 1e\+03 TB of memory, more than the .* available; fewer"):
        params.check_memory(1e15, "the job", "fewer resamples")
