"""The compiled greedy k-centre coreset (cpp/coreset.cpp) against exhaustive references; the random
projection the detector selects on; the channels-last feature extraction.

``exhaustive`` below is the plain loop over all points with the core's float32 arithmetic written
out in NumPy (8 lanes summed in order, then a fixed tree): the pruned C++ selection must equal it
index for index, ties and duplicates included, for any thread count. The PyTorch loop that fabguard
ran before (``former_loop``, kept verbatim in bench/anomaly/coreset_speed.py) computes
|x|^2 - 2 x.c + |c|^2 instead, so its rounding differs; the two agree wherever no step's choice is a near tie (checked in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fabguard import _core
from fabguard.anomaly.backbone import patch_features
from fabguard.anomaly.patchcore import (
    PatchCoreDetector,
    greedy_coreset,
    parse_projection,
    random_projection,
)
from fabguard.errors import InvalidParameterError

from bench.anomaly.coreset_speed import (
    former_loop,  # the loop the compiled core replaced
)


def squared_distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 squared distances of the rows of x to c, in cpp/coreset.cpp's order of operations."""
    pad = -x.shape[1] % 8  # zero terms: acc + 0 == acc exactly, as the C++ tail loop leaves lanes alone
    diff = np.pad(x, ((0, 0), (0, pad))) - np.pad(c, (0, pad))
    terms = diff * diff
    acc = np.zeros((len(x), 8), np.float32)
    for block in range(terms.shape[1] // 8):
        acc += terms[:, 8 * block:8 * block + 8]
    return ((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])) + ((acc[:, 4] + acc[:, 5]) + (acc[:, 6] + acc[:, 7]))


def exhaustive(x: np.ndarray, k: int, start: int) -> np.ndarray:
    """Every step: the first point with the largest distance to its nearest chosen one, all points updated."""
    chosen, nearest = [start], squared_distances(x, x[start])
    for _ in range(1, k):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, squared_distances(x, x[chosen[-1]]))
    return np.array(chosen)


def float64_gap(x: np.ndarray, k: int, start: int) -> tuple[np.ndarray, float]:
    """Exhaustive selection in float64 and the smallest gap, over its steps, between the chosen
    point's squared distance and the runner-up's (how far each choice is from a tie)."""
    x = x.astype(np.float64)
    chosen, nearest, gap = [start], ((x - x[start]) ** 2).sum(1), np.inf
    for _ in range(1, k):
        top2 = np.sort(nearest)[-2:]
        gap = min(gap, top2[1] - top2[0])
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((x - x[chosen[-1]]) ** 2).sum(1))
    return np.array(chosen), gap


def blobs(rng, n, d, centres=8):
    """Points around a few centres of different spreads: clusters the pruning can skip, and cannot."""
    where = rng.normal(0, 5, (centres, d))
    label = rng.integers(0, centres, n)
    return (where[label] + rng.normal(0, 1, (n, d)) * rng.uniform(0.1, 2, centres)[label, None]).astype(np.float32)


CASES = {  # points on a line or a plane: the triangle inequality is nearly tight there, so bounds that
    # skip too much change the choices (a bound of 2.5 r^2 instead of 4 r^2 did, measured)
    "line": lambda rng: rng.uniform(size=(500, 1)).astype(np.float32),
    "plane": lambda rng: rng.uniform(size=(500, 2)).astype(np.float32),
    "gaussian, d not a multiple of 8": lambda rng: rng.normal(size=(600, 37)).astype(np.float32),
    "blobs": lambda rng: blobs(rng, 800, 24),
    "tiny values (subnormal squared terms)": lambda rng: (rng.normal(size=(300, 9)) * 1e-20).astype(np.float32),
    "large values": lambda rng: (rng.normal(size=(300, 16)) * 1e15).astype(np.float32),
}


@pytest.mark.parametrize("case", CASES)
def test_cpp_equals_exhaustive_reference_for_any_thread_count(case):
    x = CASES[case](np.random.default_rng(0))
    k = len(x) // 5
    want = exhaustive(x, k, start=3)
    for threads in (1, 2, 3):
        assert np.array_equal(_core.kcenter_greedy(x, k, 3, threads=threads), want), threads


def test_ties_and_duplicates_choose_the_smallest_index():
    """Integer points: exact distances, many ties and duplicates; k = n runs past full coverage, where
    every distance is 0 and the exhaustive loop picks index 0 again and again."""
    x = np.random.default_rng(1).integers(0, 3, (120, 3)).astype(np.float32)
    want = exhaustive(x, len(x), start=5)
    assert (want[-10:] == 0).all()  # the case the test is for: coverage complete, ties at zero
    for threads in (1, 2):
        assert np.array_equal(_core.kcenter_greedy(x, len(x), 5, threads=threads), want)


