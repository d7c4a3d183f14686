"""Issue 8 for the yield engine: every bad argument, size, table, array or output path is refused with
a message that says what and where (InputError from the API, exit 2 and one error line from the CLI),
before any long work, and nothing crashes the interpreter."""

import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fabguard import _core, params
from fabguard.cli import main
from fabguard.errors import InputError, InvalidParameterError, ResourceError
from fabguard.machine_yield import (CommonalityAnalysis, GLMYieldEstimator, LowYieldDetector, batches_needed,
                                    load_production, simulate)


def run_cli(argv, capsys):
    """(exit code, stderr) of ``fabguard ARGV``, in process; argparse's SystemExit counts as its code."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def records(tmp_path, table):
    path = tmp_path / "small.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture
def no_computation(monkeypatch):
    """Fail the test if a command starts reading data or simulating: its refusals must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the command started its work before refusing")

    for module in ("data", "detector", "baselines"):
        monkeypatch.setattr(f"fabguard.machine_yield.{module}.load_production", refuse)
    monkeypatch.setattr("fabguard.machine_yield.simulate", refuse)
    monkeypatch.setattr("fabguard.machine_yield.sizing.batches_needed", refuse)


# 1. Every number is typed and range-checked while parsing.

@pytest.mark.parametrize("argv, words", [
    (["detect", "--seed", "-1"], ["--seed", "[0, 4294967295]"]),
    (["detect", "--seed", "1e23"], ["--seed", "not an integer"]),
    (["detect", "--resamples", "0"], ["--resamples", "[2, inf)"]),
    (["detect", "--resamples", "2.5"], ["--resamples", "not an integer"]),
    (["detect", "--threads", "0"], ["--threads", "[1, 1024]"]),
    (["detect", "--threads", "100000"], ["--threads", "[1, 1024]"]),
    (["detect", "--bootstrap", "99"], ["--bootstrap", "[100, inf)"]),
    (["detect", "--fraction", "0"], ["--fraction", "(0, 1]"]),
    (["detect", "--fraction", "nan"], ["--fraction", "(0, 1]"]),
    (["detect", "--alpha", "1"], ["--alpha", "(0, 1)"]),
    (["detect", "--alpha", "inf"], ["--alpha", "(0, 1)"]),
    (["detect", "--method", "glm", "--threshold", "5"], ["--threshold", "(0, 1]"]),
    (["detect", "--method", "glm", "--threshold", "-1"], ["--threshold", "(0, 1]"]),
    (["detect", "--method", "glm", "--threshold", "nan"], ["--threshold", "(0, 1]"]),
    (["detect", "--method", "glm", "--confidence", "7"], ["--confidence", "(0, 1)"]),
    (["detect", "--max-candidates", "0"], ["--max-candidates", "[1, inf)"]),
    (["detect", "--tol=-1e-3"], ["--tol", "[0, inf)"]),
    (["detect", "--tol", "inf"], ["--tol"]),
    (["detect", "--max-iter", str(2**31)], ["--max-iter", "2147483647"]),
    (["detect", "--top", "-1"], ["--top", "[0, inf)"]),
    (["detect", "--margin", "1"], ["--margin", "[0, 1)"]),
    (["detect", "--min-batches", "0"], ["--min-batches", "[1, inf)"]),
    (["detect", "--resample-tol", "-1"], ["--resample-tol", "[0, inf)"]),
    (["detect", "--low-batch-quantile", "1"], ["--low-batch-quantile", "(0, 1)"]),
    (["simulate", "o.csv", "--batches", "1e10"], ["--batches", "not an integer"]),
    (["simulate", "o.csv", "--batches", "0"], ["--batches", "[1, inf)"]),
    (["simulate", "o.csv", "--machines", "1"], ["--machines", "[2, inf)"]),
    (["simulate", "o.csv", "--low", "-1"], ["--low", "[0, inf)"]),
    (["simulate", "o.csv", "--low-yield", "1.5"], ["--low-yield", "[0, 1]"]),
    (["simulate", "o.csv", "--healthy-min", "nan"], ["--healthy-min", "[0, 1]"]),
    (["simulate", "o.csv", "--inspect-share", "1"], ["--inspect-share", "(0, 1)"]),
    (["simulate", "o.csv", "--seed", "-1"], ["--seed"]),
    (["sizing", "--machines", "5", "--low", "1", "--reps", "0"], ["--reps", "[1, inf)"]),
    (["sizing", "--machines", "5", "--low", "0"], ["--low", "[1, inf)"]),
    (["sizing", "--machines", "5", "--low", "1", "--target-recall", "0"], ["--target-recall", "(0, 1]"]),
    (["sizing", "--machines", "5", "--low", "1", "--resamples", "1"], ["--resamples"]),
    (["sizing", "--machines", "5", "--low", "1", "--max-batches", "0"], ["--max-batches"]),
    (["sizing", "--machines", "5", "--low", "1", "--threads", "0"], ["--threads"]),
    (["sizing", "--machines", "5", "--low", "1", "--seed", str(2**32)], ["--seed"]),
])
def test_numeric_arguments_are_refused_while_parsing(capsys, no_computation, argv, words):
    code, err = run_cli(["yield", *argv], capsys)
    assert code == 2
    assert err.splitlines()[-1].startswith("fabguard: error: fabguard yield ")
    assert all(w in err for w in words), err
    assert "Traceback" not in err


