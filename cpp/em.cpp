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
#include <memory>
#include <vector>

#include "parallel.hpp"

namespace fabguard {

namespace {

constexpr double kFloor = 1e-99;  // values <= 0 are clamped here, as in the authors' script
// SQUAREM's extrapolated point is projected into [kLo, kHi]: a yield of exactly 1 is absorbing
// and one of 0 (or a miss rate of 0) sends the log-likelihood to -inf.
constexpr double kLo = 1e-12, kHi = 1.0 - 1e-12;
// An extrapolated coordinate may come at most this many times closer to 0 or to 1 than the cycle's
// own points. Without it, one extrapolation can put a yield whose optimum is 1 - 2e-5 at 1 - 1e-12,
// and EM, which moves 1 - p by a near-constant factor per update, takes hundreds of updates to
// come back while the log-likelihood barely changes: the stop fired 2e-5 from the optimum on a
// simulated 50 x 1000 fleet. With the bound the default stop ended within 1e-6 of the optimum on
// the six fleets measured (30 x 200 to 500 x 5000; docs/machine_yield.md).
constexpr double kApproach = 100.0;
constexpr double kStepFactor = 4.0;  // SQUAREM's growth of the largest step (the R package's mstep)
// E-step chunks: about this many batches each, at most kMaxChunks, their partial sums within
// kChunkDoubles doubles in all.
constexpr int64_t kBatchesPerChunk = 32, kMaxChunks = 16, kChunkDoubles = int64_t{1} << 22;

// Batches are summed in a fixed number of chunks (set by the subset's size, never by the thread
// count), each into its own partial sums, and the partials added in chunk order: the result is the
// same whichever thread ran which chunk. Few chunks: their partials are cleared and added on every
// update (16 x 3 x machines doubles; 64 cost 0.1 ms an update at 500 machines).
int64_t n_chunks_for(int64_t n_batches, int64_t n_machines) {
    const int64_t by_size = (n_batches + kBatchesPerChunk - 1) / kBatchesPerChunk;
    const int64_t by_memory = std::max<int64_t>(1, kChunkDoubles / (3 * n_machines + 1));
    return std::max<int64_t>(1, std::min({by_size, kMaxChunks, by_memory}));
}

// Per row, prepared once per fit: its slot, the machine where the step inspects and n_machines
// elsewhere. A step's pass-through rate is rate[slot] (rate[n_machines] = 1) and its missed defects
// go to missed[slot] (missed[n_machines] is never read): no branch on the row's inspection flag,
// which is unpredictable (14% of rows inspect on the simulated fleets). Also, per batch, the rows
// that detected defects: the log-likelihood's logarithms run over them only.
struct RowIndex {
    std::vector<int32_t> slot;
    std::vector<int64_t> det_ptr, det_rows;
    explicit RowIndex(const Production& pr) : slot(static_cast<size_t>(pr.n_rows)), det_ptr(1, 0) {
        const int32_t none = static_cast<int32_t>(pr.n_machines);
        for (int64_t r = 0; r < pr.n_rows; ++r) slot[r] = pr.inspects[r] ? pr.machine[r] : none;
        det_ptr.reserve(static_cast<size_t>(pr.n_batches + 1));
        for (int64_t b = 0; b < pr.n_batches; ++b) {
            for (int64_t r = pr.first_row(b); r < pr.end_row(b); ++r)
                if (pr.defects[r] > 0) det_rows.push_back(r);
            det_ptr.push_back(static_cast<int64_t>(det_rows.size()));
        }
    }
};

struct Scratch {                      // per step of the batch being processed
    std::vector<double> v, t, q, survive;
    explicit Scratch(int64_t max_steps) : v(max_steps), t(max_steps), q(max_steps), survive(max_steps) {}
};

// What the E-step says about step k of a batch: expected pieces that were good after it (H_k, plus
// with escapes the final pieces that are truly good), expected defects made there (E_k), and U_k,
// U_{k+1} of the backward recursion (see the top of this file).
struct StepTerms {
    int64_t k;
    int32_t machine, slot;
    double good_after, made, u, u_next;
    double pass;  // T_k q_k
};

// The forward recursion of one batch, a step at a time, into s (restrict pointers and running
// values: the recursion stays in registers instead of going through memory the compiler must
// assume aliased).
struct Forward {
    const int32_t* __restrict mach;
    const int32_t* __restrict slot;
    double* __restrict v;
    double* __restrict t;
    double* __restrict q;
    double* __restrict sv;
    double survive = 1.0;  // prod_{s<k} p_s
    double t_pass = 0.0;   // T_{k-1} q_{k-1}

