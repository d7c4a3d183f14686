"""Detection results, the report, the bootstrap test and the baselines."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fabguard.errors import InputError
from fabguard.machine_yield import CommonalityAnalysis, GLMYieldEstimator, LowYieldDetector, load_production, simulate
from fabguard.machine_yield.detector import bootstrap_below
from fabguard.machine_yield.em import information_se, starting_values
from fabguard.outputs import atomic_path


@pytest.fixture(scope="module")
def fitted(small_sim):
    return LowYieldDetector(seed=3).fit(small_sim.data)


@pytest.fixture(scope="module")
def bootstrapped(small_sim):
    return LowYieldDetector(interval="bootstrap", resamples=30, seed=3).fit(small_sim.data)


def test_finds_the_low_yield_machines(fitted, small_sim):
    assert set(fitted.low_yield_machines_) == set(small_sim.low_yield_machines)
    truth = small_sim.truth.set_index("machine")
    report = fitted.report_.machines.set_index("machine")
    low = small_sim.low_yield_machines
    assert np.all(np.abs(report.loc[low, "yield"] - 0.4) < 0.02)
    healthy = report.drop(index=low)
    assert healthy["yield"].min() > 0.98
    # usage columns are plain counts from the data
    frame = small_sim.data.to_frame()
    machine = low[0]
    assert report.loc[machine, "batches"] == frame.loc[frame.machine == machine, "batch"].nunique()
    assert report.loc[machine, "pieces"] == frame.loc[frame.machine == machine, "pieces_in"].sum()
    inspecting = truth.loc[report.index, "has_inspection"]
    assert report.loc[~inspecting, "miss_rate"].isna().all()
    assert report.loc[inspecting, "miss_rate"].between(0, 1).all()


def test_report_is_sorted_and_flags_follow_the_fdr_rule(fitted):
    m = fitted.report_.machines
    assert m["yield"].is_monotonic_increasing
    median = np.median(fitted.yield_)
    summary = fitted.report_.summary
    assert summary["baseline"] == pytest.approx(median)
    assert fitted.threshold_ == pytest.approx(median - summary["margin"])
    tested = m["status"] != "too few batches"
    q = stats.false_discovery_control(m.loc[tested, "p_value"], method="bh")
    np.testing.assert_allclose(m.loc[tested, "q_value"], q, rtol=1e-12)
    assert (m["low_yield"] == (tested & (m["q_value"] <= 0.05))).all()
    assert (m["status"] == np.where(m["low_yield"], "low", np.where(tested, "not flagged", "too few batches"))).all()
    assert (m["ci_low"] <= m["yield"] + 1e-12).all() and (m["yield"] <= m["ci_high"] + 1e-12).all()


def test_information_interval_is_the_z_interval_of_the_scores(fitted, small_sim):
    m = fitted.report_.machines.set_index("machine")
    data = small_sim.data
    yields, miss = fitted.yield_.to_numpy(), fitted.miss_rate_.to_numpy()
    free = np.r_[np.isfinite(yields), np.isfinite(miss)]
    _, a0 = starting_values(data)
    a = np.where(np.isfinite(miss), miss, a0)
    se = information_se(data, yields, a, free)[0][: data.n_machines]
    se = pd.Series(se, index=data.machine_ids)
    np.testing.assert_array_equal(m.loc[se.index, "std_error"], se)
    z = stats.norm.ppf(0.975)
    expected_low = np.clip(fitted.yield_ - z * se, 0, 1)
    np.testing.assert_allclose(m.loc[se.index, "ci_low"], expected_low, rtol=1e-12)
    p = stats.norm.cdf((fitted.yield_ - fitted.threshold_) / se)
    np.testing.assert_allclose(m.loc[se.index, "p_value"], p, rtol=1e-9, atol=1e-300)
    assert fitted.report_.summary["interval"] == "information" and len(fitted.resample_yields_) == 0


def test_information_se_is_close_to_the_bootstrap_se(fitted, bootstrapped, small_sim):
    """Two estimates of the same sampling spread: resampling batches, and the per-batch scores' spread
    without refits. For the low-yield machines (well inside (0, 1)) they agree within the bootstrap's
    own noise: 30 resamples estimate an SE to about 1 / sqrt(2 x 29) = 13%, so within 40% (3 of
    those). (For healthy machines next to the bound 1 on this small fleet the information SE is the
    larger one, median ratio 1.3-1.8, and the bootstrap's the one that covers less: docs/machine_yield.md.)"""
    low = small_sim.low_yield_machines
    info = fitted.report_.machines.set_index("machine").loc[low, "std_error"]
    boot = bootstrapped.report_.machines.set_index("machine").loc[low, "std_error"]
    ratio = info / boot
    assert ratio.between(0.6, 1.4).all(), ratio


def test_bootstrap_interval_is_the_t_interval_of_the_resamples(bootstrapped):
    fitted = bootstrapped
    m = fitted.report_.machines.set_index("machine")
    resampled = fitted.resample_yields_
    se = resampled.std(ddof=1)
    np.testing.assert_allclose(m.loc[se.index, "std_error"], se, rtol=1e-10)
    t = stats.t.ppf(0.975, resampled.notna().sum() - 1)
    yields = fitted.yield_.loc[se.index]
    np.testing.assert_allclose(m.loc[se.index, "ci_high"], np.minimum(yields + t * se, 1.0), rtol=1e-10)
    p = stats.t.cdf((yields - fitted.threshold_) / se, resampled.notna().sum() - 1)
    np.testing.assert_allclose(m.loc[se.index, "p_value"], p, rtol=1e-8)


def test_paper_rule_and_interval(small_sim):
    paper = LowYieldDetector(interval="paper", rule="paper", resamples=10, n_bootstrap=1000, seed=3).fit(small_sim.data)
    m = paper.report_.machines
    assert set(paper.low_yield_machines_) == set(small_sim.low_yield_machines)
    assert paper.threshold_ == pytest.approx(np.mean(paper.yield_))
    significant = (m["yield"] < paper.threshold_) & (m["p_value"] < 0.05)
    assert (m["significant"] == significant).all()
    mean = paper.resample_yields_.mean()
    np.testing.assert_allclose(m.set_index("machine").loc[mean.index, "yield"], mean, rtol=1e-12)
    assert paper.n_iter_.max() <= 100  # the authors' stop


def test_threshold_cap_and_display_limit(small_sim):
    none = LowYieldDetector(resamples=5, threshold=0.2).fit(small_sim.data)
    assert none.low_yield_machines_ == []
    capped = LowYieldDetector(interval="paper", rule="paper", resamples=5, n_bootstrap=500, threshold=0.99999,
                              max_candidates=4).fit(small_sim.data)
    m = capped.report_.machines
    assert m["significant"].sum() > 4 and m["low_yield"].sum() == 4
    assert m["low_yield"].iloc[:4].all()  # the four lowest significant ones
    # fdr rule: max_candidates limits the text only
    shown = LowYieldDetector(resamples=5, threshold=0.99999, max_candidates=2).fit(small_sim.data)
    flagged = shown.low_yield_machines_
    assert len(flagged) > 2
    text = shown.report_.to_text(top=0)
    assert f"({len(flagged)} flagged; the first 2 listed)" in text
    assert sum(str(machine) in text.splitlines()[0] for machine in flagged) == 2


def test_margin_and_too_few_batches(small_sim):
    frame = small_sim.data.to_frame()
    rare = pd.DataFrame({"batch": ["r1", "r1", "r2", "r2"], "step": [1, 2, 1, 2], "machine": ["RARE", "M01"] * 2,
                         "pieces_in": [100, 40, 100, 30], "defects": [60, 0, 70, 0], "inspected": [True, False] * 2})
    det = LowYieldDetector(resamples=5, margin=0.01, seed=1).fit(pd.concat([frame, rare], ignore_index=True))
    m = det.report_.machines.set_index("machine")
    assert det.threshold_ == pytest.approx(det.report_.summary["baseline"] - 0.01)
    assert m.loc["RARE", "status"] == "too few batches" and not m.loc["RARE", "low_yield"]
    assert np.isnan(m.loc["RARE", "p_value"]) and det.report_.summary["machines_too_few_batches"] == 1
    assert "in too few batches to tell" in det.report_.to_text()


def test_default_margin_and_benjamini_hochberg():
    from fabguard.machine_yield.detector import benjamini_hochberg, default_margin

    healthy = np.linspace(0.998, 1.0, 41)
    spread = 3 * 1.4826 * np.median(np.abs(healthy - 0.999))
    assert default_margin(np.r_[healthy, 0.4, np.nan]) == pytest.approx(spread, rel=0.05)
    assert default_margin(np.full(5, 0.99)) == pytest.approx(0.01)  # no spread: the floor 1 - median
    p = np.random.default_rng(0).uniform(size=50) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)
    assert len(benjamini_hochberg(np.array([]))) == 0


