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
#include "em.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "parallel.hpp"

namespace fabguard {

namespace {

constexpr double kFloor = 1e-99;  // values <= 0 are clamped here, as in the authors' script

struct Workspace {
    std::vector<double> good_final;   // per machine: final good pieces, once per use
    std::vector<double> detected;     // per machine: B, defects it detected
    std::vector<uint8_t> present;     // per machine: used in the subset
    std::vector<uint8_t> inspecting;  // per machine: inspects somewhere in the subset
    std::vector<double> d, g, missed; // per machine, per iteration: E, H and S sums
    std::vector<double> p, a, p_new;  // per machine: current estimates
    std::vector<double> v, t, q;      // per step of the current batch

    Workspace(int64_t n_machines, int64_t max_steps)
        : good_final(n_machines), detected(n_machines), present(n_machines),
          inspecting(n_machines), d(n_machines), g(n_machines), missed(n_machines),
          p(n_machines), a(n_machines), p_new(n_machines), v(max_steps), t(max_steps),
          q(max_steps) {}
};

void fit_subset(const Production& pr, const int64_t* batches, int64_t n_batches,
                const double* p0, const double* a0, const EmConfig& cfg, Workspace& ws,
                double* yield_out, double* miss_out, double* defects_out, int32_t* n_iter_out,
                uint8_t* converged_out) {
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
        ws.p[m] = p0[m];
        ws.a[m] = ws.inspecting[m] ? a0[m] : 1.0;
    }

    int iter = 0;
    bool converged = false;
    while (iter < cfg.max_iter) {
        ++iter;
        std::fill(ws.d.begin(), ws.d.end(), 0.0);
        std::fill(ws.g.begin(), ws.g.end(), 0.0);
        std::fill(ws.missed.begin(), ws.missed.end(), 0.0);

        for (int64_t i = 0; i < n_batches; ++i) {
            const int64_t b = batches[i];
            const int64_t r0 = pr.first_row(b);
            const int64_t n_steps = pr.end_row(b) - r0;
            const int32_t* mach = pr.machine + r0;
            const int64_t* det = pr.defects + r0;
            const uint8_t* insp = pr.inspects + r0;

            double survive = 1.0;  // prod_{s<k} p_s
            for (int64_t k = 0; k < n_steps; ++k) {
                const double pk = ws.p[mach[k]];
                ws.q[k] = insp[k] ? ws.a[mach[k]] : 1.0;
                ws.v[k] = (1.0 - pk) * survive;
                ws.t[k] = (k == 0 ? 0.0 : ws.t[k - 1] * ws.q[k - 1]) + ws.v[k];
                survive *= pk;
            }
            double u_next = 0.0;  // U_{k+1}
            double later = 0.0;   // H_k
            for (int64_t k = n_steps - 1; k >= 0; --k) {
                const double c = (det[k] > 0 && ws.t[k] > 0.0)
                                     ? static_cast<double>(det[k]) / ws.t[k]
                                     : 0.0;
                const double u = c + ws.q[k] * u_next;
                const double e = ws.v[k] * u;
                const int32_t m = mach[k];
                ws.d[m] += e;
                ws.g[m] += later;
                if (insp[k]) ws.missed[m] += ws.t[k] * ws.q[k] * u_next;
                later += e;
                u_next = u;
            }
        }

        double change = 0.0;
        for (int64_t m = 0; m < n_machines; ++m) {
            if (!ws.present[m]) continue;
            const double good = ws.good_final[m] + ws.g[m];
            const double total = good + ws.d[m];
            double p_new = total > 0.0 ? good / total : ws.p[m];
            if (!(p_new > 0.0)) p_new = kFloor;
            change += (p_new - ws.p[m]) * (p_new - ws.p[m]);
            ws.p_new[m] = p_new;
            if (ws.inspecting[m]) {
                const double seen = ws.missed[m] + ws.detected[m];
                if (seen > 0.0) {
                    double a_new = ws.missed[m] / seen;
                    if (!(a_new > 0.0)) a_new = kFloor;
                    ws.a[m] = a_new;
                }
            }
        }
        for (int64_t m = 0; m < n_machines; ++m)
            if (ws.present[m]) ws.p[m] = ws.p_new[m];
        if (std::sqrt(change) <= cfg.tol) {
            converged = true;
            break;
        }
    }

    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (int64_t m = 0; m < n_machines; ++m) {
        yield_out[m] = ws.present[m] ? ws.p[m] : nan;
        const bool informed = ws.missed[m] + ws.detected[m] > 0.0;  // else a never moved
        miss_out[m] = (ws.present[m] && ws.inspecting[m] && informed) ? ws.a[m] : nan;
        defects_out[m] = ws.present[m] ? ws.d[m] : nan;
    }
    *n_iter_out = iter;
    *converged_out = converged ? 1 : 0;
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
    auto task = [&](int64_t s, int worker) {
        const int64_t begin = subsets.ptr[s];
        fit_subset(pr, subsets.idx + begin, subsets.ptr[s + 1] - begin, p0, a0, config,
                   spaces[static_cast<size_t>(worker)], out.yield + s * M, out.miss + s * M,
                   out.expected_defects + s * M, out.n_iter + s, out.converged + s);
    };
    return run_tasks(subsets.n_subsets, n_workers, task, poll);
}

}  // namespace fabguard
