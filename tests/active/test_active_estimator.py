import pickle

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fabguard.active import estimator as estimator_module
from fabguard.active.data import labels
from fabguard.active.estimator import RATIO_GRID, ActiveInspector
from fabguard.errors import InputError


def test_fitted_system_scores_test_products(inspector, table):
    _, test, roles = table
    y = labels(test, roles)
    out = inspector.outputs(test)
    assert np.all((0 <= out.fault_score) & (out.fault_score <= 1))
    assert np.all((0 <= out.teacher_score) & (out.teacher_score <= 1))
    assert set(out.routing) == {"random", "margin", "spread", "value_change", "value_brier", "value_cost"}
    assert roc_auc_score(y, out.teacher_score) > roc_auc_score(y, out.fault_score) > 0.6
    assert set(inspector.system_.best_budget.values()) <= set(RATIO_GRID)
    basic_only = test.drop(columns=list(roles.advanced))
    assert np.isnan(inspector.outputs(basic_only).teacher_score).all()


def test_calibrated_scores_match_the_fault_rate(inspector, table):
    _, test, roles = table
    out = inspector.outputs(test)
    y = labels(test, roles)
    # statistical: 400 products at fault rate 0.08, sd of the observed rate ~0.014; 0.03 is ~2 sd
    assert out.fault_score.mean() == pytest.approx(y.mean(), abs=0.03)
    assert out.teacher_score.mean() == pytest.approx(y.mean(), abs=0.03)


def test_preprocessing_and_models_survive_a_pickle_round_trip(inspector, table):
    test = table[1]
    copy = pickle.loads(pickle.dumps(inspector))
    a, b = inspector.outputs(test), copy.outputs(test)
    np.testing.assert_array_equal(a.fault_score, b.fault_score)
    np.testing.assert_array_equal(a.teacher_score, b.teacher_score)
    np.testing.assert_array_equal(a.routing["value_brier"], b.routing["value_brier"])


def test_value_targets_come_from_out_of_fold_predictions(dev, table, monkeypatch):
    """The teacher's and the student's predictions behind the value targets are out of fold: both
    calls go through out_of_fold, the student one over exactly the sampled training products."""
    calls = []
    real = estimator_module.out_of_fold

    def spy(estimator, x, y, rows, n_folds, random_state, **fit_arrays):
        calls.append((type(estimator).__name__, len(x), np.asarray(rows).copy(), sorted(fit_arrays)))
        return real(estimator, x, y, rows, n_folds, random_state, **fit_arrays)

    monkeypatch.setattr(estimator_module, "out_of_fold", spy)
    small = dev.iloc[:900]
    ActiveInspector(table[2], n_members=1, n_folds=2, random_state=1).fit(small)
    (teacher_kind, n_teacher, teacher_rows, _), (student_kind, n_student, student_rows, extra) = calls
    assert teacher_kind == student_kind == "NetClassifier"
    assert len(teacher_rows) == n_teacher  # every sampled training product is scored out of fold
    assert abs(n_student - 0.75 * 900) <= 1  # the student's training products
    assert len(student_rows) == n_teacher and extra == ["teacher_logit"]


def test_bad_input_is_refused_with_what_and_where(table, dev):
    frame, _, roles = table
    one_class = dev.assign(fault=0)
    with pytest.raises(InputError, match="every product has label 0"):
        ActiveInspector(roles).fit(one_class)
    no_advanced = dev.copy()
    no_advanced.loc[:, list(roles.advanced)] = np.nan
    with pytest.raises(InputError, match="no product has advanced results"):
        ActiveInspector(roles).fit(no_advanced)
    empty_basic = dev.assign(basic_2=np.nan)
    with pytest.raises(InputError, match=r"basic column\(s\) \['basic_2'\] are missing on every row"):
        ActiveInspector(roles).fit(empty_basic)
    with pytest.raises(InputError, match=r"unknown column\(s\) \['basic_1'\]"):
        ActiveInspector(roles).fit(dev.drop(columns="basic_1"))
    typo = dev.astype({"basic_0": object})
    typo.iloc[5, typo.columns.get_loc("basic_0")] = "1,5"
    with pytest.raises(InputError, match=r"column 'basic_0', data row 6: value '1,5' is not a number"):
        ActiveInspector(roles).fit(typo)
    with pytest.raises(InputError, match="unknown routing rule 'best'; available: random, margin"):
        ActiveInspector(roles, rule="best").fit(dev)


def test_outputs_refuse_partial_advanced_columns_and_empty_rows(inspector, table):
    test, roles = table[1], table[2]
    with pytest.raises(InputError, match=r"advanced column\(s\) \['advanced_0'\] are missing"):
        inspector.outputs(test.drop(columns="advanced_0"))
    blank = test.copy()
    blank.loc[blank.index[2], list(roles.basic)] = np.nan
    with pytest.raises(InputError, match="data row 3: all basic features are missing"):
        inspector.outputs(blank)


@pytest.mark.parametrize("param, value", [
    ("n_members", 0), ("n_members", 1.5), ("distill_lambda", 2.0), ("temperature", 0.0), ("teacher", "svm"),
    ("calibration", "beta"), ("budget", "abc"), ("budget", float("nan")), ("validation_fraction", 1.0),
    ("n_folds", 1), ("random_state", -1), ("roles", "fault"),
])
def test_parameters_are_validated_at_fit_naming_the_parameter(table, dev, param, value):
    inspector = ActiveInspector(table[2]).set_params(**{param: value})  # accepted until fit, as scikit-learn
    with pytest.raises(InputError, match=f"'{param}' parameter of ActiveInspector"):
        inspector.fit(dev)


def test_scikit_learn_contract_clone_get_and_set_params(table):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    inspector = ActiveInspector(table[2], n_members=2, budget=0.1)
    copy = clone(inspector)
    assert copy.get_params(deep=False) == inspector.get_params(deep=False) and copy is not inspector
    assert copy.set_params(rule="margin").rule == "margin" and inspector.rule == "value_brier"
    with pytest.raises(NotFittedError):
        inspector.outputs(table[1])


def test_empty_tables_and_single_column_roles(table, dev):
    roles = table[2]
    with pytest.raises(InputError, match="no products"):
        ActiveInspector(roles).fit(dev.iloc[:0])
    with pytest.raises(InputError, match="'frame'"):
        ActiveInspector(roles).fit(dev.to_numpy())
    one = type(roles)(label="fault", basic="basic_0", advanced="advanced_0")
    assert one.basic == ("basic_0",) and one.advanced == ("advanced_0",)
    with pytest.raises(InputError, match="non-empty strings"):
        type(roles)(label="fault", basic=("basic_0", 3), advanced="advanced_0")


def test_an_all_missing_advanced_column_is_named_with_its_file(table, dev):
    frame = dev.assign(advanced_2=np.nan)
    frame.attrs["source"] = "line3.csv"
    with pytest.raises(InputError, match=r"line3.csv: advanced column\(s\) \['advanced_2'\] are missing on every row"):
        ActiveInspector(table[2]).fit(frame)