def test_bad_parameters_are_refused(small_sim):
    for kwargs in ({"resamples": 1}, {"fraction": 0}, {"alpha": 1.5}, {"threshold": 2.0}, {"engine": "gpu"},
                   {"threads": 0}, {"n_bootstrap": 10}, {"interval": "wald"}, {"rule": "bonferroni"},
                   {"margin": 1.0}, {"min_batches": 0}, {"accelerate": "yes"}, {"resample_tol": -1.0}):
        with pytest.raises(InputError):
            LowYieldDetector(**kwargs).fit(small_sim.data)


def test_bootstrap_test():
    rng = np.random.default_rng(0)
    below = rng.normal(0.5, 0.01, 30)
    above = rng.normal(0.99, 0.001, 30)
    flat = np.full(30, 0.7)
    sparse_col = np.r_[0.6, np.full(29, np.nan)]
    est = np.c_[below, above, flat, sparse_col]
    mean, low, high, p = bootstrap_below(est, 0.9, 0.95, 5000, seed=1)
    assert p[0] == pytest.approx(1 / 5001) and p[1] == 1.0 and p[2] == pytest.approx(1 / 5001)
    assert low[0] < below.mean() < high[0] and high[0] - low[0] < 0.02
    assert low[2] == high[2] == pytest.approx(0.7)
    assert mean[3] == 0.6 and np.isnan([low[3], high[3], p[3]]).all()
    # a threshold inside the bootstrap distribution gives an intermediate p-value
    _, _, _, p_mid = bootstrap_below(est[:, :1], float(below.mean()), 0.95, 5000, seed=1)
    assert 0.3 < p_mid[0] < 0.7


