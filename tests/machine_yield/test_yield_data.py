"""Loading and validation of production records: every rule, every input format."""

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabguard.errors import InputError
from fabguard.machine_yield import LowYieldDetector, load_production, simulate


def test_valid_table_is_grouped_by_batch_in_step_order(table):
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    data = load_production(shuffled)
    assert data.n_batches == 2 and data.n_machines == 4 and data.n_rows == 7
    frame = data.to_frame().sort_values(["batch", "step"]).reset_index(drop=True)
    expected = table.sort_values(["batch", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(frame.drop(columns="inspected"), expected, check_dtype=False)
    # default inspection rule: machines that detected something somewhere inspect everywhere
    inspects = dict(zip(frame["machine"], frame["inspected"]))
    assert inspects == {"M1": False, "M2": True, "M3": True, "M4": True}
    assert dict(zip(data.batch_ids, data.final_good.tolist())) == {"B1": 95, "B2": 47}


def test_formats_csv_parquet_dict_and_integer_ids(table, tmp_path):
    csv, parquet = tmp_path / "p.csv", tmp_path / "p.parquet"
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    as_dict = {c: table[c].to_numpy() for c in table.columns}
    loaded = [load_production(x).to_frame() for x in (table, csv, parquet, as_dict)]
    for frame in loaded[1:]:
        pd.testing.assert_frame_equal(frame, loaded[0])
    ints = table.assign(batch=table["batch"].str[1:].astype(int), machine=table["machine"].str[1:].astype(int))
    data = load_production(ints)
    assert set(data.machine_ids) == {1, 2, 3, 4} and set(data.batch_ids) == {1, 2}


def test_explicit_inspected_column(table):
    data = load_production(table.assign(inspected=["no", "yes", "no", "1", "false", "true", "True"]))
    frame = data.to_frame()
    assert frame["inspected"].tolist() == [False, True, False, True, False, True, True]


def _error(frame, tmp_path=None):
    with pytest.raises(InputError) as info:
        load_production(frame)
    return str(info.value)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda t: t.drop(columns="defects"), ["missing column", "defects"]),
        (lambda t: t.iloc[0:0], ["no rows"]),
        (lambda t: t.assign(batch=t["batch"].where(t.index != 2, None)), ["row 3", "'batch'", "missing value"]),
        (lambda t: t.assign(defects=t["defects"].astype(object).where(t.index != 5, "x")), ["row 6", "B2", "not a number"]),
        (lambda t: t.assign(pieces_in=t["pieces_in"].where(t.index != 4, 50.5)), ["row 5", "B2", "not a whole number"]),
        (lambda t: t.assign(defects=t["defects"].where(t.index != 1, -1)), ["row 2", "B1", "negative"]),
        (lambda t: t.assign(defects=t["defects"].where(t.index != 3, 99)), ["row 4", "B1", "exceed pieces_in"]),
        (lambda t: t.assign(pieces_in=t["pieces_in"].where(t.index != 2, 100)), ["row 3", "B1", "only 98 left"]),
        (lambda t: t.assign(step=t["step"].where(t.index != 1, 1)), ["row 2", "B1", "appears twice"]),
        (lambda t: t.assign(step=t["step"].where(t.index != 3, 5)), ["row 4", "B1", "not consecutive"]),
        (lambda t: t.assign(step=t["step"] - 1), ["row 1", "start at 1"]),
        (lambda t: t.assign(pieces_in=t["pieces_in"].where(t.index != 4, 0),
                            defects=t["defects"].where(t.index < 4, 0)), ["row 5", "B2", "zero pieces"]),
        (lambda t: t.assign(inspected=["no"] * 7), ["row 2", "B1", "inspected=false"]),
        (lambda t: t.assign(inspected=["maybe"] * 7), ["row 1", "not a boolean"]),
    ],
)
def test_every_rule_names_row_batch_and_column(table, change, words):
    message = _error(change(table))
    for word in words:
        assert word in message, message


def test_file_errors_name_the_file(table, tmp_path):
    path = tmp_path / "records.csv"
    table.assign(defects=table["defects"].where(table.index != 3, 99)).to_csv(path, index=False)
    message = _error(path)
    assert str(path) in message and "row 4" in message and "'B1'" in message
    with pytest.raises(InputError, match="no such file"):
        load_production(tmp_path / "missing.csv")
    odd = tmp_path / "records.xlsx"
    odd.write_text("x")
    with pytest.raises(InputError, match="unknown format"):
        load_production(odd)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot be read"):
        load_production(bad)
    # bytes that are not text (an image posted as a CSV): the typed reader's header is not UTF-8
    for name, content in (("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01"),
                          ("latin1.csv", "batch,step,machine,pieces_in,d\xe9fauts\n1,1,M1,10,0\n".encode("latin-1"))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=re.escape(str(tmp_path / name))):
            load_production(tmp_path / name)


def test_dict_with_unequal_columns():
    with pytest.raises(InputError, match="different lengths"):
        load_production({"batch": [1, 2], "step": [1]})


