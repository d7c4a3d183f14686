// EM estimate of machine yields and inspection miss rates (Adipraja et al., IEEE TSMC 2024).
#pragma once

#include <cstdint>
#include <functional>

#include "production.hpp"

namespace fabguard {

struct EmConfig {
    double tol = 1e-3;   // stop when the L2 change of the yield vector is <= tol
    int max_iter = 100;  // ... or after this many iterations
};

// Row-major (n_subsets, n_machines) outputs, owned by the caller. A machine absent from a subset
// gets NaN yield there; a machine that does not inspect in a subset gets NaN miss rate.
struct EmOutput {
    double* yield = nullptr;
    double* miss = nullptr;
    double* expected_defects = nullptr;  // defects the fit attributes to the machine
    int32_t* n_iter = nullptr;           // (n_subsets,)
    uint8_t* converged = nullptr;        // (n_subsets,)
};

// Fits every subset from the same start (p0: yields, a0: miss rates, both length n_machines) on
// `threads` threads. Cost per iteration is linear in the subset's rows. poll: see run_tasks.
// Returns false if poll cancelled the work.
bool fit_em(const Production& pr, const Subsets& subsets, const double* p0, const double* a0,
            const EmConfig& config, int threads, const EmOutput& out,
            const std::function<bool(int64_t)>& poll);

}  // namespace fabguard
