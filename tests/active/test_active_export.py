import json
import shutil

import numpy as np
import pandas as pd
import pytest
from active_bounds import platt_score_bound

from fabguard.active import export
from fabguard.active.data import features
from fabguard.active.estimator import ActiveInspector
from fabguard.active.router import Router
from fabguard.errors import InputError, ModelFileError
from fabguard.runtime.parity import max_abs_diff
from fabguard.runtime.session import create_session


def onnx_outputs(path, x):
    return create_session(path, ["CPUExecutionProvider"], threads=1).run(None, {"features": x})[0]


def test_onnx_graphs_match_the_fitted_networks_within_the_float32_bound(saved, inspector, table):
    directory, manifest = saved
    test = table[1]
    x = features(test, inspector.roles, inspector.roles.features)
    inputs = {"student": inspector.system_.basic.transform(x), "router": inspector.system_.basic.transform(x),
              "teacher": inspector.system_.full.transform(x)}
    for name, (model, _, reference) in export.networks(inspector).items():
        got = onnx_outputs(directory / f"{name}.onnx", inputs[name])
        # the bound is computed from this network's weights and these rows (export.mlp_bound)
        assert max_abs_diff(got, reference(inputs[name])) <= export.mlp_bound(model.net_, inputs[name])
        recorded = manifest["graphs"][name]
        assert recorded["max_abs_diff_vs_reference"] <= recorded["float32_bound"]
    session = create_session(directory / "student.onnx", ["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch dimension


def fault_bound(router, frame, member_bound):
    """How far the calibrated fault scores of ONNX and PyTorch may differ (see active_bounds)."""
    members = router.runners["student"](router.system.basic.transform(features(frame, router.system.roles,
                                                                                  router.system.roles.basic)))
    cal = router.system.student_cal
    return platt_score_bound(members, member_bound, cal.coef_, cal.intercept_)


def test_the_loaded_folder_routes_exactly_as_the_fitted_system(saved, inspector, table):
    directory, manifest = saved
    test = table[1]
    loaded, fitted = Router.load(directory, seed=5), Router.from_inspector(inspector, seed=5)
    student_bound = manifest["graphs"]["student"]["float32_bound"]
    for rule in loaded.rules:
        a, b = loaded.route(test, budget=0.25, rule=rule), fitted.route(test, budget=0.25, rule=rule)
        pd.testing.assert_series_equal(a["decision"], b["decision"])
        assert (a["decision"] == "inspect").sum() == round(0.25 * len(test))
        assert (np.abs(a["fault_score"] - b["fault_score"]) <= fault_bound(fitted, test, student_bound)).all()
        inspected = a.loc[a["decision"] == "inspect", "routing_score"]
        assert inspected.min() >= a.loc[a["decision"] == "accept", "routing_score"].max()


def test_final_score_uses_the_advanced_results_where_given(saved, inspector, table):
    directory, manifest = saved
    test, roles = table[1], table[2]
    router = Router.load(directory)
    routed = router.route(test.drop(columns=list(roles.advanced)), budget=0.1)
    waiting = routed["decision"].eq("inspect").to_numpy()
    assert routed.loc[waiting, "final_score"].isna().all()
    assert (routed.loc[~waiting, "final_score"] == routed.loc[~waiting, "fault_score"]).all()
    inspected = test.copy()
    inspected.loc[~waiting, list(roles.advanced)] = np.nan  # advanced results only where routed
    final = router.final_score(inspected)
    np.testing.assert_array_equal(final[~waiting], routed.loc[~waiting, "fault_score"])  # same graph, same rows
    teacher = inspector.outputs(test).teacher_score
    xf = inspector.system_.full.transform(features(test, roles, roles.features))[waiting]
    members = inspector.runners()["teacher"](xf)
    cal = inspector.system_.teacher_cal
    bound = platt_score_bound(members, manifest["graphs"]["teacher"]["float32_bound"], cal.coef_, cal.intercept_)
    assert (np.abs(final[waiting] - teacher[waiting]) <= bound).all()


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
    with pytest.raises(InputError, match="'mode'"):
        router.route(test, budget=0.1, mode="later")


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": "abc"}, "'budget'"), ({"budget": 1.5}, "'budget'"), ({"budget": float("nan")}, "'budget'"),
    ({"money": float("nan")}, "'money'"), ({"money": -1.0}, "'money'"), ({"budget": True}, "'budget'"),
    ({"budget": 0.1, "money": 5.0}, "exactly one budget"), ({"rule": "best"}, "routing rule 'best'"),
])
def test_route_refuses_bad_arguments_before_scoring(saved, table, kwargs, message):
    router = Router.load(saved[0])
    router.runners = {}  # scoring would fail with a KeyError: the refusal must come first
    with pytest.raises(InputError, match=message):
        router.route(table[1], **kwargs)


