import pickle

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fabguard.active import inspector as inspector_module
from fabguard.active.data import labels
from fabguard.active.inspector import RATIO_GRID, ActiveInspector
from fabguard.errors import InputError


def test_fitted_system_scores_test_products(inspector, table):
    _, test, roles = table
    y = labels(test, roles)
    out = inspector.outputs(test)
    assert np.all((0 <= out.fault_score) & (out.fault_score <= 1))
    assert np.all((0 <= out.teacher_score) & (out.teacher_score <= 1))
    assert set(out.routing) == {"random", "margin", "spread", "value_change", "value_brier", "value_cost"}
    assert roc_auc_score(y, out.teacher_score) > roc_auc_score(y, out.fault_score) > 0.6
    assert set(inspector.best_budget_.values()) <= set(RATIO_GRID)
    basic_only = test.drop(columns=list(roles.advanced))
    assert np.isnan(inspector.outputs(basic_only).teacher_score).all()


def test_calibrated_scores_match_the_fault_rate(inspector, table):
    _, test, roles = table
    out = inspector.outputs(test)
    y = labels(test, roles)
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
    real = inspector_module.out_of_fold

    def spy(estimator, x, y, rows, n_folds, random_state, **fit_arrays):
        calls.append((type(estimator).__name__, len(x), np.asarray(rows).copy(), sorted(fit_arrays)))
        return real(estimator, x, y, rows, n_folds, random_state, **fit_arrays)

    monkeypatch.setattr(inspector_module, "out_of_fold", spy)
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
    with pytest.raises(InputError, match="routing rule 'best'"):
        ActiveInspector(roles, rule="best").fit(dev)


def test_outputs_refuse_partial_advanced_columns_and_empty_rows(inspector, table):
    test, roles = table[1], table[2]
    with pytest.raises(InputError, match=r"advanced column\(s\) \['advanced_0'\] are missing"):
        inspector.outputs(test.drop(columns="advanced_0"))
    blank = test.copy()
    blank.loc[blank.index[2], list(roles.basic)] = np.nan
    with pytest.raises(InputError, match="data row 3: all basic features are missing"):
        inspector.outputs(blank)