def test_sizing_refuses_more_low_machines_than_machines(capsys, no_computation):
    code, err = run_cli(["yield", "sizing", "--machines", "5", "--low", "6"], capsys)
    assert code == 2 and "--low 6" in err and "--machines 5" in err


# 2. One validation for every method, scikit-learn's parameter contract.

ESTIMATORS = [LowYieldDetector, GLMYieldEstimator, CommonalityAnalysis]


@pytest.mark.parametrize("cls, name, value", [
    (LowYieldDetector, "fraction", "x"), (LowYieldDetector, "fraction", 0), (LowYieldDetector, "resamples", 1),
    (LowYieldDetector, "resamples", 2.0), (LowYieldDetector, "alpha", float("nan")),
    (LowYieldDetector, "threshold", 2.0), (LowYieldDetector, "n_bootstrap", 10), (LowYieldDetector, "tol", -1.0),
    (LowYieldDetector, "max_iter", 0), (LowYieldDetector, "threads", 0), (LowYieldDetector, "threads", True),
    (LowYieldDetector, "engine", "gpu"), (LowYieldDetector, "seed", -1), (LowYieldDetector, "seed", 2**64),
    (LowYieldDetector, "max_candidates", 0),
    (GLMYieldEstimator, "threshold", 5), (GLMYieldEstimator, "threshold", -1), (GLMYieldEstimator, "threshold", np.nan),
    (GLMYieldEstimator, "confidence", 7), (GLMYieldEstimator, "alpha", 0), (GLMYieldEstimator, "max_candidates", 1.5),
    (CommonalityAnalysis, "low_batch_quantile", 1.5), (CommonalityAnalysis, "alpha", "0.05"),
    (CommonalityAnalysis, "max_candidates", None),
])
def test_every_estimator_names_the_refused_parameter(table, no_computation, cls, name, value):
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of {cls.__name__}"):
        cls(**{name: value}).fit(table)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_scikit_learn_parameter_contract(cls, table):
    sklearn_base = pytest.importorskip("sklearn.base")
    est = cls(alpha=0.01)
    params_ = est.get_params(deep=True)
    assert params_ == est.get_params(deep=False) and params_["alpha"] == 0.01
    clone = sklearn_base.clone(est)
    assert clone is not est and clone.get_params() == params_
    assert est.set_params(alpha=0.02) is est and est.alpha == 0.02
    assert cls(**est.get_params()).get_params() == est.get_params()
    with pytest.raises(InvalidParameterError, match="no parameter 'nope'"):
        est.set_params(nope=1)
    assert not [k for k in vars(est) if k.endswith("_")]  # learned state only in fit
    est.fit(table)
    assert "report_" in vars(est) and est.report_.params == est.get_params()
    assert not [k for k in vars(sklearn_base.clone(est)) if k.endswith("_")]


