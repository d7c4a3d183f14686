"""The authors' wide CSV: step numbers in the header are names, never sizes."""

import pandas as pd
import pytest
from fabguard.errors import InputError
from fabguard.machine_yield import load_production
from fabguard.machine_yield.data import NO_MACHINE
from test_yield_data import to_authors


def _csv(wide: pd.DataFrame, tmp_path) -> str:
    path = tmp_path / "authors.csv"
    wide.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("number", ["999999999999", "9" * 18])
def test_a_huge_step_number_in_the_header_costs_one_column(table, tmp_path, number):
    # no lot reaches that step, so its column is never read (it used to size a rows x step matrix)
    wide = to_authors(table).assign(**{f"Process{number}_MachineNo": "MX"})
    pd.testing.assert_frame_equal(load_production(_csv(wide, tmp_path)).to_frame(), load_production(table).to_frame())
    # the brief's one-row file: step 1 has no column, so no machine id
    one = pd.DataFrame({"Lot": ["L1"], f"Process{number}_MachineNo": ["M1"], "Final": [-1], "CurrentTotalNum": [10],
                        "TotalNum": [10], "BadNum": [1]})
    frame = load_production(_csv(one, tmp_path)).to_frame()
    assert frame[["batch", "step", "machine"]].values.tolist() == [["L1", 1, NO_MACHINE]]


@pytest.mark.parametrize("digits", [19, 5000])
def test_a_step_number_of_more_digits_than_a_final_can_hold_is_refused(table, tmp_path, digits):
    # 5000 digits: more than int() converts (a ValueError, not a clear refusal)
    wide = to_authors(table).assign(**{f"Process{'9' * digits}_MachineNo": "MX"})
    with pytest.raises(InputError, match=f"step number of {digits} digits"):
        load_production(_csv(wide, tmp_path))


def test_a_huge_final_is_refused_naming_the_file_row_and_column(table, tmp_path):
    wide = to_authors(table).assign(Process999999999999_MachineNo="MX")
    wide.loc[3, "Final"] = 999999999999  # B1's last step
    path = _csv(wide, tmp_path)
    with pytest.raises(InputError) as info:
        load_production(path)
    message = str(info.value)
    assert all(w in message for w in (path, "row 4", "'B1'", "'Final'", "999999999999")), message


def test_gaps_in_the_step_numbers_are_steps_without_machine_id(table, tmp_path):
    # Process001, 003, 004 only: step 2 keeps its pieces and defects, Final -1 still reads step 4's column
    wide = to_authors(table).drop(columns="Process002_MachineNo")
    expected = load_production(table.assign(machine=table["machine"].where(table["step"] != 2, None))).to_frame()
    pd.testing.assert_frame_equal(load_production(_csv(wide, tmp_path)).to_frame(), expected)
    assert (load_production(wide).to_frame().query("step == 2")["machine"] == NO_MACHINE).all()


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda w: w.assign(Process000_MachineNo="M0"), ["column Process000_MachineNo", "step 0", "count from 1"]),
        (lambda w: w.assign(Process1_MachineNo="M9"),
         ["column Process1_MachineNo", "step 1 already has column Process001_MachineNo"]),
    ],
    ids=["step 0", "step named twice"],
)
def test_step_zero_or_a_step_named_twice_is_refused_naming_the_column(table, tmp_path, change, words):
    path = _csv(change(to_authors(table)), tmp_path)
    with pytest.raises(InputError) as info:
        load_production(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and all(w in message for w in words), message