    Forward(const Production& pr, const RowIndex& ri, int64_t b, Scratch& s)
        : mach(pr.machine + pr.first_row(b)), slot(ri.slot.data() + pr.first_row(b)), v(s.v.data()),
          t(s.t.data()), q(s.q.data()), sv(s.survive.data()) {}
    inline void step(int64_t k, const double* __restrict p, const double* __restrict rate) {
        const double pk = p[mach[k]];
        const double qk = rate[slot[k]];
        const double vk = (1.0 - pk) * survive;
        const double tk = t_pass + vk;
        q[k] = qk;
        sv[k] = survive;
        v[k] = vk;
        t[k] = tk;
        t_pass = tk * qk;
        survive *= pk;
    }
};

// The backward recursion of a batch whose forward recursion is in s, a step at a time from the
// last. The constructor takes the final pieces (escapes model) and, when need_loglik, the batch's
// log-likelihood terms: detection events and the final pieces.
struct Backward {
    const int32_t* __restrict mach;
    const int32_t* __restrict slot;
    const int64_t* __restrict det;
    const double* __restrict v;
    const double* __restrict t;
    const double* __restrict q;
    double u_next = 0.0;  // U_{k+1}
    double good = 0.0;    // final pieces that are truly good (escapes model)
    double later = 0.0;   // H_k
    double loglik = 0.0;

    Backward(const Production& pr, const RowIndex& ri, int64_t b, const Forward& f, bool escapes,
             bool need_loglik)
        : mach(f.mach), slot(f.slot), det(pr.defects + pr.first_row(b)), v(f.v), t(f.t), q(f.q) {
        if (escapes) {
            const double final_good = static_cast<double>(pr.final_good(b));
            const double unflagged = f.survive + f.t_pass;  // t_pass = T_{J-1} q_{J-1}: escapes
            if (final_good > 0.0) {
                if (need_loglik) loglik += final_good * std::log(unflagged);
                u_next = final_good / unflagged;
                good = final_good * f.survive / unflagged;
            }
        }
        if (need_loglik) {
            const int64_t r0 = pr.first_row(b);
            for (int64_t i = ri.det_ptr[b]; i < ri.det_ptr[b + 1]; ++i) {
                const int64_t k = ri.det_rows[i] - r0;
                loglik += static_cast<double>(det[k]) * std::log(t[k]);
            }
        }
    }
    template <class Sink>
    inline void step(int64_t k, Sink&& sink) {
        // c = b_k / T_k (0 where T_k = 0): selects, no branch
        const bool positive = t[k] > 0.0;
        const double c = (positive ? static_cast<double>(det[k]) : 0.0) / (positive ? t[k] : 1.0);
        const double u = c + q[k] * u_next;
        const double e = v[k] * u;
        sink(StepTerms{k, mach[k], slot[k], later + good, e, u, u_next, t[k] * q[k]});
        later += e;
        u_next = u;
    }
};

// E-step of batch b at (p, rate: the pass-through rate per slot, see RowIndex): sink(StepTerms) for
// every step, last to first; returns the batch's log-likelihood terms when need_loglik, else 0.
template <class Sink>
inline double estep_batch(const Production& pr, const RowIndex& ri, int64_t b, bool escapes, bool need_loglik,
                          const double* p, const double* rate, Scratch& s, Sink&& sink) {
    const int64_t n_steps = pr.end_row(b) - pr.first_row(b);
    Forward f(pr, ri, b, s);
    for (int64_t k = 0; k < n_steps; ++k) f.step(k, p, rate);
    Backward back(pr, ri, b, f, escapes, need_loglik);
    for (int64_t k = n_steps - 1; k >= 0; --k) back.step(k, sink);
    return back.loglik;
}

// The E-steps of batches[lo, hi) in order, each batch's backward recursion run together with the
// next one's forward recursion: two independent chains of dependent multiply-adds per loop
// iteration instead of one, which the processor overlaps. The same operations, in the same order
// per batch, as estep_batch. s0 and s1 alternate as the batches' scratch.
template <class Sink>
inline double estep_range(const Production& pr, const RowIndex& ri, const int64_t* batches, int64_t lo, int64_t hi,
                          bool escapes, bool need_loglik, const double* p, const double* rate, Scratch& s0,
                          Scratch& s1, Sink&& sink) {
    double loglik = 0.0;
    if (lo >= hi) return loglik;
    Scratch* cur = &s0;
    Scratch* nxt = &s1;
    int64_t b = batches[lo];
    int64_t n = pr.end_row(b) - pr.first_row(b);
    Forward f(pr, ri, b, *cur);
    for (int64_t k = 0; k < n; ++k) f.step(k, p, rate);
    for (int64_t i = lo; i < hi; ++i) {
        Backward back(pr, ri, b, f, escapes, need_loglik);
        loglik += back.loglik;
        int64_t k = n - 1;
        if (i + 1 < hi) {
            const int64_t b_next = batches[i + 1];
            const int64_t n_next = pr.end_row(b_next) - pr.first_row(b_next);
            Forward f_next(pr, ri, b_next, *nxt);
            int64_t j = 0;
            for (; k >= 0 && j < n_next; --k, ++j) {
                f_next.step(j, p, rate);
                back.step(k, sink);
            }
            for (; j < n_next; ++j) f_next.step(j, p, rate);
            for (; k >= 0; --k) back.step(k, sink);
            f = f_next;
            b = b_next;
            n = n_next;
            std::swap(cur, nxt);
        } else {
            for (; k >= 0; --k) back.step(k, sink);
        }
    }
    return loglik;
}

struct Workspace {
    std::vector<double> good_final;   // per machine: final good pieces, once per use
    std::vector<double> detected;     // per machine: B, defects it detected
    std::vector<uint8_t> present;     // per machine: used in the subset
    std::vector<uint8_t> inspecting;  // per machine: inspects somewhere in the subset
    std::vector<double> d, g, missed; // per machine, per iteration: E, H and S sums
    std::vector<double> partial;      // per chunk: its E, H and S sums (3 x n_machines + 1)
    std::vector<double> partial_loglik;
    std::vector<double> rate;         // per slot: pass-through rate (RowIndex)
    // Parameter vectors (yields, then miss rates; 2 x n_machines) of one SQUAREM cycle.
    std::vector<double> th0, th1, th2, thx, next;
    std::vector<Scratch> scratch;     // two per team worker
    Team& team;
    const RowIndex& rows;