def test_free_functions_validate_their_arguments():
    for call, name in [
        (lambda: simulate(2.5, 10), "n_machines"), (lambda: simulate(10, 10, n_low=11), "n_low"),
        (lambda: simulate(10, 10, low_yield=float("nan")), "low_yield"),
        (lambda: simulate(10, 10, healthy_yield=(0.9,)), "healthy_yield"),
        (lambda: simulate(10, 10, seed=-1), "seed"),
        (lambda: batches_needed(10, 1, reps=0), "reps"), (lambda: batches_needed(10, 0), "n_low"),
        (lambda: batches_needed(10, 1, target_recall=1.5), "target_recall"),
    ]:
        with pytest.raises(InvalidParameterError, match=f"'{name}'"):
            call()


# 3. Sizes that cannot fit are refused with the figure, before allocating.

@pytest.fixture
def one_gb(monkeypatch):
    """Pretend 1 GB of memory is available, so that the refusals do not depend on this machine."""
    monkeypatch.setattr(params, "available_memory", lambda: 10**9)


@pytest.mark.parametrize("call, words", [
    (lambda data: LowYieldDetector(interval="bootstrap", resamples=1_000_000).fit(data),
     ["LowYieldDetector.fit", "resamples"]),
    (lambda data: LowYieldDetector(interval="paper", n_bootstrap=10**9).fit(data), ["LowYieldDetector.fit", "n_bootstrap"]),
    (lambda data: LowYieldDetector(interval="paper", n_bootstrap=10**30).fit(data), ["LowYieldDetector.fit"]),
    (lambda data: simulate(250, 10**10), ["10000000000 batches"]),
    (lambda data: batches_needed(100, 1, max_batches=10**9), ["sizing up to 1000000000 batches"]),
])
def test_sizes_that_cannot_fit_are_refused_with_the_figure(one_gb, small_sim, call, words):
    started = time.perf_counter()
    with pytest.raises(ResourceError, match=r"needs about [\d.e+]+ [KMGT]?B of memory, more than the 1 GB") as info:
        call(small_sim.data)
    assert time.perf_counter() - started < 5
    assert all(w in str(info.value) for w in words), info.value


def test_information_interval_refuses_a_matrix_that_cannot_fit(monkeypatch, small_sim):
    monkeypatch.setattr(params, "available_memory", lambda: 10**5)  # the 80 x 80 information alone needs 0.2 MB
    with pytest.raises(ResourceError, match="LowYieldDetector.fit.*interval='bootstrap'"):
        LowYieldDetector().fit(small_sim.data)


def test_glm_refuses_a_fisher_information_that_cannot_fit(monkeypatch, small_sim):
    monkeypatch.setattr(params, "available_memory", lambda: 1000)
    with pytest.raises(ResourceError, match="GLMYieldEstimator.fit"):
        GLMYieldEstimator().fit(small_sim.data)


def test_cli_refuses_a_simulation_that_cannot_fit(one_gb, tmp_path, capsys):
    code, err = run_cli(["yield", "simulate", str(tmp_path / "o.csv"), "--batches", str(10**10)], capsys)
    assert code == 2 and "needs about" in err and "TB" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_core_refuses_sizes_instead_of_crashing():
    with pytest.raises(ValueError, match="overflows"):
        _core.draw_resamples(1000, 0.8, 2**61, 0)
    prod = _core.Production(np.array([0, 1], np.int64), np.array([0], np.int32), np.array([5], np.int64),
                            np.array([0], np.int64), np.array([0], np.uint8), 1)
    one = np.array([0, 1], np.int64)
    with pytest.raises(ValueError, match="threads must be in"):
        _core.fit_em(prod, one, one[:1], np.full(1, 0.9), np.full(1, 0.5), threads=100_000)