# Hypothesis: arbitrary small tables, mostly malformed, must never crash the interpreter: they load
# (and then fit) or raise InputError.
cell = st.one_of(st.integers(-3, 40), st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                 st.booleans())
counts = st.one_of(st.integers(-2, 40), cell)


@st.composite
def tables(draw):
    n = draw(st.integers(0, 14))
    columns = {
        "batch": draw(st.lists(st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(0, 2), st.none()), min_size=n, max_size=n)),
        "step": draw(st.lists(st.one_of(st.integers(0, 6), cell), min_size=n, max_size=n)),
        "machine": draw(st.lists(st.one_of(st.sampled_from(["m1", "m2", "m3", "m4"]), st.integers(0, 3), cell), min_size=n, max_size=n)),
        "pieces_in": draw(st.lists(counts, min_size=n, max_size=n)),
        "defects": draw(st.lists(st.one_of(st.integers(0, 3), counts), min_size=n, max_size=n)),
    }
    if draw(st.booleans()):
        columns["inspected"] = draw(st.lists(st.one_of(st.booleans(), st.integers(0, 2), st.text(max_size=2)), min_size=n, max_size=n))
    if draw(st.integers(0, 9)) == 0:
        columns.pop(draw(st.sampled_from(sorted(columns))))
    return pd.DataFrame(columns, dtype=object)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_malformed_tables_never_crash(frame):
    try:
        data = load_production(frame)
    except InputError:
        return
    report = LowYieldDetector(resamples=2, n_bootstrap=100, threads=2, seed=0).fit(data).report_
    assert len(report.machines) == data.n_machines


@st.composite
def valid_tables(draw):
    """Well-formed tables: the loader must accept them and the fit must run."""
    rows = []
    for b in range(draw(st.integers(1, 6))):
        pieces = draw(st.integers(1, 60))
        for step in range(1, draw(st.integers(1, 5)) + 1):
            defects = draw(st.integers(0, pieces))
            rows.append((f"b{b}", step, draw(st.sampled_from(["x", "y", "z", 7])), pieces, defects))
            pieces -= defects + draw(st.integers(0, pieces - defects))
    return pd.DataFrame(rows, columns=["batch", "step", "machine", "pieces_in", "defects"])


@settings(max_examples=150, deadline=None)
@given(valid_tables())
def test_valid_tables_always_fit(frame):
    data = load_production(frame)
    det = LowYieldDetector(resamples=2, n_bootstrap=100, threads=2).fit(data)
    yields = det.yield_.to_numpy()
    assert np.all((yields > 0) & (yields <= 1))


# The authors' wide CSV and messy production data.

def to_authors(frame: pd.DataFrame, drop_last_of=()) -> pd.DataFrame:
    """The long table in the authors' format: one row per (lot, step), the machines of steps 1..j."""
    rows = []
    width = int(frame["step"].max())
    for lot, part in frame.sort_values(["batch", "step"]).groupby("batch", sort=False):
        machines = part["machine"].tolist()
        last = len(part) if lot not in drop_last_of else len(part) + 1  # still in progress: no -1 row
        for j, r in enumerate(part.itertuples(), start=1):
            row = {"Lot": lot} | {f"Process{k:03d}_MachineNo": (machines[k - 1] if k <= j else None)
                                  for k in range(1, width + 1)}
            rows.append(row | {"Final": -1 if j == last else j, "CurrentTotalNum": r.pieces_in,
                               "TotalNum": part["pieces_in"].iloc[0], "BadNum": r.defects})
    return pd.DataFrame(rows)


def test_authors_format_reads_like_the_long_one(table, tmp_path):
    wide = to_authors(table)
    path = tmp_path / "authors.csv"
    wide.to_csv(path, index=False)
    long = load_production(table).to_frame()
    for source in (wide, path):
        frame = load_production(source).to_frame()  # auto-detected from the header
        pd.testing.assert_frame_equal(frame, long)
    pd.testing.assert_frame_equal(load_production(wide, format="authors").to_frame(), long)
    with pytest.raises(InputError, match="missing column"):
        load_production(wide, format="long")


def test_authors_format_errors_name_the_file_columns(table):
    wide = to_authors(table)
    for change, words in [
        (lambda w: w.assign(Final=w["Final"].where(w.index != 2, 9)), ["row 3", "'B1'", "'Final'", "9 is not a step"]),
        (lambda w: w.assign(BadNum=w["BadNum"].where(w.index != 3, 500)), ["row 4", "'BadNum'", "exceed"]),
        (lambda w: w.assign(TotalNum=w["TotalNum"].where(w.index != 4, 7)), ["row 5", "'TotalNum'", "7 pieces"]),
        (lambda w: w.assign(CurrentTotalNum=w["CurrentTotalNum"].astype(object).where(w.index != 1, "x")),
         ["row 2", "'CurrentTotalNum'", "not a number"]),
        (lambda w: w.assign(Lot=w["Lot"].where(w.index != 0, None)), ["row 1", "'Lot'", "missing value"]),
    ]:
        message = _error(change(wide))
        assert all(w in message for w in words), message