def test_larger_run_is_the_same_for_one_and_two_threads():
    x = blobs(np.random.default_rng(2), 6000, 40)
    one = _core.kcenter_greedy(x, 600, 0, threads=1)
    assert len(set(one.tolist())) == 600
    assert np.array_equal(one, _core.kcenter_greedy(x, 600, 0, threads=2))


def test_same_selection_as_the_former_pytorch_loop_away_from_ties():
    """Both float32 selections equal the float64 one where every step's choice wins by more than both
    roundings can move two distances. With M = max |x|^2 and u = 2^-24: the expansion's terms |x|^2,
    2 x.c, |c|^2 err by at most d u M, 2 d u M, d u M, its two additions by 8 u M, so (4d + 8) u M;
    the core's direct sum by (d + 8) u s with s <= 4M. Two distances each: gap > (16d + 80) u M."""
    x = blobs(np.random.default_rng(0), 500, 16)
    x -= x.mean(0)  # smaller norms, smaller expansion error: the premise below holds by a factor 6
    want, gap = float64_gap(x, 50, start=11)
    bound = (16 * x.shape[1] + 80) * 2.0 ** -24 * float((x.astype(np.float64) ** 2).sum(1).max())
    assert gap > bound, (gap, bound)  # the premise: no near tie
    assert np.array_equal(former_loop(torch.from_numpy(x), 50, 11).numpy(), want)
    assert np.array_equal(_core.kcenter_greedy(x, 50, 11, threads=2), want)


def test_wrapper_keeps_the_seeded_start_and_returns_torch_indices():
    x = blobs(np.random.default_rng(4), 400, 12)
    chosen = greedy_coreset(torch.from_numpy(x), 40, seed=7)
    start = int(torch.randint(len(x), (1,), generator=torch.Generator().manual_seed(7)))
    assert chosen.dtype == torch.long and int(chosen[0]) == start
    assert np.array_equal(chosen.numpy(), exhaustive(x, 40, start))
    assert len(greedy_coreset(torch.from_numpy(x[:5]), 40, seed=7)) == 5  # size capped at the points


def test_progress_is_reported_and_its_error_stops_the_run():
    x = blobs(np.random.default_rng(5), 300, 8)
    seen = []
    _core.kcenter_greedy(x, 30, 0, progress=seen.append)
    assert seen and seen[-1] == 30

    def fail(done):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _core.kcenter_greedy(x, 30, 0, progress=fail)


def test_projection_keeps_squared_distances_within_the_chi_square_spread_and_is_seeded():
    """For a fixed pair, |W^T u|^2 / |u|^2 with W of N(0, 1/p) entries is chi-square(p) / p: mean 1, sd
    sqrt(2 / p) = 0.125 at p = 128. Over 200 pairs the extremes stay within 4 sd (0.5) of 1 and their
    mean within 0.05 (its sd is under 0.01); a wrong scale (no 1/sqrt(p)) gives ratios near 128."""
    x = torch.from_numpy(np.random.default_rng(8).normal(size=(400, 232)).astype(np.float32))
    y = random_projection(x, 128, seed=3)
    assert y.shape == (400, 128)
    ratio = ((y[:200] - y[200:]) ** 2).sum(1) / ((x[:200] - x[200:]) ** 2).sum(1)
    assert 0.5 < float(ratio.min()) and float(ratio.max()) < 1.5 and abs(float(ratio.mean()) - 1) < 0.05
    assert torch.equal(y, random_projection(x, 128, seed=3))
    assert not torch.equal(y, random_projection(x, 128, seed=4))


def test_projected_selection_is_the_same_for_any_thread_count():
    """The core's selection does not depend on the thread count; the projection before it must not either
    (a GEMM that split the 232-term sums across threads would round differently)."""
    x = torch.from_numpy(blobs(np.random.default_rng(12), 3000, 232))
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append((random_projection(x, 64, seed=1), greedy_coreset(x, 300, seed=1, projection=64)))
    finally:
        torch.set_num_threads(threads)
    for projected, chosen in runs[1:]:
        assert torch.equal(projected, runs[0][0]) and torch.equal(chosen, runs[0][1])


def test_projected_selection_takes_the_outliers_and_keeps_the_start():
    """232-dim points within 0.01 x sqrt(232) = 0.15 of the origin and three at distance 10: projected to
    16 dims an outlier's squared distance is at least 0.1 of its own (chi-square(16) / 16 below 0.1 has
    probability under 1e-9), far above the cluster's spread, so the first choices are the outliers."""
    rng = np.random.default_rng(9)
    points = rng.normal(0, 0.01, (503, 232))
    points[500:] = 10 * np.eye(3, 232)
    features = torch.tensor(points, dtype=torch.float32)
    chosen = greedy_coreset(features, 4, seed=0, projection=16)
    assert int(chosen[0]) == int(greedy_coreset(features, 1, seed=0)[0])  # the same seeded start
    assert {500, 501, 502} <= set(chosen.tolist())