def test_route_refuses_bad_tables_naming_column_and_row(saved, table):
    router = Router.load(saved[0])
    test = table[1].copy()
    test.attrs["source"] = "line3.csv"
    with pytest.raises(InputError, match="line3.csv: no products"):
        router.route(test.iloc[:0], budget=0.1)
    for value, message in ((np.inf, "value inf is not a finite number"), (1e308, "too far outside the training")):
        bad = test.copy()
        bad.iloc[4, bad.columns.get_loc("basic_3")] = value
        with pytest.raises(InputError, match=rf"line3.csv: column 'basic_3', data row 5: .*{message}"):
            router.route(bad, budget=0.1)


def test_gradient_boosting_teacher_is_saved_as_a_tree_graph(dev, table, tmp_path):
    roles = table[2]
    model = ActiveInspector(roles, teacher="gbm", n_members=1, n_folds=2, random_state=0).fit(dev.iloc[:900])
    manifest = export.save(model, tmp_path / "gbm")
    x = model.system_.full.transform(features(table[1], roles, roles.features))
    got = onnx_outputs(tmp_path / "gbm" / "teacher.onnx", x)
    # the same leaves on both sides; only the float32 sum of leaf values differs (export.tree_bound)
    assert max_abs_diff(got[:, 0], model.teacher_.decision_function(x)) <= export.tree_bound(model.teacher_)
    assert manifest["graphs"]["teacher"]["max_abs_diff_vs_reference"] <= manifest["graphs"]["teacher"]["float32_bound"]
    a = Router.load(tmp_path / "gbm").route(table[1], budget=0.1)
    b = Router.from_inspector(model).route(table[1], budget=0.1)
    pd.testing.assert_series_equal(a["decision"], b["decision"])
    assert a["final_score"].between(0, 1).all()


def copy_model(saved, tmp_path, name="model"):
    return shutil.copytree(saved[0], tmp_path / name)


def test_a_pickle_in_the_folder_is_refused_and_never_run(saved, tmp_path):
    folder = copy_model(saved, tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    (folder / "inspector.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelFileError, match=r"inspector.pkl: a pickle .* never loads pickles"):
        Router.load(folder)
    (folder / "manifest.json").unlink()  # an old-format folder: pickle and graphs only
    with pytest.raises(ModelFileError, match="never loads pickles"):
        Router.load(folder)
    assert not marker.exists()


def test_every_part_is_checked_against_the_manifest(saved, tmp_path, dev, table):
    folder = copy_model(saved, tmp_path)
    (folder / "student.onnx").unlink()
    with pytest.raises(ModelFileError, match=r"student.onnx: part missing"):
        Router.load(folder)
    for part in ("student.onnx", "arrays.npz"):
        folder = copy_model(saved, tmp_path, f"truncated_{part}")
        data = (folder / part).read_bytes()
        (folder / part).write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelFileError, match=rf"{part}: content differs from the manifest"):
            Router.load(folder)
    folder = copy_model(saved, tmp_path, "swapped")
    (folder / "student.onnx").write_bytes((saved[0] / "router.onnx").read_bytes())
    with pytest.raises(ModelFileError, match=r"student.onnx: content differs"):
        Router.load(folder)
    # a crafted manifest with matching hashes still cannot pair graphs that do not belong together
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["student.onnx"] = export._sha256(folder / "student.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match=r"student.onnx: the 'router' graph"):
        Router.load(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"manifest.json: not valid JSON"):
        Router.load(folder)


def test_an_interrupted_save_leaves_the_old_model_whole(saved, inspector, table, tmp_path, monkeypatch):
    folder = copy_model(saved, tmp_path)
    before = Router.load(folder, seed=1).route(table[1], budget=0.3)
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # after the first graph is written into the new folder
            raise KeyboardInterrupt

    real = export._write_graph
    monkeypatch.setattr(export, "_write_graph", lambda *a, **k: (interrupt(*a), real(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        export.save(inspector, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    pd.testing.assert_frame_equal(Router.load(folder, seed=1).route(table[1], budget=0.3), before)


def test_router_seed_decides_random_routing_without_touching_the_model(saved, table):
    directory, _ = saved
    test = table[1]
    a, b, c = (Router.load(directory, seed=s) for s in (5, 5, 6))
    pick = lambda router: router.route(test, budget=0.3, rule="random")["decision"]  # noqa: E731
    pd.testing.assert_series_equal(pick(a), pick(b))
    assert not pick(a).equals(pick(c))
    assert a.system.rules["random"].seed == 0 and a.rules["random"].seed == 5
    with pytest.raises(InputError, match="'seed'"):
        Router.load(directory, seed=-1)


def test_routing_from_a_folder_needs_neither_torch_nor_scikit_learn(saved, table, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "t.csv"
    table[1].to_csv(data, index=False)
    code = ("import sys; from fabguard.active import data, Router; "
            f"Router.load({str(saved[0])!r}).route(data.read_table({str(data)!r}), budget=0.2); "
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
