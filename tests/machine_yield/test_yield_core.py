"""The C++ EM against a hand computation and the NumPy reference; threads, GIL, progress, validation."""

import threading
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabguard import _core
from fabguard.machine_yield import LowYieldDetector, load_production, simulate
from fabguard.machine_yield.em import fit_subsets, information_se, initial_yields, starting_values
from fabguard.machine_yield.em_numpy import score_outer_product_numpy


def one_batch():
    """A (plain), B and C (inspecting): 100 pieces, 4 defects found at B, 6 at C."""
    return load_production(pd.DataFrame({
        "batch": ["b"] * 3, "step": [1, 2, 3], "machine": ["A", "B", "C"],
        "pieces_in": [100, 100, 96], "defects": [0, 4, 6], "inspected": [False, True, True],
    }))


@pytest.mark.parametrize("engine", ["cpp", "numpy"])
@pytest.mark.parametrize("escapes", [False, True])
def test_one_em_iteration_matches_hand_computation(engine, escapes):
    data = one_batch()
    start = (np.array([0.9, 0.8, 0.95]), np.array([1.0, 0.5, 0.2]))
    fit = fit_subsets(data, [np.array([0])], tol=0.0, max_iter=1, escapes=escapes, engine=engine, start=start)
    # E-step weights (1 - P_k) prod_{s<k} P_s prod_{s=k}^{j-1} a_s, normalised per detection step
    e2 = 4 * np.array([0.1, 0.18]) / 0.28
    e3 = 6 * np.array([0.05, 0.09, 0.036]) / 0.176
    d = np.array([e2[0] + e3[0], e2[1] + e3[1], e3[2]])
    g = np.array([e2[1] + e3[1] + e3[2], e3[2], 0.0])  # good after the step, caught later
    missed = np.array([0.0, e3[0] + e3[1], 0.0])  # made at or before B's step, slipped past B, caught at C
    survive = 0.9 * 0.8 * 0.95
    if escapes:  # the 90 final pieces: good (prod P) or escaped past every inspection (prod_{s>=k} a_s)
        esc_weight = np.array([0.1 * 0.5 * 0.2, 0.18 * 0.5 * 0.2, 0.036 * 0.2])
        unflagged = survive + esc_weight.sum()
        esc = 90 * esc_weight / unflagged
        d += esc
        g += 90 * survive / unflagged + np.array([esc[1] + esc[2], esc[2], 0.0])
        missed += np.array([0.0, esc[0] + esc[1], esc.sum()])
        loglik = 4 * np.log(0.28 * 0.5) + 6 * np.log(0.176 * 0.8) + 90 * np.log(unflagged)
    else:  # the paper's model: the 90 final pieces are good at every step
        g += 90
        loglik = 4 * np.log(0.28 * 0.5) + 6 * np.log(0.176 * 0.8) + 90 * np.log(survive)
    np.testing.assert_allclose(fit.expected_defects[0], d, rtol=1e-12)
    np.testing.assert_allclose(fit.yield_[0], g / (g + d), rtol=1e-12)
    np.testing.assert_allclose(fit.loglik[0], loglik, rtol=1e-12)
    assert np.isnan(fit.miss_rate[0, 0])  # A does not inspect
    np.testing.assert_allclose(fit.miss_rate[0, 1], missed[1] / (missed[1] + 4), rtol=1e-12)
    if escapes:
        np.testing.assert_allclose(fit.miss_rate[0, 2], missed[2] / (missed[2] + 6), rtol=1e-12)
    else:
        assert fit.miss_rate[0, 2] == 1e-99  # nothing after C: it missed nothing (clamped like the script)


EM_SETTINGS = [
    {"tol": 0.0, "max_iter": 25},  # SQUAREM, escapes: fabguard's fit, cut short
    {"tol": 1e-7, "max_iter": 60, "accelerate": False},
    {"tol": 1e-3, "max_iter": 100, "stop": "l2", "escapes": False},  # the paper's
    {"tol": 0.0, "max_iter": 40, "stop": "l2", "escapes": False},
]


def _subsets(data):
    return ([np.arange(data.n_batches)] + list(_core.draw_resamples(data.n_batches, 0.8, 3, seed=3))
            + list(_core.draw_bootstrap(data.n_batches, 3, seed=3)))