def test_json_and_table(fitted, tmp_path):
    path = tmp_path / "out" / "report.json"
    text = fitted.report_.to_json(path)
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(text)
    assert loaded["method"] == "em" and loaded["low_yield"] == fitted.low_yield_machines_
    assert len(loaded["machines"]) == len(fitted.report_.machines)
    first = loaded["machines"][0]
    for key in ("machine", "batches", "pieces", "yield", "ci_low", "ci_high", "p_value", "miss_rate", "low_yield"):
        assert key in first
    assert "NaN" not in text
    table = fitted.report_.to_text(top=5)
    assert all(m in table for m in fitted.low_yield_machines_)


def test_plot_is_written_whole(fitted, tmp_path):
    path = tmp_path / "forest.png"
    fig = fitted.report_.plot(path, top=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes[0].get_yticks()) >= 10


def test_atomic_path_leaves_nothing_partial(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.filterwarnings("ignore:The Log link function does not respect the domain")
def test_glm_finds_low_machines_and_matches_statsmodels(small_sim):
    glm = GLMYieldEstimator().fit(small_sim.data)
    assert set(glm.report_.low_yield) == set(small_sim.low_yield_machines)
    import statsmodels.api as sm

    # A well-posed problem: 6 machines, 3 distinct ones per batch, every yield inside (0, 1), so
    # that both fits must reach the same interior maximum.
    rng = np.random.default_rng(0)
    truth = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6])
    rows = []
    for b in range(400):
        machines = rng.choice(6, size=3, replace=False)
        n = int(rng.integers(50, 500))
        good = rng.binomial(n, np.prod(truth[machines]))
        for step, m in enumerate(machines, start=1):
            rows.append((b, step, int(m), n, n - good if step == 3 else 0, step == 3))
    frame = pd.DataFrame(rows, columns=["batch", "step", "machine", "pieces_in", "defects", "inspected"])
    data = load_production(frame)
    ours = GLMYieldEstimator().fit(data)
    x = np.zeros((data.n_batches, data.n_machines))
    x[data.batch_of_row, data.machine] = 1.0
    endog = np.c_[data.final_good, data.start_pieces - data.final_good]
    family = sm.families.Binomial(link=sm.families.links.Log())
    ref = sm.GLM(endog, x, family=family).fit(start_params=np.full(data.n_machines, -0.2))
    mine = ours.yield_.loc[data.machine_ids].to_numpy(dtype=float)
    np.testing.assert_allclose(mine, np.exp(ref.params), rtol=1e-5)
    se = ours.report_.machines.set_index("machine").loc[data.machine_ids, "std_error_log"].to_numpy(dtype=float)
    np.testing.assert_allclose(se, ref.bse, rtol=1e-3)
    assert np.max(np.abs(mine - truth[data.machine_ids.astype(int)])) < 0.05