def test_projection_as_wide_as_the_features_is_not_applied():
    x = torch.from_numpy(blobs(np.random.default_rng(10), 300, 12))
    want = greedy_coreset(x, 30, seed=2)
    assert torch.equal(greedy_coreset(x, 30, seed=2, projection=12), want)
    assert torch.equal(greedy_coreset(x, 30, seed=2, projection=50), want)
    assert not torch.equal(greedy_coreset(x, 30, seed=2, projection=6), want)


def test_projection_parameter_and_flag():
    assert PatchCoreDetector().coreset_projection == 64
    assert parse_projection("0") is None and parse_projection("64") == 64
    for bad in (0, -3, 2.5, "128"):
        with pytest.raises(InvalidParameterError, match="coreset_projection"):
            PatchCoreDetector(coreset_projection=bad).check_params()


def test_channels_last_extraction_equals_the_contiguous_one_to_float32_rounding():
    """Same convolutions, other summation orders: each output of a layer that sums K products moves by at
    most about K u |sum of |terms||, u = 2^-24, K <= 1,152 here, so ~7e-5 of a layer's scale, compounded
    over 15 blocks to ~1e-3; a layout mistake (channels taken for columns) moves values by their own size."""
    scorer = PatchCoreDetector(input_size=64, crop_size=None)._scorer(0, pretrained=True).eval()
    images = torch.from_numpy(np.random.default_rng(11).uniform(size=(2, 3, 64, 64)).astype(np.float32))
    with torch.inference_mode():
        got = scorer.embed(images)
        want = patch_features(scorer.features, images, 64, 64, scorer.pool)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-3 * float(want.abs().max())


GOOD = np.random.default_rng(6).normal(size=(50, 4)).astype(np.float32)


def with_value(row, col, value):
    x = GOOD.copy()
    x[row, col] = value
    return x


@pytest.mark.parametrize("features, k, start, threads, message", [
    (GOOD.astype(np.float64), 5, 0, 1, "features must be float32, got float64"),
    (GOOD.astype(np.float16), 5, 0, 1, "features must be float32, got float16"),
    (GOOD[0], 5, 0, 1, "features must be 2-d .* got 1-d"),
    (GOOD[None], 5, 0, 1, "features must be 2-d .* got 3-d"),
    (GOOD[:, ::2], 5, 0, 1, "C-contiguous"),
    (np.zeros((0, 4), np.float32), 1, 0, 1, r"at least one row and one column, got \(0, 4\)"),
    (np.zeros((5, 0), np.float32), 1, 0, 1, r"at least one row and one column, got \(5, 0\)"),
    (with_value(7, 2, np.nan), 5, 0, 1, r"features\[7, 2\] is nan: values must be finite"),
    (with_value(0, 3, -np.inf), 5, 0, 1, r"features\[0, 3\] is -inf"),
    (with_value(49, 0, 1e30), 5, 0, 1, r"features\[49, 0\] is 1e\+30: .* at most"),
    (GOOD, 0, 0, 1, r"k must be in \[1, 50\] .* got 0"),
    (GOOD, 51, 0, 1, r"k must be in \[1, 50\] .* got 51"),
    (GOOD, 5, 50, 1, r"start must be in \[0, 50\), got 50"),
    (GOOD, 5, -1, 1, r"start must be in \[0, 50\), got -1"),
    (GOOD, 5, 0, 0, r"threads must be in \[1, "),
])
def test_bad_input_is_refused_with_a_clear_error(features, k, start, threads, message):
    with pytest.raises(ValueError, match=message):
        _core.kcenter_greedy(features, k, start, threads=threads)


def test_a_file_written_before_the_projection_reads_as_fitted_on_all_features(detectors, tmp_path):
    """A model file without ``coreset_projection`` (written before it existed) selected its coreset on all
    features: loading it must report None, not today's default of 64."""
    import torch

    from fabguard.anomaly import load_detector

    path = tmp_path / "pc.pt"
    detectors["patchcore"].save(path)
    state = torch.load(path, weights_only=True)
    del state["metadata"]["params"]["coreset_projection"]
    torch.save(state, path)
    assert load_detector(path).get_params()["coreset_projection"] is None
    detectors["patchcore"].save(path)
    assert load_detector(path).get_params()["coreset_projection"] == detectors["patchcore"].coreset_projection
