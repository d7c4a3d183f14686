import numpy as np
import pandas as pd
import pytest

from fabguard.active import data
from fabguard.active.preprocessing import Preprocessor
from fabguard.errors import InputError

ROLES = data.Roles(label="y", basic=("a", "kind"), advanced=("b",), categorical=("kind",))


def frame(**overrides):
    base = {"a": [1.0, 2.0, 3.0, 4.0], "kind": ["L", "M", "L", "H"], "b": [0.5, np.nan, 1.5, np.nan],
            "y": [0, 1, 0, 1]}
    base.update(overrides)
    f = pd.DataFrame(base)
    f.attrs["source"] = "plant.csv"
    return f


def test_roles_refuse_a_column_with_two_roles_and_stray_categoricals():
    with pytest.raises(InputError, match=r"\['a'\] given more than one role"):
        data.Roles(label="y", basic=("a",), advanced=("a",))
    with pytest.raises(InputError, match="neither basic nor advanced"):
        data.Roles(label="y", basic=("a",), advanced=("b",), categorical=("c",))
    with pytest.raises(InputError, match="advanced"):
        data.Roles(label="y", basic=("a",), advanced=())


def test_labels_accept_minus_one_one_and_refuse_a_single_class_with_the_column():
    assert data.labels(frame(y=[-1, 1, -1, 1]), ROLES).tolist() == [0, 1, 0, 1]
    assert data.labels(frame(y=[False, True, True, False]), ROLES).tolist() == [0, 1, 1, 0]
    with pytest.raises(InputError, match=r"plant.csv: column 'y': every product has label 0"):
        data.labels(frame(y=[0, 0, 0, 0]), ROLES)
    with pytest.raises(InputError, match=r"column 'y', data row 3: label is missing"):
        data.labels(frame(y=[0, 1, None, 1]), ROLES)
    with pytest.raises(InputError, match=r"not binary"):
        data.labels(frame(y=[0, 1, 2, 1]), ROLES)
    with pytest.raises(InputError, match=r"data row 2: label 'bad'"):
        data.labels(frame(y=[0, "bad", 0, 1]), ROLES)


def test_a_value_of_the_wrong_type_is_reported_with_file_column_and_row():
    with pytest.raises(InputError, match=r"plant.csv: column 'a', data row 4: value 'x1' is not a number"):
        data.features(frame(a=[1, 2, 3, "x1"]), ROLES, ROLES.features)
    x = data.features(frame(), ROLES, ROLES.features)
    assert x["a"].dtype == float and x["kind"].tolist() == ["L", "M", "L", "H"]


def test_unknown_columns_are_named():
    roles = data.Roles(label="y", basic=("a", "torque"), advanced=("b",))
    with pytest.raises(InputError, match=r"plant.csv: unknown column\(s\) \['torque'\]"):
        data.features(frame(), roles, roles.features)


def test_all_missing_columns_and_rows_are_refused():
    f = frame(b=[np.nan] * 4)
    with pytest.raises(InputError, match=r"advanced column\(s\) \['b'\] are missing on every row"):
        data.check_observed(f, ["b"], "advanced")
    f = frame(a=[1.0, np.nan, 2.0, 3.0], kind=["L", None, "M", "H"])
    with pytest.raises(InputError, match=r"data row 2: all basic features are missing"):
        data.check_rows_observed(f, ["a", "kind"], "basic")


def test_sampled_and_mask_unsampled():
    assert data.sampled(frame(), ROLES).tolist() == [True, False, True, False]
    full = pd.DataFrame({"a": range(100), "kind": "L", "b": np.arange(100.0), "y": [0, 1] * 50})
    masked = data.mask_unsampled(full, ROLES, 0.2, np.random.default_rng(0))
    assert data.sampled(masked, ROLES).sum() == 20
    assert masked["a"].equals(full["a"]) and full["b"].notna().all()
    with pytest.raises(InputError, match="sample rate"):
        data.mask_unsampled(full, ROLES, 0.0, np.random.default_rng(0))


def test_preprocessor_imputes_drops_constant_columns_scales_and_encodes():
    roles = data.Roles(label="y", basic=("a", "const", "kind"), advanced=("b",), categorical=("kind",))
    x = pd.DataFrame({"a": [1.0, np.nan, 3.0, 5.0], "const": 7.0, "kind": ["L", "M", "L", "L"]})
    pipe = Preprocessor(roles.basic, roles.categorical).fit(x)
    out = pipe.transform(x)
    assert out.shape == (4, 3)  # a (scaled), kind=L, kind=M; the constant column is gone
    # a = 1, 3, 3, 5 once imputed: standardised exactly -sqrt(2), 0, 0, sqrt(2); float32 rounding is at
    # most 2^-24 relative, the float64 mean / std / division a few 2^-53 more
    np.testing.assert_allclose(out[:, 0], [-np.sqrt(2), 0, 0, np.sqrt(2)], rtol=2.0**-24 + 2.0**-50, atol=0)
    assert out[:, 1:].tolist() == [[1, 0], [0, 1], [1, 0], [1, 0]]
    unseen = pipe.transform(pd.DataFrame({"a": [2.0], "const": 7.0, "kind": ["H"]}))
    assert unseen[0, 1:].tolist() == [0.0, 0.0]
    again = Preprocessor.from_data(*pipe.to_data())
    np.testing.assert_array_equal(again.transform(x), out)


def test_values_that_cannot_be_scored_are_named_with_column_and_row():
    with pytest.raises(InputError, match=r"plant.csv: column 'a', data row 2: value inf is not a finite number"):
        data.features(frame(a=[1.0, np.inf, 2.0, 3.0]), ROLES, ROLES.features)
    pipe = Preprocessor(("a",)).fit(frame())
    with pytest.raises(InputError, match=r"plant.csv: column 'a', data row 3: value 1e\+308 is too far outside"):
        pipe.transform(frame(a=[1.0, 2.0, 1e308, 3.0]))


def test_read_table_errors_and_bom(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        data.read_table(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="no rows"):
        data.read_table(tmp_path / "empty.csv")
    (tmp_path / "bom.csv").write_bytes("\ufeffa,y\n1,0\n".encode("utf-8"))
    assert list(data.read_table(tmp_path / "bom.csv").columns) == ["a", "y"]


def test_ai4i2020_loader_never_exposes_label_components(shared_data):
    frame, roles = data.load_ai4i2020(shared_data("ai4i2020"))
    assert len(frame) == 10000 and data.labels(frame, roles).sum() == 339
    assert not {"TWF", "HDF", "PWF", "OSF", "RNF"} & set(frame.columns)
    assert set(roles.advanced) == {"Torque [Nm]", "Tool wear [min]"}


def test_secom_loader_and_advanced_blocks_rederived_from_the_file(shared_data):
    path = shared_data("secom")
    frame, roles = data.load_secom(path)
    assert len(frame) == 1506 and len(roles.advanced) == 32 and len(roles.basic) == 558
    assert data.sampled(frame, roles).all() and frame["timestamp"].is_monotonic_increasing
    raw = pd.read_csv(path / "secom.data", sep=r"\s+", header=None, na_values="NaN")
    missing = raw.isna()
    blocks = {}
    for c in raw.columns:
        if missing[c].any():
            blocks.setdefault(missing[c].to_numpy().tobytes(), []).append(c)
    rederived = sorted(c for cols in blocks.values() if (~missing[cols[0]]).sum() < 1000 for c in cols)
    assert tuple(rederived) == data.SECOM_ADVANCED