@pytest.mark.parametrize("settings", EM_SETTINGS)
def test_cpp_agrees_with_numpy_reference(small_sim, settings):
    data = small_sim.data
    start = starting_values(data)
    cpp = fit_subsets(data, _subsets(data), threads=2, start=start, **settings)
    ref = fit_subsets(data, _subsets(data), engine="numpy", start=start, **settings)
    np.testing.assert_array_equal(cpp.n_iter, ref.n_iter)
    np.testing.assert_array_equal(cpp.converged, ref.converged)
    # The same sums in another order: relative rounding ~1e-16 per term, far below 1e-12.
    np.testing.assert_allclose(cpp.loglik, ref.loglik, rtol=1e-12)
    for name in ("yield_", "miss_rate", "expected_defects"):
        a, b = getattr(cpp, name), getattr(ref, name)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        scale = 1.0 if name != "expected_defects" else np.nanmax(np.abs(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-9 * scale, name


def test_engines_reach_the_same_optimum(small_sim):
    """At the default stop both engines converge, but not along the same path: near the optimum
    SQUAREM compares log-likelihoods equal to ~1e-13 relative, where the two summation orders
    decide differently. Each ends within 1e-6 of the optimum (next test), so they agree to 2e-6."""
    data = small_sim.data
    start = starting_values(data)
    subsets = _subsets(data)[::3]  # full data, a resample, a bootstrap resample
    cpp = fit_subsets(data, subsets, threads=2, start=start)
    ref = fit_subsets(data, subsets, engine="numpy", start=start)
    assert cpp.converged.all() and ref.converged.all()
    assert np.nanmax(np.abs(cpp.yield_ - ref.yield_)) <= 2e-6
    assert np.nanmax(np.abs(cpp.miss_rate - ref.miss_rate)) <= 2e-6


@pytest.mark.parametrize("fleet", ["small_sim", "50x1000"])
def test_default_stop_is_within_1e6_of_the_optimum(small_sim, fleet):
    """50 x 1000 (seed 1): without the bound on how close to 1 an extrapolation may come, SQUAREM
    put a yield whose optimum is 1 - 2e-5 at 1 - 1e-12 and the default stop ended 2.1e-5 away."""
    data = small_sim.data if fleet == "small_sim" else simulate(50, 1000, 3, 0.4, seed=1).data
    start = starting_values(data)
    full = [np.arange(data.n_batches)]
    default = fit_subsets(data, full, start=start)  # tol 1e-13, SQUAREM
    # The optimum: SQUAREM to exhaustion, checked against plain EM run long enough to agree with it.
    optimum = fit_subsets(data, full, start=start, tol=0.0, max_iter=5000)
    assert default.converged[0] and default.n_iter[0] < 300
    assert np.nanmax(np.abs(default.yield_ - optimum.yield_)) <= 1e-6
    assert np.nanmax(np.abs(default.miss_rate - optimum.miss_rate)) <= 1e-6
    plain = fit_subsets(data, full, start=start, tol=0.0, max_iter=20000, accelerate=False)
    assert np.nanmax(np.abs(plain.yield_ - optimum.yield_)) <= 1e-7
    assert plain.loglik[0] <= optimum.loglik[0] + 1e-9 * abs(optimum.loglik[0])


def test_squarem_never_lowers_the_likelihood_between_cycles(small_sim):
    data = small_sim.data
    start = starting_values(data)
    # Every stop point of an accelerated fit is a cycle start or its update; its log-likelihood grows with max_iter.
    logliks = [fit_subsets(data, [np.arange(data.n_batches)], start=start, tol=0.0, max_iter=n).loglik[0]
               for n in range(1, 60, 3)]
    assert np.all(np.diff(logliks) >= -1e-9 * abs(logliks[-1]))


def test_escapes_remove_the_bias_of_low_yield_machines(small_sim):
    data = small_sim.data
    start = starting_values(data)
    truth = small_sim.truth.set_index("machine").loc[data.machine_ids]
    low = truth["low_yield"].to_numpy()
    ours = fit_subsets(data, [np.arange(data.n_batches)], start=start)
    paper = fit_subsets(data, [np.arange(data.n_batches)], start=start, escapes=False)
    assert np.abs(ours.yield_[0][low] - 0.4).max() < 0.01  # truth 0.4; the paper's model reads ~0.43
    assert (paper.yield_[0][low] - 0.4).min() > 0.015
    inspecting = ~np.isnan(ours.miss_rate[0])
    assert np.corrcoef(ours.miss_rate[0][inspecting], truth["miss_rate"].to_numpy()[inspecting])[0, 1] > 0.9


@pytest.mark.parametrize("interval", ["information", "bootstrap"])
def test_detector_engines_agree(small_sim, interval):
    cpp = LowYieldDetector(interval=interval, resamples=3, seed=5).fit(small_sim.data)
    ref = LowYieldDetector(interval=interval, resamples=3, seed=5, engine="numpy").fit(small_sim.data)
    assert cpp.low_yield_machines_ == ref.low_yield_machines_
    # converged fits, not identical paths (see test_engines_reach_the_same_optimum); resample_tol 1e-9
    assert np.nanmax(np.abs(cpp.resample_yields_.to_numpy() - ref.resample_yields_.to_numpy()), initial=0) <= 1e-5


def _kept(data, fit, a0):
    """(p, a, free) of a fit as information_se takes them."""
    p, miss = fit.yield_[0], fit.miss_rate[0]
    return np.nan_to_num(p, nan=1.0), np.where(np.isfinite(miss), miss, a0), np.r_[np.isfinite(p), np.isfinite(miss)]


def test_batch_scores_sum_to_the_gradient_of_the_loglik(table):
    """Fisher's identity, checked by central differences on the escapes log-likelihood of a hand table
    away from the optimum (3 EM updates). |L| is below 1e3, so rounding costs about 1e-16 x 1e3 / h =
    1e-6 with h = 1e-7, and the truncation h^2 |d3L| / 6, with |d3L| below 1e4 here, below 1e-9."""
    data = load_production(table.assign(inspected=[False, True, False, True, True, True, True]))
    p0, _ = starting_values(data)
    a0 = np.full(data.n_machines, 0.3)  # inside (0, 1): the last inspection's F / (F + B) start is 0
    fit = fit_subsets(data, [np.arange(data.n_batches)], tol=0.0, max_iter=3, start=(p0, a0))
    p, a, free = _kept(data, fit, a0)
    assert free.sum() == 7 and np.all((np.r_[p, a][free] > 1e-3) & (np.r_[p, a][free] < 1 - 1e-3))
    free_index = np.where(free, np.cumsum(free) - 1, -1)
    out = _core.score_outer_product(data.core, p, a, free_index)
    assert abs(out["loglik"]) < 1e3

    def loglik(theta):
        return _core.score_outer_product(data.core, theta[: data.n_machines], theta[data.n_machines:],
                                         free_index)["loglik"]

    theta, h = np.r_[p, a], 1e-7
    for j in np.flatnonzero(free):
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        numeric = (loglik(up) - loglik(down)) / (2 * h)
        assert abs(out["grad"][free_index[j]] - numeric) <= 1e-5, j
    # and the log-likelihood is the EM's at the same point
    at = fit_subsets(data, [np.arange(data.n_batches)], tol=0.0, max_iter=1, start=(p, a))
    assert out["loglik"] == pytest.approx(at.loglik[0], rel=1e-13)


def test_score_outer_product_agrees_with_numpy_reference(small_sim):
    """The same sums by the recursions (C++) and by per-event weights (NumPy), in different orders:
    each score is a sum of terms bounded by its magnitude, rounded to ~1e-16 relative per operation
    over at most ~10^3 terms, so the products agree to 1e-9 of the largest entry."""
    data = small_sim.data
    p0, a0 = starting_values(data)
    p, a, free = _kept(data, fit_subsets(data, [np.arange(data.n_batches)], tol=0.0, max_iter=8), a0)
    free_index = np.where(free, np.cumsum(free) - 1, -1)
    cpp = _core.score_outer_product(data.core, p, a, free_index)
    grad, opg, loglik = score_outer_product_numpy(data, p, a, free_index)
    scale = np.max(np.abs(opg))
    assert np.max(np.abs(cpp["opg"] - opg)) <= 1e-9 * scale
    assert np.max(np.abs(cpp["grad"] - grad)) <= 1e-9 * np.sqrt(scale * data.n_batches)
    assert cpp["loglik"] == pytest.approx(loglik, rel=1e-12)
    se_cpp, _ = information_se(data, p, a, free)
    se_ref, _ = information_se(data, p, a, free, engine="numpy")
    np.testing.assert_allclose(se_cpp, se_ref, rtol=1e-7)  # 1e-9 in the matrix, times its condition (~1e2)


def test_inverse_diagonal_is_exact_and_the_same_for_any_thread_count():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 300)) * np.geomspace(1e-3, 1e3, 70)[:, None]  # badly scaled, well conditioned once scaled
    info = x @ x.T
    ref = np.diag(np.linalg.inv(info))
    ones = _core.inverse_diagonal(info, 1)
    np.testing.assert_allclose(ones, ref, rtol=1e-10)
    for threads in (2, 3):
        np.testing.assert_array_equal(_core.inverse_diagonal(info, threads), ones)
    assert _core.inverse_diagonal(np.ones((3, 3))) is None  # singular: the caller falls back to eigh