# 4. Totals that overflow int64 are refused; numbers print plainly.

def test_int64_overflow_of_a_total_is_refused_naming_file_row_column(tmp_path, capsys):
    path = tmp_path / "big.csv"
    pd.DataFrame({"batch": np.arange(1500), "step": 1, "machine": "M1", "pieces_in": 2**53,
                  "defects": 0}).to_csv(path, index=False)
    with pytest.raises(InputError) as info:
        load_production(path)
    message = str(info.value)
    # 2^63 / 2^53 = 1024 rows reach the int64 range
    for word in (str(path), "row 1024", "batch 1023", "column 'pieces_in'", "'M1'", "64-bit"):
        assert word in message, message
    code, err = run_cli(["yield", "detect", str(path), "--quiet"], capsys)
    assert code == 2 and "row 1024" in err and "-9223372036854775808" not in err


def test_a_count_beyond_2_53_prints_as_a_plain_number(tmp_path):
    path = tmp_path / "huge.csv"
    pd.DataFrame({"batch": [1], "step": [1], "machine": ["M1"], "pieces_in": [np.uint64(2**63)],
                  "defects": [0]}).to_csv(path, index=False)
    with pytest.raises(InputError) as info:
        load_production(path)
    message = str(info.value)
    assert "9223372036854775808 is too large" in message and "np." not in message
    assert "batch 1," in message and "column 'pieces_in'" in message


def test_totals_fit_when_they_are_in_range(tmp_path):
    frame = pd.DataFrame({"batch": np.arange(1000), "step": 1, "machine": "M1", "pieces_in": 2**53, "defects": 0})
    usage = load_production(frame).machine_usage()
    assert usage["pieces"].iat[0] == 1000 * 2**53


# 5. Validated arrays are read-only; tampered or hand-built arrays never crash the interpreter.

def test_validated_arrays_are_read_only(table, small_sim):
    for data in (load_production(table), small_sim.data):
        for name in ("batch_ids", "machine_ids", "batch_ptr", "machine", "pieces_in", "defects", "inspects",
                     "batch_of_row", "final_good", "detected_after", "first_use"):
            array = getattr(data, name)
            assert not array.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            data.machine[0] = 99


def test_the_core_checks_the_arrays_again_on_every_fit():
    arrays = dict(batch_ptr=np.array([0, 2, 3], np.int64), machine=np.array([0, 1, 1], np.int32),
                  pieces_in=np.array([10, 9, 5], np.int64), defects=np.array([0, 1, 0], np.int64),
                  inspects=np.array([0, 1, 1], np.uint8), n_machines=2)
    prod = _core.Production(**arrays)
    arrays["machine"][1] = 10**6  # shared with the view: written after it was validated
    one = np.array([0, 2], np.int64)
    with pytest.raises(ValueError, match="machine index 1000000 outside"):
        _core.fit_em(prod, one, np.array([0, 1], np.int64), np.full(2, 0.9), np.full(2, 0.5))


