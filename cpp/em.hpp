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

// Scores of the escapes model at (p, a) for the observed-information interval. Per batch, the score
// (gradient of the batch's log-likelihood) by Fisher's identity: the E-step's expected complete-data
// score, d/dp_m = H_m / p_m - E_m / (1 - p_m), d/da_m = S_m / a_m - B_m / (1 - a_m). Parameter j is
// p_j (j < n_machines) or a_{j - n_machines}; free_index[j] is its place among the n_free parameters
// kept (-1: left out). Writes grad (n_free: the sum of the batch scores) and opg (n_free x n_free,
// row-major: the sum of their outer products), batches in order, one thread. Returns the
// log-likelihood at (p, a).
double score_outer_product(const Production& pr, const double* p, const double* a, const int64_t* free_index,
                           int64_t n_free, double* grad, double* opg);

// diag(A^-1) of a symmetric positive definite n x n matrix (row-major), into out, by Cholesky of A
// scaled to unit diagonal. The sums run in a fixed order: the same result for any thread count.
// Returns false, leaving out unspecified, where A is not positive definite to working precision
// (a pivot of the scaled matrix at or below n x machine epsilon).
bool inverse_diagonal(const double* a, int64_t n, int threads, double* out);

}  // namespace fabguard