def test_unidentified_yields_get_an_infinite_se():
    """Two machines always used together, with no inspection between them: only the product of their
    yields is in the data. The information is singular in that direction; both get SE inf and are
    not flagged, whatever split the EM ended at."""
    rng = np.random.default_rng(3)
    rows = []
    for b in range(60):
        middle = ["A", "B"] if b % 2 else ["C", "D"]
        route = ["X", *middle, "Y"] if b % 3 else ["Z", *middle, "Y"]
        made = int(rng.binomial(200, 0.02))
        rows += [(f"b{b}", k + 1, m, 200, made if k == 3 else 0, k == 3) for k, m in enumerate(route)]
    frame = pd.DataFrame(rows, columns=["batch", "step", "machine", "pieces_in", "defects", "inspected"])
    det = LowYieldDetector(min_batches=1).fit(frame)
    m = det.report_.machines.set_index("machine")
    assert np.isinf(m.loc[["A", "B", "C", "D"], "std_error"]).all()
    assert not m.loc[["A", "B", "C", "D"], "low_yield"].any()
    assert (m.loc[["A", "B"], "ci_low"] == 0).all() and (m.loc[["A", "B"], "ci_high"] == 1).all()


@pytest.mark.parametrize("interval", ["information", "bootstrap"])
def test_identical_for_any_thread_count(small_sim, interval):
    reports = [LowYieldDetector(interval=interval, resamples=12, threads=t, seed=7).fit(small_sim.data)
               for t in (1, 2, 3)]
    for other in reports[1:]:

        pd.testing.assert_frame_equal(other.report_.machines, reports[0].report_.machines, check_exact=True)
        np.testing.assert_array_equal(other.resample_yields_.to_numpy(), reports[0].resample_yields_.to_numpy())


