// E-step in linear time.
//
// For a batch with steps k = 0..J-1, machine yields p_k, pass-through rates q_k (the miss rate at an
// inspecting step, 1 elsewhere) and detected counts b_k, a defect detected at step j is blamed on
// suspect k <= j with weight  v_k * prod_{s=k}^{j-1} q_s,  where v_k = (1 - p_k) prod_{s<k} p_s
// (the detector's own (1 - a_j) is common to all suspects and cancels). Two recursions give every
// sum the M-step needs without the O(J^2) double loop:
//   forward   T_k = T_{k-1} q_{k-1} + v_k             normaliser of the weights at step k
//   backward  U_k = b_k / T_k + q_k U_{k+1}           detections downstream, discounted
// so that
//   E_k = v_k U_k                 expected defects made at step k
//   H_k = sum_{k'>k} E_k'         pieces good after step k that went bad later
//   S_k = T_k q_k U_{k+1}         expected defects that slipped past inspecting step k.
//
// The EM maximises a log-likelihood in which T_k (1 - q_k) is the probability that a piece is
// detected at step k, and F (final good pieces: unflagged after the last step) enter as
//   paper's model:  L = sum b_k ln(T_k (1 - q_k)) + sum_batches F ln prod_k p_k
//     a piece that leaves the last step unflagged is good (undetected defects are not modelled);
//     sum_batches F ln prod p = sum_m G0_m ln p_m (G0_m: final good pieces per use of m).
//   escapes model:  L = sum b_k ln(T_k (1 - q_k)) + sum_batches F ln(S + X)
//     an unflagged piece is good (probability S = prod_k p_k) or a defect that escaped every
//     inspection (X = T_{J-1} q_{J-1}): the F pieces are a detection event after the last step,
//     so the backward recursion starts from U_J = F / (S + X) and F S / (S + X) pieces count as
//     good for every step. Without it, escapes count as good and yields read high (most for
//     low-yield machines) while miss rates read low.
#include "em.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "parallel.hpp"

namespace fabguard {

namespace {

constexpr double kFloor = 1e-99;  // values <= 0 are clamped here, as in the authors' script
// SQUAREM's extrapolated point is projected into [kLo, kHi]: a yield of exactly 1 is absorbing
// and one of 0 (or a miss rate of 0) sends the log-likelihood to -inf.
constexpr double kLo = 1e-12, kHi = 1.0 - 1e-12;
constexpr double kStepFactor = 4.0;  // SQUAREM's growth of the largest step (the R package's mstep)

struct Workspace {
    std::vector<double> good_final;   // per machine: final good pieces, once per use
    std::vector<double> detected;     // per machine: B, defects it detected
    std::vector<uint8_t> present;     // per machine: used in the subset
    std::vector<uint8_t> inspecting;  // per machine: inspects somewhere in the subset
    std::vector<double> d, g, missed; // per machine, per iteration: E, H and S sums
    // Parameter vectors (yields, then miss rates; 2 x n_machines) of one SQUAREM cycle.
    std::vector<double> th0, th1, th2, thx, next;
    std::vector<double> v, t, q;      // per step of the current batch

