// EM estimate of machine yields and inspection miss rates (Adipraja et al., IEEE TSMC 2024).
#pragma once

#include <cstdint>
#include <functional>

#include "production.hpp"

namespace fabguard {

enum class EmStop {
    kLogLik,  // relative change of the log-likelihood between iterations <= tol (fabguard)
    kL2,      // L2 change of the yield vector <= tol, plain EM (the authors' script)
};

struct EmConfig {
    double tol = 1e-13;
    int max_iter = 1000;     // EM updates (a SQUAREM cycle counts its 3 updates)
    bool accelerate = true;  // SQUAREM (Varadhan & Roland 2008); ignored with kL2
    EmStop stop = EmStop::kLogLik;
    bool escapes = true;  // model defects that escape every inspection (see em.cpp); the paper does not
};

// Row-major (n_subsets, n_machines) outputs, owned by the caller. A machine absent from a subset
// gets NaN yield there; a machine that does not inspect in a subset gets NaN miss rate.
struct EmOutput {
    double* yield = nullptr;
    double* miss = nullptr;
    double* expected_defects = nullptr;  // defects the fit attributes to the machine
    int32_t* n_iter = nullptr;           // (n_subsets,) EM updates
    uint8_t* converged = nullptr;        // (n_subsets,)
    double* loglik = nullptr;            // (n_subsets,) log-likelihood at the last E-step
};

// Fits every subset from the same start (p0: yields, a0: miss rates, both length n_machines) on
// `threads` threads. A subset may repeat a batch (a bootstrap resample): it then counts as often.
// Cost per iteration is linear in the subset's rows. poll: see run_tasks. Returns false if poll
// cancelled the work.
bool fit_em(const Production& pr, const Subsets& subsets, const double* p0, const double* a0,
            const EmConfig& config, int threads, const EmOutput& out,
            const std::function<bool(int64_t)>& poll);

}  // namespace fabguard