def test_seed_decides_bootstrap_resamples():
    a = _core.draw_bootstrap(50, 4, seed=1)
    np.testing.assert_array_equal(a, _core.draw_bootstrap(50, 4, seed=1))
    np.testing.assert_array_equal(a[:2], _core.draw_bootstrap(50, 2, seed=1))
    assert not np.array_equal(a, _core.draw_bootstrap(50, 4, seed=2))
    assert a.shape == (4, 50) and np.all(np.diff(a, axis=1) >= 0) and a.min() >= 0 and a.max() < 50
    assert all(len(np.unique(row)) < 50 for row in a)  # with replacement


def test_seed_decides_resamples():
    a = _core.draw_resamples(100, 0.8, 5, seed=1)
    np.testing.assert_array_equal(a, _core.draw_resamples(100, 0.8, 5, seed=1))
    assert not np.array_equal(a, _core.draw_resamples(100, 0.8, 5, seed=2))
    # row r depends only on (seed, r)
    np.testing.assert_array_equal(a[:3], _core.draw_resamples(100, 0.8, 3, seed=1))
    assert a.shape == (5, 80)
    for row in a:
        assert np.all(np.diff(row) > 0) and row.min() >= 0 and row.max() < 100


def test_start_is_never_absorbing_and_survives_dead_batches(table):
    dead = pd.concat([table, pd.DataFrame({"batch": ["B3"] * 2, "step": [1, 2], "machine": ["M1", "M2"],
                                           "pieces_in": [5, 5], "defects": [0, 5]})], ignore_index=True)
    data = load_production(dead)
    assert data.final_good.min() == 0
    p0 = initial_yields(data)
    assert np.all(np.isfinite(p0)) and p0.max() <= 1 - 1e-6 and p0.min() >= 1e-6
    for interval in ("information", "bootstrap", "paper"):
        report = LowYieldDetector(interval=interval, resamples=3, n_bootstrap=200).fit(data).report_
        assert report.machines["yield_full"].between(0, 1).all()