    Workspace(int64_t n_machines, int64_t max_steps)
        : good_final(n_machines), detected(n_machines), present(n_machines),
          inspecting(n_machines), d(n_machines), g(n_machines), missed(n_machines),
          th0(2 * n_machines), th1(2 * n_machines), th2(2 * n_machines), thx(2 * n_machines),
          next(2 * n_machines), v(max_steps), t(max_steps), q(max_steps) {}
};

// One EM update: E-step at theta (p = theta[0..M), a = theta[M..2M)), M-step into out. Returns the
// log-likelihood at theta.
double em_update(const Production& pr, const int64_t* batches, int64_t n_batches, bool escapes,
                 const std::vector<double>& theta, std::vector<double>& out, Workspace& ws) {
    const int64_t n_machines = pr.n_machines;
    const double* p = theta.data();
    const double* a = theta.data() + n_machines;
    std::fill(ws.d.begin(), ws.d.end(), 0.0);
    std::fill(ws.g.begin(), ws.g.end(), 0.0);
    std::fill(ws.missed.begin(), ws.missed.end(), 0.0);
    double loglik = 0.0;

    for (int64_t i = 0; i < n_batches; ++i) {
        const int64_t b = batches[i];
        const int64_t r0 = pr.first_row(b);
        const int64_t n_steps = pr.end_row(b) - r0;
        const int32_t* mach = pr.machine + r0;
        const int64_t* det = pr.defects + r0;
        const uint8_t* insp = pr.inspects + r0;

        double survive = 1.0;  // prod_{s<k} p_s
        for (int64_t k = 0; k < n_steps; ++k) {
            const double pk = p[mach[k]];
            ws.q[k] = insp[k] ? a[mach[k]] : 1.0;
            ws.v[k] = (1.0 - pk) * survive;
            ws.t[k] = (k == 0 ? 0.0 : ws.t[k - 1] * ws.q[k - 1]) + ws.v[k];
            survive *= pk;
        }
        double u_next = 0.0;  // U_{k+1}
        double good = 0.0;    // final pieces that are truly good (escapes model), per use
        if (escapes) {
            const double final_good = static_cast<double>(pr.final_good(b));
            const double escape = ws.t[n_steps - 1] * ws.q[n_steps - 1];
            const double unflagged = survive + escape;
            if (final_good > 0.0) {
                loglik += final_good * std::log(unflagged);
                u_next = final_good / unflagged;
                good = final_good * survive / unflagged;
            }
        }
        double later = 0.0;   // H_k
        for (int64_t k = n_steps - 1; k >= 0; --k) {
            double c = 0.0;
            if (det[k] > 0) {
                const double bk = static_cast<double>(det[k]);
                loglik += bk * std::log(ws.t[k]);
                if (ws.t[k] > 0.0) c = bk / ws.t[k];
            }
            const double u = c + ws.q[k] * u_next;
            const double e = ws.v[k] * u;
            const int32_t m = mach[k];
            ws.d[m] += e;
            ws.g[m] += later + good;
            if (insp[k]) ws.missed[m] += ws.t[k] * ws.q[k] * u_next;
            later += e;
            u_next = u;
        }
    }

    std::copy(theta.begin(), theta.end(), out.begin());
    for (int64_t m = 0; m < n_machines; ++m) {
        if (!ws.present[m]) continue;
        if (!escapes) loglik += ws.good_final[m] * std::log(p[m]);
        if (ws.detected[m] > 0.0) loglik += ws.detected[m] * std::log(1.0 - a[m]);
        const double good = (escapes ? 0.0 : ws.good_final[m]) + ws.g[m];
        const double total = good + ws.d[m];
        if (total > 0.0) out[m] = good / total;
        if (!(out[m] > 0.0)) out[m] = kFloor;
        if (ws.inspecting[m]) {
            const double seen = ws.missed[m] + ws.detected[m];
            if (seen > 0.0) {
                double a_new = ws.missed[m] / seen;
                if (!(a_new > 0.0)) a_new = kFloor;
                out[n_machines + m] = a_new;
            }
        }
    }
    return loglik;
}

bool small_change(double l_new, double l_old, double tol) {
    return std::fabs(l_new - l_old) <= tol * std::fabs(l_new);
}

// Fits one subset; returns the number of EM updates and sets converged / loglik. The estimate is
// left in ws.next and the E-step sums of its last update in ws.d, ws.missed.
int fit_subset(const Production& pr, const int64_t* batches, int64_t n_batches, const double* p0,
               const double* a0, const EmConfig& cfg, Workspace& ws, bool& converged,
               double& loglik) {
    const int64_t n_machines = pr.n_machines;
    std::fill(ws.good_final.begin(), ws.good_final.end(), 0.0);
    std::fill(ws.detected.begin(), ws.detected.end(), 0.0);
    std::fill(ws.present.begin(), ws.present.end(), 0);
    std::fill(ws.inspecting.begin(), ws.inspecting.end(), 0);
    for (int64_t i = 0; i < n_batches; ++i) {
        const int64_t b = batches[i];
        const double final_good = static_cast<double>(pr.final_good(b));
        for (int64_t r = pr.first_row(b); r < pr.end_row(b); ++r) {
            const int32_t m = pr.machine[r];
            ws.present[m] = 1;
            ws.good_final[m] += final_good;
            ws.detected[m] += static_cast<double>(pr.defects[r]);
            if (pr.inspects[r]) ws.inspecting[m] = 1;
        }
    }
    for (int64_t m = 0; m < n_machines; ++m) {
        ws.th0[m] = p0[m];
        ws.th0[n_machines + m] = ws.inspecting[m] ? a0[m] : 1.0;
    }
    auto update = [&](const std::vector<double>& in, std::vector<double>& out) {
        return em_update(pr, batches, n_batches, cfg.escapes, in, out, ws);
    };
    converged = false;
    int iter = 0;

    if (cfg.stop == EmStop::kL2) {  // the authors' plain EM and stop
        while (iter < cfg.max_iter) {
            loglik = update(ws.th0, ws.next);
            ++iter;
            double change = 0.0;
            for (int64_t m = 0; m < n_machines; ++m)
                change += (ws.next[m] - ws.th0[m]) * (ws.next[m] - ws.th0[m]);
            std::swap(ws.th0, ws.next);
            if (std::sqrt(change) <= cfg.tol) {
                converged = true;
                break;
            }
        }
        std::swap(ws.th0, ws.next);
        return iter;
    }

    // ws.next = F(th0) with loglik = L(th0) throughout: the latest accepted iterate's update.
    loglik = update(ws.th0, ws.next);
    ++iter;
    if (!cfg.accelerate) {
        while (iter < cfg.max_iter) {
            std::swap(ws.th0, ws.next);
            const double l_new = update(ws.th0, ws.next);
            ++iter;
            const bool done = small_change(l_new, loglik, cfg.tol);
            loglik = l_new;
            if (done) {
                converged = true;
                break;
            }
        }
        return iter;
    }

    // SQUAREM (Varadhan & Roland 2008, scheme S3, with the R package's step bounds): from th0,
    // th1 = F(th0), th2 = F(th1), r = th1 - th0, w = th2 - 2 th1 + th0, step s = |r| / |w| in
    // [1, step_max]; extrapolate thx = th0 + 2 s r + s^2 w and stabilise with F(thx). The cycle is
    // accepted when L(thx) >= L(th0), so that L(F(thx)) >= L(th0) (EM never lowers L); else it falls
    // back to th2 (s = 1). Cycle starts therefore have non-decreasing L. step_max starts at 1, grows
    // 4x whenever s reaches it and shrinks 4x when a full step is refused.
    double step_max = 1.0;
    const int64_t n_params = 2 * n_machines;
    while (iter < cfg.max_iter) {
        std::swap(ws.th1, ws.next);
        update(ws.th1, ws.th2);
        ++iter;
        double r2 = 0.0, w2 = 0.0;
        for (int64_t i = 0; i < n_params; ++i) {
            const double r = ws.th1[i] - ws.th0[i];
            const double w = ws.th2[i] - 2.0 * ws.th1[i] + ws.th0[i];
            r2 += r * r;
            w2 += w * w;
        }
        double step = w2 > 0.0 ? std::min(step_max, std::max(1.0, std::sqrt(r2 / w2))) : 1.0;
        std::vector<double>* accepted = &ws.th2;
        if (step > 1.0 && iter < cfg.max_iter) {
            for (int64_t i = 0; i < n_params; ++i) {
                const double r = ws.th1[i] - ws.th0[i];
                const double w = ws.th2[i] - 2.0 * ws.th1[i] + ws.th0[i];
                double x = ws.th0[i];
                if (r != 0.0 || w != 0.0) x = std::min(kHi, std::max(kLo, x + 2.0 * step * r + step * step * w));
                ws.thx[i] = x;
            }
            const double l_x = update(ws.thx, ws.next);
            ++iter;
            if (l_x >= loglik) {  // false for NaN
                accepted = &ws.next;
            } else {
                if (step == step_max) step_max = std::max(1.0, step_max / kStepFactor);
                step = 1.0;
            }
        }
        if (step == step_max) step_max *= kStepFactor;
        std::swap(ws.th0, *accepted);  // the new cycle start
        if (iter >= cfg.max_iter) {
            std::copy(ws.th0.begin(), ws.th0.end(), ws.next.begin());  // no update left to run
            break;
        }
        const double l_new = update(ws.th0, ws.next);
        ++iter;
        const bool done = small_change(l_new, loglik, cfg.tol);
        loglik = l_new;
        if (done) {
            converged = true;
            break;
        }
    }
    return iter;
}

}  // namespace

bool fit_em(const Production& pr, const Subsets& subsets, const double* p0, const double* a0,
            const EmConfig& config, int threads, const EmOutput& out,
            const std::function<bool(int64_t)>& poll) {
    int64_t max_steps = 1;
    for (int64_t b = 0; b < pr.n_batches; ++b)
        max_steps = std::max(max_steps, pr.end_row(b) - pr.first_row(b));
    const int n_workers =
        static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, subsets.n_subsets)));
    std::vector<Workspace> spaces;
    spaces.reserve(static_cast<size_t>(n_workers));
    for (int w = 0; w < n_workers; ++w) spaces.emplace_back(pr.n_machines, max_steps);

    const int64_t M = pr.n_machines;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    auto task = [&](int64_t s, int worker) {
        Workspace& ws = spaces[static_cast<size_t>(worker)];
        const int64_t begin = subsets.ptr[s];
        bool converged = false;
        double loglik = nan;
        out.n_iter[s] = fit_subset(pr, subsets.idx + begin, subsets.ptr[s + 1] - begin, p0, a0,
                                   config, ws, converged, loglik);
        out.converged[s] = converged ? 1 : 0;
        out.loglik[s] = loglik;
        for (int64_t m = 0; m < M; ++m) {
            out.yield[s * M + m] = ws.present[m] ? ws.next[m] : nan;
            const bool informed = ws.missed[m] + ws.detected[m] > 0.0;  // else a never moved
            out.miss[s * M + m] = (ws.present[m] && ws.inspecting[m] && informed) ? ws.next[M + m] : nan;
            out.expected_defects[s * M + m] = ws.present[m] ? ws.d[m] : nan;
        }
    };
    return run_tasks(subsets.n_subsets, n_workers, task, poll);
}

}  // namespace fabguard