    Workspace(int64_t n_machines, int64_t max_steps, Team& team_, const RowIndex& rows_)
        : good_final(n_machines), detected(n_machines), present(n_machines),
          inspecting(n_machines), d(n_machines), g(n_machines), missed(n_machines), rate(n_machines + 1),
          th0(2 * n_machines), th1(2 * n_machines), th2(2 * n_machines), thx(2 * n_machines),
          next(2 * n_machines), scratch(static_cast<size_t>(2 * team_.size()), Scratch(max_steps)), team(team_),
          rows(rows_) {}
};

// One EM update: E-step at theta (p = theta[0..M), a = theta[M..2M)), M-step into out. Returns the
// log-likelihood at theta when need_loglik (else 0: SQUAREM does not look at every update's).
double em_update(const Production& pr, const int64_t* batches, int64_t n_batches, bool escapes,
                 bool need_loglik, const std::vector<double>& theta, std::vector<double>& out, Workspace& ws) {
    const int64_t n_machines = pr.n_machines;
    const double* p = theta.data();
    const double* a = theta.data() + n_machines;
    std::copy(a, a + n_machines, ws.rate.begin());
    ws.rate[n_machines] = 1.0;
    const int64_t n_chunks = n_chunks_for(n_batches, n_machines);
    const int64_t stride = 3 * n_machines + 1;
    ws.partial.assign(static_cast<size_t>(stride * n_chunks), 0.0);
    ws.partial_loglik.assign(static_cast<size_t>(n_chunks), 0.0);
    ws.team.run(n_chunks, [&](int64_t c, int worker) {
        double* __restrict d = ws.partial.data() + stride * c;
        double* __restrict g = d + n_machines;
        double* __restrict missed = g + n_machines;  // n_machines + 1: the last is the sink of RowIndex
        Scratch& s0 = ws.scratch[static_cast<size_t>(2 * worker)];
        Scratch& s1 = ws.scratch[static_cast<size_t>(2 * worker + 1)];
        const int64_t lo = n_batches * c / n_chunks, hi = n_batches * (c + 1) / n_chunks;
        ws.partial_loglik[static_cast<size_t>(c)] = estep_range(
            pr, ws.rows, batches, lo, hi, escapes, need_loglik, p, ws.rate.data(), s0, s1,
            [&](const StepTerms& st) {
                d[st.machine] += st.made;
                g[st.machine] += st.good_after;
                missed[st.slot] += st.pass * st.u_next;  // S_k; a step that does not inspect: the sink
            });
    });
    double loglik = 0.0;
    std::fill(ws.d.begin(), ws.d.end(), 0.0);
    std::fill(ws.g.begin(), ws.g.end(), 0.0);
    std::fill(ws.missed.begin(), ws.missed.end(), 0.0);
    for (int64_t c = 0; c < n_chunks; ++c) {
        const double* part = ws.partial.data() + stride * c;
        for (int64_t m = 0; m < n_machines; ++m) {
            ws.d[m] += part[m];
            ws.g[m] += part[n_machines + m];
            ws.missed[m] += part[2 * n_machines + m];
        }
        loglik += ws.partial_loglik[static_cast<size_t>(c)];
    }

    std::copy(theta.begin(), theta.end(), out.begin());
    for (int64_t m = 0; m < n_machines; ++m) {
        if (!ws.present[m]) continue;
        if (need_loglik) {
            if (!escapes) loglik += ws.good_final[m] * std::log(p[m]);
            if (ws.detected[m] > 0.0) loglik += ws.detected[m] * std::log(1.0 - a[m]);
        }
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
    auto update = [&](const std::vector<double>& in, std::vector<double>& out, bool need_loglik = true) {
        return em_update(pr, batches, n_batches, cfg.escapes, need_loglik, in, out, ws);
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
        update(ws.th1, ws.th2, false);
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
                if (r != 0.0 || w != 0.0) {
                    // at most kApproach times closer to 0 or 1 than the cycle's own points
                    const double floor0 = std::min(ws.th0[i], ws.th2[i]) / kApproach;
                    const double floor1 = std::min(1.0 - ws.th0[i], 1.0 - ws.th2[i]) / kApproach;
                    x = std::min(1.0 - floor1, std::max(floor0, x + 2.0 * step * r + step * step * w));
                    x = std::min(kHi, std::max(kLo, x));
                }
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
    // Threads go to the subsets when there are several (bootstrap resamples), else to the E-step's
    // chunks of the one fit; the chunks make the sums the same either way.
    const int n_workers =
        static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, subsets.n_subsets)));
    std::vector<std::unique_ptr<Team>> teams;
    const RowIndex rows(pr);
    std::vector<Workspace> spaces;
    spaces.reserve(static_cast<size_t>(n_workers));
    for (int w = 0; w < n_workers; ++w) {
        teams.push_back(std::make_unique<Team>(n_workers == 1 ? threads : 1));
        spaces.emplace_back(pr.n_machines, max_steps, *teams.back(), rows);
    }

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

namespace {

// sum_{k<n} x[k] y[k] in a fixed order: four running sums (k mod 4), added at the end.
inline double dot(const double* x, const double* y, int64_t n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        s0 += x[k] * y[k];
        s1 += x[k + 1] * y[k + 1];
        s2 += x[k + 2] * y[k + 2];
        s3 += x[k + 3] * y[k + 3];
    }
    for (; k < n; ++k) s0 += x[k] * y[k];
    return (s0 + s1) + (s2 + s3);
}

}  // namespace

bool inverse_diagonal(const double* a, int64_t n, int threads, double* out) {
    // Scaled to unit diagonal: S = D A D, D = diag(a)^-1/2; then A^-1 = D S^-1 D.
    std::vector<double> scale(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        if (!(a[i * n + i] > 0.0)) return false;
        scale[i] = 1.0 / std::sqrt(a[i * n + i]);
    }
    // Cholesky S = L L^T (L row-major, lower triangle), element (i, j) from row i's earlier elements
    // and row j. A pivot 1 - R^2 at or below n x epsilon: S is singular to working precision. Rows
    // go in blocks of kRows, each earlier row read once per block rather than once per row (at 650
    // parameters L is 3.4 MB, beyond the L2 cache); every element's arithmetic is the same.
    constexpr int64_t kRows = 32;
    std::vector<double> L(static_cast<size_t>(n * n), 0.0);
    const double cut = static_cast<double>(n) * std::numeric_limits<double>::epsilon();
    for (int64_t i0 = 0; i0 < n; i0 += kRows) {
        const int64_t i1 = std::min(n, i0 + kRows);
        for (int64_t j = 0; j < i1; ++j) {
            double* lj = L.data() + j * n;
            if (j >= i0) {  // row j of this block has its elements 0..j-1: its pivot
                const double pivot = 1.0 - dot(lj, lj, j);
                if (!(pivot > cut)) return false;
                lj[j] = std::sqrt(pivot);
            }
            for (int64_t i = std::max(i0, j + 1); i < i1; ++i) {
                double* li = L.data() + i * n;
                li[j] = (a[i * n + j] * scale[i] * scale[j] - dot(li, lj, j)) / lj[j];
            }
        }
    }
    // diag(S^-1)_i = sum_r X_ri^2, X = L^-1: column i by forward substitution from row i. Columns
    // are independent; each is computed the same way on any thread. A task's block of columns
    // advances row by row together, so that each row of L is read once per block.
    Team team(threads);
    const int64_t block = 16;
    std::vector<std::vector<double>> cols(static_cast<size_t>(team.size()),
                                          std::vector<double>(static_cast<size_t>(block * n)));
    team.run((n + block - 1) / block, [&](int64_t c, int worker) {
        double* x = cols[static_cast<size_t>(worker)].data();  // column c0 + i at x + i * n
        const int64_t c0 = c * block, c1 = std::min(n, (c + 1) * block);
        double sums[block];
        for (int64_t i = c0; i < c1; ++i) {
            double* xi = x + (i - c0) * n;
            xi[i] = 1.0 / L[i * n + i];
            sums[i - c0] = xi[i] * xi[i];
        }
        for (int64_t r = c0 + 1; r < n; ++r) {
            const double* lr = L.data() + r * n;
            for (int64_t i = c0; i < std::min(c1, r); ++i) {
                double* xi = x + (i - c0) * n;
                xi[r] = -dot(lr + i, xi + i, r - i) / lr[r];
                sums[i - c0] += xi[r] * xi[r];
            }
        }
        for (int64_t i = c0; i < c1; ++i) out[i] = sums[i - c0] * scale[i] * scale[i];
    });
    return true;
}

double score_outer_product(const Production& pr, const double* p, const double* a, const int64_t* free_index,
                           int64_t n_free, double* grad, double* opg) {
    const int64_t n_machines = pr.n_machines;
    int64_t max_steps = 1;
    for (int64_t b = 0; b < pr.n_batches; ++b)
        max_steps = std::max(max_steps, pr.end_row(b) - pr.first_row(b));
    Scratch s(max_steps);
    const RowIndex rows(pr);
    std::vector<double> rate(a, a + n_machines);
    rate.push_back(1.0);
    std::vector<int64_t> slot(static_cast<size_t>(2 * n_machines), -1);  // free parameter -> its place in the batch's list
    std::vector<int64_t> idx;
    std::vector<double> val;
    std::fill(grad, grad + n_free, 0.0);
    std::fill(opg, opg + n_free * n_free, 0.0);
    double loglik = 0.0;
    auto add = [&](int64_t param, double x) {
        const int64_t f = free_index[param];
        if (f < 0) return;
        if (slot[param] < 0) {
            slot[param] = static_cast<int64_t>(idx.size());
            idx.push_back(f);
            val.push_back(0.0);
        }
        val[static_cast<size_t>(slot[param])] += x;
    };
    for (int64_t b = 0; b < pr.n_batches; ++b) {
        const int64_t r0 = pr.first_row(b);
        const int32_t* mach = pr.machine + r0;
        const int64_t* det = pr.defects + r0;
        const uint8_t* insp = pr.inspects + r0;
        idx.clear();
        val.clear();
        loglik += estep_batch(pr, rows, b, true, true, p, rate.data(), s, [&](const StepTerms& st) {
            const int32_t m = st.machine;
            // d/dp of H ln p + E ln(1 - p), with E / (1 - p) = survive U (E = (1 - p) survive U): no 0/0 at p = 1
            add(m, st.good_after / p[m] - s.survive[st.k] * st.u);
            if (insp[st.k]) {
                // d/da of S ln a + b ln(1 - a), with S / a = T U_{k+1} (S = T a U_{k+1})
                const double bk = static_cast<double>(det[st.k]);
                add(n_machines + m, s.t[st.k] * st.u_next - (bk > 0.0 ? bk / (1.0 - a[m]) : 0.0));
            }
        });
        for (int64_t k = 0; k < pr.end_row(b) - r0; ++k)
            if (det[k] > 0) loglik += static_cast<double>(det[k]) * std::log(1.0 - a[mach[k]]);
        for (size_t i = 0; i < idx.size(); ++i) {
            grad[idx[i]] += val[i];
            double* row = opg + idx[i] * n_free;
            for (size_t j = 0; j < idx.size(); ++j) row[idx[j]] += val[i] * val[j];
        }
        for (int64_t k = 0; k < pr.end_row(b) - r0; ++k) {
            slot[mach[k]] = -1;
            slot[n_machines + mach[k]] = -1;
        }
    }
    return loglik;
}

}  // namespace fabguard