def test_commonality_is_fishers_exact_test(small_sim):
    com = CommonalityAnalysis(low_batch_quantile=0.2).fit(small_sim.data)
    data = small_sim.data
    m = com.report_.machines.set_index("machine")
    low = data.batch_yield <= com.cutoff_
    for machine in list(m.index[:3]) + list(m.index[-2:]):
        code = list(data.machine_ids).index(machine)
        used = np.zeros(data.n_batches, dtype=bool)
        used[data.batch_of_row[data.machine == code]] = True
        table = [[np.sum(used & low), np.sum(used & ~low)], [np.sum(~used & low), np.sum(~used & ~low)]]
        assert m.loc[machine, "p_value"] == pytest.approx(stats.fisher_exact(table, alternative="greater").pvalue, rel=1e-9)
    np.testing.assert_allclose(m["q_value"], stats.false_discovery_control(m["p_value"].to_numpy()))
    assert set(small_sim.low_yield_machines) <= set(com.report_.low_yield)


def test_baselines_refuse_bad_parameters(small_sim):
    with pytest.raises(InputError):
        CommonalityAnalysis(low_batch_quantile=1.5).fit(small_sim.data)
    with pytest.raises(InputError):
        GLMYieldEstimator(alpha=0).fit(small_sim.data)


def test_detector_accepts_every_input_format(small_sim, tmp_path):
    frame = small_sim.data.to_frame()
    path = tmp_path / "records.parquet"
    frame.to_parquet(path, index=False)
    a = LowYieldDetector(resamples=4, n_bootstrap=300).fit(path).report_.machines
    b = LowYieldDetector(resamples=4, n_bootstrap=300).fit({c: frame[c].to_numpy() for c in frame}).report_.machines
    pd.testing.assert_frame_equal(a, b)
    assert load_production(small_sim.data) is small_sim.data


def test_text_report_is_laid_out_as_pandas_would(small_sim):
    """to_text lays the table out without pandas; the layout is DataFrame.to_string's."""
    cut = int(np.median(small_sim.data.usage_columns()["batches"]))  # about half the machines: too few batches
    report = LowYieldDetector(threads=1, min_batches=cut).fit(small_sim.data).report_
    m = report.machines
    assert (m["status"] == "too few batches").any() and m["q_value"].isna().any()  # '-' cells
    shown = m[m["low_yield"] | (np.arange(len(m)) < 12)]
    columns = ["machine", "batches", "pieces", "yield", "ci_low", "ci_high", "p_value", "q_value", "miss_rate",
               "status", "low_yield"]
    expected = shown[columns].to_string(
        index=False, formatters=dict.fromkeys(("yield", "ci_low", "ci_high", "miss_rate"), "{:.4f}".format)
        | dict.fromkeys(("p_value", "q_value"), "{:.2e}".format), na_rep="-")
    assert report.to_text(12).split("\n", 1)[1] == expected


def test_median_is_numpys_nanmedian():
    from fabguard.machine_yield.detector import median

    rng = np.random.default_rng(4)
    for n in [*range(1, 30), 499, 500]:
        x = rng.random(n) * 10.0 ** rng.integers(-3, 4)
        x[rng.random(n) < 0.2] = np.nan
        expected = np.nanmedian(x) if np.isfinite(x).any() else np.nan
        assert median(x) == expected or (np.isnan(expected) and np.isnan(median(x)))
