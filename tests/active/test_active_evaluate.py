import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fabguard.active.data import labels
from fabguard.active.evaluate import (distillation_table, evaluate_routing, per_seed_summary, ratio_curves,
                                      recall_at_fpr, split, write_results)
from fabguard.active.routing import Batch, CostModel
from fabguard.active.simulate import simulate_inspections
from fabguard.active.system import Outputs
from active_bounds import float64_bound
from fabguard.errors import InputError


def test_splits_hold_out_the_latest_or_a_stratified_share(table):
    frame, _, roles = table
    dev, test = split(frame, roles, "time", seed=0)
    assert len(test) == 320 and test["time"].min() > dev["time"].max()
    dev, test = split(frame, roles, "stratified", seed=0)
    assert abs(labels(test, roles).mean() - labels(frame, roles).mean()) < 0.01
    assert not set(dev.index) & set(test.index)
    with pytest.raises(InputError, match="'weekly'"):
        split(frame, roles, "weekly", seed=0)


def test_ratio_curves_run_from_the_basic_model_to_advanced_on_all():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.1).astype(int)
    student = np.clip(0.1 + 0.1 * (y - 0.1) + rng.normal(0, 0.08, 500), 0, 1)
    teacher = np.clip(0.1 + 0.5 * (y - 0.1) + rng.normal(0, 0.08, 500), 0, 1)
    out = Outputs(Batch(student, None, None), {"oracle": np.abs(teacher - student), "random": rng.random(500)},
                  teacher)
    cost = CostModel()
    curves = ratio_curves(y, out, cost, fpr=0.05)
    ends = curves[curves["ratio"].isin([0.0, 1.0])].set_index(["rule", "ratio"])
    # at the ends every rule scores exactly the student's / the teacher's arrays with the same functions
    assert ends.loc[("random", 0.0), "auroc"] == roc_auc_score(y, student)
    assert ends.loc[("random", 1.0), "auroc"] == roc_auc_score(y, teacher)
    assert ends.loc[("oracle", 1.0), "cost"] == cost.per_product(y, teacher, np.ones(500, bool))
    assert ends.loc[("oracle", 0.0), "cost"] == cost.per_product(y, student, np.zeros(500, bool))
    assert recall_at_fpr(y, teacher, 0.05) == ends.loc[("random", 1.0), "recall_at_fpr"]


def test_summary_ratios_on_a_hand_made_curve():
    ratio = np.round(np.linspace(0, 1, 11), 2)
    auroc = np.array([0.80, 0.84, 0.86, 0.88, 0.895, 0.90, 0.905, 0.91, 0.91, 0.91, 0.90])
    cost = np.array([12, 11, 10.5, 10.4, 10.8, 11, 12, 13, 14, 15, 16.0])
    curves = pd.DataFrame({"split": "time", "seed": 0, "student": "distilled", "rule": "r", "ratio": ratio,
                           "auroc": auroc, "cost": cost, "val_budget": 0.2})
    row = per_seed_summary(curves).iloc[0]
    assert row["half_gap_ratio"] == 0.2  # gap 0.10: first ratio with AUROC >= 0.85
    assert row["within_0.01_ratio"] == 0.4  # first ratio with AUROC >= 0.90 - 0.01
    assert (row["min_cost"], row["min_cost_ratio"], row["cost_at_val_budget"]) == (10.4, 0.3, 10.5)
    worse = curves.assign(auroc=np.linspace(0.8, 0.7, 11))
    assert np.isnan(per_seed_summary(worse).iloc[0]["half_gap_ratio"])  # advanced is no better: no gap


def test_evaluation_end_to_end_writes_every_table(tmp_path):
    frame, roles = simulate_inspections(n_products=1000, fault_rate=0.1, seed=5)
    curves = evaluate_routing(frame, roles, seeds=[7], splits=["time"], sample_rate=0.5, n_members=1, n_folds=2)
    assert set(curves["student"]) == {"distilled", "undistilled"} and set(curves["seed"]) == {7}
    for ratio in (0.0, 1.0):  # every rule starts at the student alone and ends at advanced-on-all
        ends = curves[curves["ratio"] == ratio].groupby(["seed", "student"])["auroc"]
        # the same AUROC (<= 1) everywhere; random's is a float64 mean over 20 draws of it
        assert (ends.max() - ends.min() <= float64_bound(1, 20)).all()
    per_seed = per_seed_summary(curves)
    assert (per_seed.loc[per_seed["rule"] == "random", "min_cost_vs_random"] == 0).all()
    table = distillation_table(curves)
    assert table.loc[table["student"] == "distilled", "auroc_diff_vs_undistilled_mean"].notna().all()
    result = write_results(curves, tmp_path, "sim", "fabguard active evaluate ...", {"seeds": [7], "fpr": 0.05})
    names = {p.name for p in tmp_path.iterdir()}
    assert {"curves.csv.gz", "curves_mean.csv", "summary.csv", "distillation.csv", "summary.json", "report.md",
            "plot.png"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left
    assert json.loads((tmp_path / "summary.json").read_text())["command"] == result["command"]


@pytest.mark.parametrize("kwargs, message", [
    ({"seeds": []}, "no seeds"), ({"seeds": 3}, "'seeds'"), ({"fpr": 0.0}, "'fpr'"), ({"fpr": float("nan")}, "'fpr'"),
    ({"fpr": 2.0}, "'fpr'"), ({"test_fraction": 1.0}, "'test_fraction'"), ({"sample_rate": 1.5}, "'sample_rate'"),
    ({"splits": ["weekly"]}, "'splits'"), ({"n_members": 0}, "'n_members' parameter of ActiveInspector"),
])
def test_evaluation_parameters_are_refused_before_any_fit(table, kwargs, message):
    frame, _, roles = table
    with pytest.raises(InputError, match=message):
        evaluate_routing(frame, roles, **{"seeds": [0], **kwargs})
