#include "simulate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "rng.hpp"

namespace fabguard {

namespace {

double clipped_normal(Rng& rng, double mean, double sd, double lo, double hi) {
    return std::min(hi, std::max(lo, mean + sd * rng.normal()));
}

int64_t clipped_round(Rng& rng, double mean, double sd, double lo, double hi) {
    return static_cast<int64_t>(std::llround(clipped_normal(rng, mean, sd, lo, hi)));
}

// First k entries of a random permutation of 0..n-1.
std::vector<int64_t> choose(Rng& rng, int64_t n, int64_t k) {
    std::vector<int64_t> perm(static_cast<size_t>(n));
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t i = 0; i < k; ++i) {
        const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i)));
        std::swap(perm[i], perm[j]);
    }
    perm.resize(static_cast<size_t>(k));
    return perm;
}

void check(const SimConfig& c) {
    auto require = [](bool ok, const char* what) {
        if (!ok) throw std::invalid_argument(what);
    };
    require(c.n_machines >= 2, "n_machines must be at least 2");
    require(c.n_batches >= 1, "n_batches must be at least 1");
    require(c.n_low >= 0 && c.n_low <= c.n_machines, "n_low must be in [0, n_machines]");
    require(c.low_yield >= 0.0 && c.low_yield <= 1.0, "low_yield must be in [0, 1]");
    require(c.healthy_min >= 0.0 && c.healthy_min <= c.healthy_max && c.healthy_max <= 1.0,
            "healthy yields need 0 <= healthy_min <= healthy_max <= 1");
    require(c.inspect_share > 0.0 && c.inspect_share < 1.0, "inspect_share must be in (0, 1)");
    require(c.pieces_min >= 1 && c.pieces_min <= c.pieces_max, "need 1 <= pieces_min <= pieces_max");
    require(c.steps_min >= 2 && c.steps_min <= c.steps_max, "need 2 <= steps_min <= steps_max");
    require(c.accuracy_min >= 0.0 && c.accuracy_min <= c.accuracy_max && c.accuracy_max <= 1.0,
            "need 0 <= accuracy_min <= accuracy_max <= 1");
    require(c.pieces_sd >= 0 && c.steps_sd >= 0 && c.inspect_steps_sd >= 0 && c.accuracy_sd >= 0,
            "standard deviations must be non-negative");
}

}  // namespace

SimResult simulate(const SimConfig& c) {
    check(c);
    const int64_t M = c.n_machines;
    SimResult out;
    out.yield.assign(M, 0.0);
    out.miss_rate.assign(M, std::numeric_limits<double>::quiet_NaN());
    out.has_inspection.assign(M, 0);
    out.low.assign(M, 0);
    out.defects_made.assign(M, 0);

    Rng machines_rng(c.seed, 0);
    const int64_t n_inspecting = std::min<int64_t>(
        M - 1, std::max<int64_t>(1, std::llround(c.inspect_share * static_cast<double>(M))));
    std::vector<int64_t> inspecting = choose(machines_rng, M, n_inspecting);
    std::sort(inspecting.begin(), inspecting.end());
    for (int64_t m : inspecting) out.has_inspection[m] = 1;
    std::vector<int64_t> plain;
    for (int64_t m = 0; m < M; ++m)
        if (!out.has_inspection[m]) plain.push_back(m);
    for (int64_t m : choose(machines_rng, M, c.n_low)) out.low[m] = 1;
    for (int64_t m = 0; m < M; ++m) {
        out.yield[m] = out.low[m] ? c.low_yield
                                  : c.healthy_min + (c.healthy_max - c.healthy_min) *
                                                        machines_rng.uniform();
        if (out.has_inspection[m])
            out.miss_rate[m] = 1.0 - clipped_normal(machines_rng, c.accuracy_mean, c.accuracy_sd,
                                                    c.accuracy_min, c.accuracy_max);
    }

    out.batch_ptr.reserve(static_cast<size_t>(c.n_batches + 1));
    out.batch_ptr.push_back(0);
    std::vector<uint8_t> step_inspects;
    for (int64_t b = 0; b < c.n_batches; ++b) {
        Rng rng(c.seed, static_cast<uint64_t>(b) + 1);
        const int64_t pieces = clipped_round(rng, c.pieces_mean, c.pieces_sd, c.pieces_min, c.pieces_max);
        const int64_t n_steps = clipped_round(rng, c.steps_mean, c.steps_sd, c.steps_min, c.steps_max);
        const int64_t n_insp = clipped_round(rng, c.inspect_steps_frac * static_cast<double>(n_steps),
                                             c.inspect_steps_sd, 2.0, static_cast<double>(n_steps));
        step_inspects.assign(static_cast<size_t>(n_steps), 0);
        step_inspects[n_steps - 1] = 1;
        for (int64_t k : choose(rng, n_steps - 1, n_insp - 1)) step_inspects[k] = 1;

        int64_t good = pieces;
        int64_t bad = 0;  // defective, not yet detected
        for (int64_t k = 0; k < n_steps; ++k) {
            const auto& pool = step_inspects[k] ? inspecting : plain;
            const int64_t m = pool[rng.below(pool.size())];
            out.machine.push_back(static_cast<int32_t>(m));
            out.pieces_in.push_back(good + bad);
            out.inspects.push_back(step_inspects[k]);
            const int64_t made = rng.binomial(good, 1.0 - out.yield[m]);
            out.defects_made[m] += made;
            good -= made;
            bad += made;
            int64_t detected = 0;
            if (step_inspects[k]) {
                detected = rng.binomial(bad, 1.0 - out.miss_rate[m]);
                bad -= detected;
            }
            out.defects.push_back(detected);
        }
        out.batch_ptr.push_back(static_cast<int64_t>(out.machine.size()));
    }
    return out;
}

}  // namespace fabguard
