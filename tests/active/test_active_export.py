import numpy as np
import pandas as pd
import pytest

from fabguard.active import export
from fabguard.active.inspector import ActiveInspector
from fabguard.active.router import Router
from fabguard.errors import InputError


def test_onnx_graphs_match_pytorch_on_real_preprocessed_inputs(saved, inspector, table):
    directory, manifest = saved
    test = table[1]
    xb = inspector._basic(test)
    xf = inspector._full(test)
    for name, (module, _) in export.networks(inspector).items():
        x = xf if name == "teacher" else xb
        assert export.parity(module, directory / f"{name}.onnx", x) < 1e-5
        assert manifest["onnx"][name]["max_abs_diff_vs_torch"] < 1e-5
    session = export.onnx_session(directory / "student.onnx")
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch dimension


def test_router_backends_agree_and_batch_budget_is_met(saved, table):
    directory, _ = saved
    test = table[1]
    onnx, torch_ = Router.load(directory, backend="onnx"), Router.load(directory, backend="torch")
    a = onnx.route(test, budget=0.25, rule="value_brier")
    b = torch_.route(test, budget=0.25, rule="value_brier")
    assert (a["decision"] == "inspect").sum() == round(0.25 * len(test))
    assert (a["decision"] == b["decision"]).all()
    np.testing.assert_allclose(a["fault_score"], b["fault_score"], atol=1e-5)
    np.testing.assert_allclose(a["final_score"], b["final_score"], atol=1e-5)
    # the routed products are the top routing scores
    assert a.loc[a["decision"] == "inspect", "routing_score"].min() >= a.loc[a["decision"] == "accept",
                                                                             "routing_score"].max()


def test_final_score_uses_the_advanced_results_where_given(saved, table):
    directory, _ = saved
    test, roles = table[1], table[2]
    router = Router.load(directory)
    basic_only = test.drop(columns=list(roles.advanced))
    routed = router.route(basic_only, budget=0.1)
    waiting = routed["decision"] == "inspect"
    assert routed.loc[waiting, "final_score"].isna().all()
    assert (routed.loc[~waiting, "final_score"] == routed.loc[~waiting, "fault_score"]).all()
    inspected = test.copy()
    inspected.loc[~waiting.to_numpy(), list(roles.advanced)] = np.nan  # advanced results only where routed
    final = router.final_score(inspected)
    teacher = router.inspector.outputs(test).teacher_score
    np.testing.assert_allclose(final[waiting.to_numpy()], teacher[waiting.to_numpy()], atol=1e-5)
    np.testing.assert_allclose(final[~waiting.to_numpy()], routed.loc[~waiting, "fault_score"], atol=1e-5)


def test_router_takes_numpy_and_streams_with_money(saved, table):
    directory, _ = saved
    test, roles = table[1], table[2]
    router = Router.load(directory)
    from_array = router.route(test[list(roles.basic)].to_numpy(), budget=0.2)
    from_frame = router.route(test[list(roles.basic)].reset_index(drop=True), budget=0.2)
    pd.testing.assert_frame_equal(from_array, from_frame)
    stream = router.route(test, money=2.0, mode="stream")  # 2 per product at 10 per inspection = 20%
    assert (stream["decision"] == "inspect").mean() == pytest.approx(0.2, abs=0.08)
    singles = [router.route(test.iloc[[i]], budget=0.2, mode="stream")["decision"].iloc[0] for i in range(40)]
    assert singles == list(router.route(test.iloc[:40], budget=0.2, mode="stream")["decision"])
    with pytest.raises(InputError, match=r"expected \(n, 6\)"):
        router.route(np.zeros((3, 5)))
    with pytest.raises(InputError, match="mode 'later'"):
        router.route(test, budget=0.1, mode="later")


def test_gradient_boosting_teacher_works_in_python_and_says_why_it_has_no_onnx(dev, table, tmp_path):
    roles = table[2]
    model = ActiveInspector(roles, teacher="gbm", n_members=1, n_folds=2, random_state=0).fit(dev.iloc[:900])
    manifest = export.save(model, tmp_path)
    assert "teacher" not in manifest["onnx"] and not (tmp_path / "teacher.onnx").exists()
    with pytest.raises(InputError, match="gradient-boosting teacher has none"):
        Router.load(tmp_path, backend="onnx")
    routed = Router.load(tmp_path, backend="torch").route(table[1], budget=0.1)
    assert routed["final_score"].between(0, 1).all()


def test_load_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        export.load(tmp_path)


def test_router_seed_decides_random_routing_without_touching_the_model(saved, table):
    directory, _ = saved
    test = table[1]
    a, b, c = (Router.load(directory, seed=s) for s in (5, 5, 6))
    pick = lambda router: router.route(test, budget=0.3, rule="random")["decision"]  # noqa: E731
    pd.testing.assert_series_equal(pick(a), pick(b))
    assert not pick(a).equals(pick(c))
    assert a.inspector.rules_["random"] is not a.rules["random"]