TAMPER = textwrap.dedent('''
    import numpy as np
    from fabguard.errors import InputError
    from fabguard.machine_yield import (CommonalityAnalysis, GLMYieldEstimator, LowYieldDetector, ProductionData,
                                        load_production, simulate)
    from fabguard.machine_yield.em import fit_subsets

    frame = simulate(20, 60, 1, seed=3).data.to_frame()

    def fresh():
        return load_production(frame)  # arrays that own their memory: setflags(write=True) works on them

    def writable(data, name, index, value):
        array = getattr(data, name)
        array.setflags(write=True)
        array[index] = value
        return data

    def rebuilt(data, **change):
        fields = dict(batch_ids=data.batch_ids, machine_ids=data.machine_ids, batch_ptr=data.batch_ptr,
                      machine=data.machine, pieces_in=data.pieces_in, defects=data.defects, inspects=data.inspects)
        return ProductionData(**(fields | change))

    def cached_then_written(data):
        data.core  # the C++ view is built and cached, then the shared array changes under it
        return writable(data, "machine", 5, -7)

    cases = [
        lambda d: writable(d, "machine", 3, 10**6),
        lambda d: writable(d, "machine", 0, -1),
        lambda d: writable(d, "batch_ptr", 5, 10**9),
        lambda d: writable(d, "batch_ptr", 1, 0),
        lambda d: writable(d, "defects", 2, 10**12),
        lambda d: writable(d, "pieces_in", 0, -3),
        lambda d: writable(d, "inspects", 4, 7),
        cached_then_written,
        lambda d: rebuilt(d, machine=np.full(len(d.machine), 99, np.int32)),
        lambda d: rebuilt(d, machine=d.machine.astype(np.int64)),
        lambda d: rebuilt(d, batch_ptr=d.batch_ptr[:-1]),
        lambda d: rebuilt(d, pieces_in=d.pieces_in[:-1]),
        lambda d: rebuilt(d, batch_ptr=d.batch_ptr[::-1].copy()),
        lambda d: rebuilt(d, machine_ids=d.machine_ids[:2]),
        lambda d: rebuilt(d, inspects=[1, 2, 3]),
    ]
    fits = [
        lambda d: LowYieldDetector(resamples=2, n_bootstrap=100, threads=2).fit(d),
        lambda d: LowYieldDetector(resamples=2, n_bootstrap=100, engine="numpy").fit(d),
        lambda d: GLMYieldEstimator().fit(d),
        lambda d: CommonalityAnalysis().fit(d),
        lambda d: fit_subsets(d, [np.arange(d.n_batches)]),
    ]
    for i, case in enumerate(cases):
        for j, fit in enumerate(fits):
            try:
                fit(case(fresh()))
            except InputError as exc:
                continue
            raise SystemExit(f"case {i}, fit {j}: no InputError")
    print("all refused")
''')


def test_tampered_arrays_end_in_input_error_never_a_signal():
    run = subprocess.run([sys.executable, "-c", TAMPER], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])  # a crash would be -11 (SIGSEGV)
    assert run.stdout.strip() == "all refused"


# 6. Output paths are checked before the computation.

def test_read_only_output_folder_is_refused_before_the_work(read_only_dir, records, capsys, no_computation):
    for flag in ("--json", "--csv", "--plot"):
        code, err = run_cli(["yield", "detect", str(records), flag, str(read_only_dir / "out.png")], capsys)
        assert code == 2 and flag in err and "Traceback" not in err, err
    code, err = run_cli(["yield", "simulate", str(read_only_dir / "sim.csv")], capsys)
    assert code == 2 and "OUT" in err
    code, err = run_cli(["yield", "sizing", "--machines", "5", "--low", "1", "--json",
                         str(read_only_dir / "s.json")], capsys)
    assert code == 2 and "--json" in err


@pytest.mark.parametrize("extra, flag", [
    (["--plot", "{tmp}/o.jpg", "--json", "{tmp}/o.json"], "--plot"),
    (["--json", "{tmp}/same", "--csv", "{tmp}/same"], "--csv"),
    (["--csv", "{data}"], "is the input file"),
    (["--json", "{tmp}"], "is a folder"),
])
def test_bad_detect_outputs_write_nothing(records, tmp_path, capsys, no_computation, extra, flag):
    before = records.read_bytes()
    argv = [a.format(tmp=tmp_path, data=records) for a in extra]
    code, err = run_cli(["yield", "detect", str(records), *argv], capsys)
    assert code == 2 and flag in err, err
    assert records.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.csv"]