@pytest.mark.parametrize("interval", ["bootstrap", "paper"])
def test_machine_absent_from_a_resample_is_left_out(small_sim, interval):
    frame = small_sim.data.to_frame()
    rare = pd.DataFrame({"batch": ["rare"] * 2, "step": [1, 2], "machine": ["RARE", frame["machine"].iloc[0]],
                         "pieces_in": [100, 90], "defects": [0, 0], "inspected": [False, False]})
    det = LowYieldDetector(interval=interval, resamples=20, seed=1, n_bootstrap=500).fit(
        pd.concat([frame, rare], ignore_index=True))
    row = det.report_.machines.set_index("machine").loc["RARE"]
    column = det.resample_yields_["RARE"]
    assert 0 < row["resamples_used"] < 20
    assert column.isna().sum() == 20 - row["resamples_used"]
    if interval == "paper":
        assert row["yield"] == pytest.approx(column.mean())
    else:
        assert row["std_error"] == pytest.approx(column.std(ddof=1))
        assert row["status"] == "too few batches"  # in 1 batch: not tested


def test_gil_is_released_during_the_fit():
    from fabguard.machine_yield import simulate

    data = simulate(120, 3000, 2, seed=4).data
    subsets = [np.arange(data.n_batches)] * 40
    p0, a0 = starting_values(data)
    ptr = np.arange(0, 41 * data.n_batches, data.n_batches, dtype=np.int64)
    args = (data.core, ptr, np.concatenate(subsets), p0, a0)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (_core.fit_em(*args, tol=0.0, max_iter=40, threads=1), done.set()))
    stamps = []
    started = time.perf_counter()
    worker.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    duration = time.perf_counter() - started
    assert duration > 0.3, "the fit was too short to tell"
    assert np.max(np.diff(stamps)) < 0.5 * duration  # the main thread kept running