def test_lots_in_progress_rework_and_missing_machine_ids(table):
    # B2 never reached its last step; B1 visits M2 twice (rework); one step of B1 lost its machine id
    messy = table.copy()
    messy.loc[2, "machine"] = "M2"
    wide = to_authors(messy, drop_last_of={"B2"})
    wide.loc[wide["Lot"] == "B1", "Process004_MachineNo"] = None
    included = load_production(wide)
    excluded = load_production(wide, in_progress="exclude")
    assert list(included.batch_ids) == ["B1", "B2"] and list(excluded.batch_ids) == ["B1"]
    usage = included.machine_usage().set_index("machine")
    assert usage.loc["M2", "uses"] == 3 and usage.loc["M2", "batches"] == 2  # twice in B1, once in B2
    assert usage.loc["(no machine id)", "uses"] == 1
    # a later error still names the file's row after the in-progress lot was dropped
    broken = wide.assign(BadNum=wide["BadNum"].where(wide.index != 3, 999))
    assert "row 4" in _error_of(lambda: load_production(broken, in_progress="exclude"))
    # the long format: a missing machine id is the same pseudo-machine, never flagged
    data = load_production(table.assign(machine=table["machine"].where(table.index != 2, None)))
    assert "(no machine id)" in set(data.machine_ids)
    report = LowYieldDetector(resamples=2, min_batches=1, threads=1).fit(data).report_.machines.set_index("machine")
    assert report.loc["(no machine id)", "status"] == "no machine id"


def _error_of(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("ids", ["text", "integer"])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_typed_csv_read_matches_the_pandas_read(tmp_path, ids, suffix):
    """A long-format CSV that pyarrow types (read without pandas) gives the records pandas gives:
    rows shuffled, text or integer ids, steps without a machine id, gzip, and a file large enough
    (60,000 rows) for pyarrow to read in several blocks, each with its own dictionary of ids."""
    from fabguard.machine_yield.data import _read_typed_csv, _validate
    from pyarrow import csv

    frame = simulate(40, 3000, 3, seed=5).data.to_frame().sample(frac=1.0, random_state=1).reset_index(drop=True)
    if ids == "integer":
        frame["machine"] = frame["machine"].str[1:].astype(int)
        frame["batch"] = frame["batch"].str[1:].astype(int)
    else:
        frame.loc[[3, 50], "machine"] = None  # an empty cell
    path = tmp_path / f"records{suffix}"
    frame.to_csv(path, index=False)
    assert _read_typed_csv(path) is not None  # the pandas-free path is the one taken
    assert csv.read_csv(path).column("batch").num_chunks > 1
    fast, ref = load_production(path), _validate(pd.read_csv(path, skipinitialspace=True), str(path))
    for name in ("batch_ids", "machine_ids", "batch_ptr", "machine", "pieces_in", "defects", "inspects"):
        assert np.array_equal(getattr(fast, name), getattr(ref, name)), name
    assert [type(v) for v in fast.machine_ids] == [type(v) for v in ref.machine_ids]
    assert (("(no machine id)" in set(fast.machine_ids)) == (ids == "text")) and fast.source == str(path)


def test_csv_cells_pyarrow_does_not_type_go_through_pandas(table, tmp_path):
    """A count written as text, or an unquoted true/false as 1/0, is read by pandas, with its messages."""
    from fabguard.machine_yield.data import _read_typed_csv

    path = tmp_path / "records.csv"
    table.assign(pieces_in=table["pieces_in"].astype(str).where(table.index != 2, "ten")).to_csv(path, index=False)
    assert _read_typed_csv(path) is None
    with pytest.raises(InputError, match="row 3, batch 'B1', column 'pieces_in': not a number: 'ten'"):
        load_production(path)
    table.assign(inspected=(table["defects"] > 0).astype(int)).to_csv(path, index=False)
    assert _read_typed_csv(path) is None and load_production(path).inspects.sum() == 4
    # one machine written two ways: pandas reads both as the integer 7
    table.assign(machine=["7", "07", "3", "4", "7", "3", "4"]).to_csv(path, index=False)
    assert _read_typed_csv(path) is None and list(load_production(path).machine_ids) == [7, 3, 4]


@pytest.mark.parametrize("machines", [["1.5", "2", "3", "4", "1.5", "3", "4"], ["True", "False", "TRUE", "false"] * 2])
def test_ids_pandas_reads_as_floats_or_booleans_go_through_pandas(table, tmp_path, machines):
    from fabguard.machine_yield.data import _read_typed_csv

    path = tmp_path / "records.csv"
    table.assign(machine=machines[: len(table)]).to_csv(path, index=False)
    assert _read_typed_csv(path) is None
    assert set(load_production(path).machine_ids) == set(pd.read_csv(path)["machine"])