@pytest.mark.parametrize("argv, words", [
    (["{tmp}/o.csv", "--truth", "{tmp}/o.csv"], ["--truth", "the same file as OUT"]),
    (["{tmp}/o.csv", "--truth", "{tmp}/t.txt"], ["--truth", ".parquet file name"]),
    (["{tmp}/o.xlsx"], ["OUT", ".csv.gz"]),
])
def test_bad_simulate_outputs_write_nothing(tmp_path, capsys, no_computation, argv, words):
    code, err = run_cli(["yield", "simulate", *[a.format(tmp=tmp_path) for a in argv]], capsys)
    assert code == 2 and all(w in err for w in words), err
    assert not list(tmp_path.iterdir())


def test_plot_without_matplotlib_names_the_extra(records, tmp_path, capsys, monkeypatch, no_computation):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the plot extra sees
    code, err = run_cli(["yield", "detect", str(records), "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 2 and "pip install 'fabguard[plot]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.csv"]


# 7. Messages name the file, row, column.

def test_a_folder_given_as_data_is_called_a_folder(tmp_path, capsys):
    with pytest.raises(InputError, match="is a folder"):
        load_production(tmp_path)
    code, err = run_cli(["yield", "detect", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err and "no such file" not in err


def test_boolean_counts_are_refused_naming_column_and_file(table, tmp_path):
    path = tmp_path / "bool.parquet"
    table.assign(defects=table["defects"] > 0).to_parquet(path)
    with pytest.raises(InputError, match=re.escape(f"{path}: column 'defects' holds true/false values, not counts")):
        load_production(path)
    mixed = table.astype({"pieces_in": object})
    mixed.loc[2, "pieces_in"] = True
    with pytest.raises(InputError, match="row 3, batch 'B1', column 'pieces_in': True is a boolean"):
        load_production(mixed)


# 8. Imports: the package and the parser load nothing they do not use.

def test_import_loads_no_heavy_package():
    code = ("import sys, fabguard.machine_yield as my, fabguard.cli; fabguard.cli.build_parser(['yield', 'detect']); "
            "heavy = ('torch', 'onnx', 'onnxruntime', 'sklearn', 'scipy', 'pandas', 'matplotlib', 'tqdm'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))); "
            "my.LowYieldDetector; print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"  # import and parser: numpy only
    assert out[1] == "[]"  # the EM detector: pandas and scipy are imported where used (other inputs, modes)


def test_default_detect_on_csv_needs_neither_pandas_nor_scipy(tmp_path):
    """The default screen of a long-format CSV file, text report included: pyarrow reads it, numpy
    validates it, and the report table is laid out without pandas (its import costs more than the fit).
    (More batches than parameters: fewer would fall back to the bootstrap interval, which uses scipy.)"""
    path = tmp_path / "records.csv"
    simulate(30, 300, 2, seed=3).data.to_frame().to_csv(path, index=False)
    code = ("import sys; from fabguard.cli import main; "
            f"main(['yield', 'detect', {str(path)!r}, '--quiet', '--threads', '2']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'scipy', 'tqdm', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "low-yield:" in out and out.rstrip().split("\n")[-1] == "[]", out


def test_lazy_names_are_the_real_objects():
    import fabguard.machine_yield as my
    from fabguard.machine_yield import detector, simulate as simulate_module  # noqa: F401

    assert my.simulate is simulate and callable(my.simulate)
    assert my.LowYieldDetector is detector.LowYieldDetector
    assert set(my.__all__) <= set(dir(my))
    with pytest.raises(AttributeError):
        my.nope  # noqa: B018


# 9. Ctrl-C early: exit 130, no traceback.

@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_early_in_detect_exits_130_without_traceback(delay):
    proc = subprocess.Popen([sys.executable, "-m", "fabguard", "yield", "detect", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130 with our message, or ended by the signal itself when Python re-raises a SIGINT pending at
    # shutdown (the shell reports 130 for both; the foundation tests accept the same)
    # or, the demo detection now taking well under a second, it had already finished: 0
    assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, err)
    assert "Traceback" not in err, err
    if proc.returncode == 130:
        assert err.strip().endswith("fabguard: interrupted"), err
    elif proc.returncode == -signal.SIGINT:  # the detection had ended: nothing but possibly our message
        assert err.strip() in ("", "fabguard: interrupted"), err


# 10. Hypothesis over the command line and malformed tables: exit 0 or 2, never a traceback.

GOOD = "batch,step,machine,pieces_in,defects\nB1,1,M1,100,0\nB1,2,M2,100,2\nB2,1,M2,50,0\nB2,2,M1,50,1\n"
GARBAGE = ["-1", "0", "nan", "inf", "x", "", "1e23", str(2**64), "0x10", "1e3", "-0"]
# mostly values in range, so that many command lines run to the end; garbage in one draw of four
number = st.one_of(st.sampled_from(["1", "2", "3"]), st.sampled_from(["0.05", "0.5", "0.9"]),
                   st.sampled_from(["1", "0.2", "4"]), st.sampled_from(GARBAGE))
DETECT_FLAGS = ["--resamples", "--fraction", "--alpha", "--threshold", "--max-candidates", "--confidence",
                "--tol", "--max-iter", "--threads", "--low-batch-quantile", "--seed", "--top", "--margin",
                "--min-batches", "--resample-tol"]
cells = st.one_of(st.integers(-2, 120).map(str), st.sampled_from(["", "x", "nan", "1.5", "true", "1e30", str(2**63)]))


@st.composite
def tables(draw):
    rows = [GOOD.strip().split("\n")[0]]
    for _ in range(draw(st.integers(0, 5))):
        rows.append(",".join([draw(st.sampled_from(["B1", "B2", ""])), draw(st.sampled_from(["1", "2", "3", "0"])),
                              draw(st.sampled_from(["M1", "M2", "M3"])), draw(cells), draw(cells)]))
    text = "\n".join(rows) + "\n"
    return draw(st.sampled_from([GOOD, GOOD, GOOD, text, text.replace(",", ";"), "", "\x00\xff garbage"]))


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(["detect", "detect", "detect", "simulate", "sizing"]))
    if command == "detect":
        argv = ["detect", "{data}", "--bootstrap", "100", "--quiet", "--method",
                draw(st.sampled_from(["em", "glm", "commonality"]))]
        flags = DETECT_FLAGS
    elif command == "simulate":
        argv = ["simulate", "{tmp}/" + draw(st.sampled_from(["o.csv", "o.parquet", "o.csv.gz", "o.txt"])),
                "--machines", "5", "--batches", "3"]
        flags = ["--low", "--low-yield", "--healthy-min", "--healthy-max", "--inspect-share", "--seed"]
    else:
        argv = ["sizing", "--machines", "3", "--low", "1", "--reps", "1", "--max-batches", "6", "--resamples", "2",
                "--quiet"]
        flags = ["--low-yield", "--target-recall", "--alpha", "--threads", "--seed"]
    for flag in draw(st.lists(st.sampled_from(flags), max_size=3)):
        argv += [flag, draw(number)]
    if draw(st.integers(0, 5)) == 0:
        argv.append(draw(st.sampled_from(["--nope", "--json", "--plot={tmp}/p.bmp", "--csv={data}", "--json={tmp}",
                                          "--method=nope", "--machines=1", "--bootstrap=99"])))
    return argv


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines(), table_text=tables())
def test_any_command_line_exits_0_or_2_without_traceback(tmp_path_factory, capsys, argv, table_text):
    folder = tmp_path_factory.mktemp("cli")
    data = folder / "data.csv"
    data.write_text(table_text)
    code, err = run_cli(["yield", *[a.format(data=data, tmp=folder) for a in argv]], capsys)
    event(f"{argv[0]} exit {code}")
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("fabguard: error:"), err