def test_progress_callback_and_its_errors(small_sim):
    data = small_sim.data
    subsets = [np.arange(data.n_batches)] * 5
    seen = []
    fit_subsets(data, subsets, threads=2, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 5

    def broken(done):
        raise ZeroDivisionError("from the callback")

    with pytest.raises(ZeroDivisionError, match="from the callback"):
        fit_subsets(data, subsets, threads=2, progress=broken)


def arrays():
    return dict(batch_ptr=np.array([0, 2, 3], np.int64), machine=np.array([0, 1, 1], np.int32),
                pieces_in=np.array([10, 9, 5], np.int64), defects=np.array([0, 1, 0], np.int64),
                inspects=np.array([0, 1, 1], np.uint8), n_machines=2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"machine": np.array([0, 2, 1], np.int32)}, "machine index 2 outside"),
        ({"machine": np.array([0, -1, 1], np.int32)}, "machine index -1 outside"),
        ({"batch_ptr": np.array([0, 0, 3], np.int64)}, "batch has no steps"),
        ({"batch_ptr": np.array([0, 4, 3], np.int64)}, "points past the last row"),
        ({"batch_ptr": np.array([1, 2, 3], np.int64)}, "batch_ptr[0] must be 0"),
        ({"batch_ptr": np.array([0, 2, 4], np.int64)}, "batch_ptr[-1]"),
        ({"defects": np.array([0, 10, 0], np.int64)}, "defects exceed pieces_in"),
        ({"defects": np.array([1, 0, 0], np.int64)}, "does not inspect"),
        ({"pieces_in": np.array([10, 11, 5], np.int64)}, "exceeds the pieces left"),
        ({"pieces_in": np.array([10, 9, -5], np.int64)}, "negative"),
        ({"inspects": np.array([0, 3, 1], np.uint8)}, "0 or 1"),
        ({"pieces_in": np.array([10, 9], np.int64)}, "length 3"),
        ({"n_machines": 0}, "no machines"),
    ],
)
def test_core_validates_before_trusting_an_index(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _core.Production(**(arrays() | change))


def test_fit_em_rejects_bad_subsets_and_starts():
    prod = _core.Production(**arrays())
    ok = dict(subset_ptr=np.array([0, 2], np.int64), subset_idx=np.array([0, 1], np.int64),
              p0=np.array([0.9, 0.9]), a0=np.array([0.5, 0.5]))
    assert _core.fit_em(prod, **ok)["yield"].shape == (1, 2)
    for change, message in [
        ({"subset_idx": np.array([0, 2], np.int64)}, "batch index 2 outside"),
        ({"subset_ptr": np.array([0, 0], np.int64), "subset_idx": np.array([], np.int64)}, "is empty"),
        ({"subset_ptr": np.array([0, 3], np.int64)}, r"subset_ptr\[-1\]"),
        ({"subset_ptr": np.array([0, 5, 2], np.int64)}, "subset 1 is empty"),
        ({"p0": np.array([0.9, 1.5])}, "p0 must lie"),
        ({"a0": np.array([np.nan, 0.5])}, "a0 must lie"),
        ({"p0": np.array([0.9])}, "p0 must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            _core.fit_em(prod, **(ok | change))
    with pytest.raises(ValueError, match="threads"):
        _core.fit_em(prod, **ok, threads=0)


# Raw arrays straight into the core: any combination must be refused with ValueError or fitted,
# never crash the interpreter.

@st.composite
def raw_inputs(draw):
    """A valid production table as arrays, then (usually) one corrupted field."""
    n_machines = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    machine, pieces_in, defects, inspects = [], [], [], []
    for length in lengths:
        left = draw(st.integers(1, 30))
        for _ in range(length):
            insp = draw(st.booleans())
            d = draw(st.integers(0, left)) if insp else 0
            machine.append(draw(st.integers(0, n_machines - 1)))
            pieces_in.append(left)
            defects.append(d)
            inspects.append(int(insp))
            left -= d
    arrays = dict(batch_ptr=np.r_[0, np.cumsum(lengths)].astype(np.int64), machine=np.array(machine, np.int32),
                  pieces_in=np.array(pieces_in, np.int64), defects=np.array(defects, np.int64),
                  inspects=np.array(inspects, np.uint8), n_machines=n_machines)
    field = draw(st.sampled_from(["none", "batch_ptr", "machine", "pieces_in", "defects", "inspects", "n_machines"]))
    if field == "n_machines":
        arrays[field] = draw(st.integers(-1, 5))
    elif field != "none":
        values = arrays[field].copy()
        if draw(st.booleans()) and len(values) > 1:
            values = values[:-1]  # wrong length
        else:
            low = max(-2, int(np.iinfo(values.dtype).min))  # inspects is uint8: no negative values
            values[draw(st.integers(0, len(values) - 1))] = draw(st.integers(low, 40))
        arrays[field] = values
    subset = draw(st.lists(st.integers(0, len(lengths) - 1), min_size=2, max_size=6))
    if draw(st.integers(0, 3)) == 0:
        subset[0] = draw(st.sampled_from([-1, len(lengths)]))  # an index outside the batches
    cut = draw(st.integers(1, len(subset) - 1))
    if draw(st.integers(0, 5)) == 0:
        cut = draw(st.sampled_from([0, len(subset)]))  # an empty subset
    return arrays, subset, cut


@settings(max_examples=400, deadline=None)
@given(raw_inputs())
def test_core_never_crashes_on_raw_arrays(case):
    arrays, subset, cut = case
    try:
        prod = _core.Production(**arrays)
    except ValueError:
        return
    idx = np.array(subset, np.int64)
    ptr = np.array([0, cut, len(idx)], np.int64)
    start = np.full(arrays["n_machines"], 0.9)
    try:
        out = _core.fit_em(prod, ptr, idx, start, start, tol=0.0, max_iter=3, threads=2)
    except ValueError:
        return
    assert out["yield"].shape == (2, arrays["n_machines"])


def test_information_falls_back_to_the_bootstrap_with_fewer_batches_than_parameters():
    """60 machines (60 yields and the inspecting ones' miss rates) in 40 batches: a sum of 40 rank-1
    score products cannot be inverted, so the fit says so and uses the bootstrap."""
    data = simulate(60, 40, 2, 0.4, seed=2).data
    det = LowYieldDetector(resamples=5, seed=1).fit(data)
    summary = det.report_.summary
    assert summary["interval"] == "bootstrap" and "40 batches" in summary["interval_note"]
    assert len(det.resample_yields_) == 5 and summary["em_converged_resamples"] == 5
    assert LowYieldDetector().fit(simulate(20, 200, 1, 0.4, seed=2).data).report_.summary["interval_note"] is None
