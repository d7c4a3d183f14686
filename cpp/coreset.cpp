// Greedy k-centre selection with triangle-inequality pruning.
//
// The exhaustive loop (what fabguard ran in PyTorch before) reads all n points at every one of the k
// steps: n k d memory traffic, minutes for PatchCore on a few hundred images. Here every point
// belongs to the cluster of its nearest chosen centre, and each cluster knows its radius (the
// largest squared distance of a member). When a new centre c is chosen, a point x of cluster j can
// only come closer to c than to its centre c_j if |c - c_j| >= 2 |x - c_j| fails (triangle
// inequality), so whole clusters far from c, and within the others the points near their own
// centre, are skipped. The largest-radius cluster gives the next centre without a scan over the
// points. Each cluster keeps its members' rows contiguous (a copy of x, moved with the points), so
// the pruned loops stream through memory instead of gathering scattered rows (3x faster, measured).
//
// Float32 rounding: the bounds are applied to computed distances, so they get a margin (Margin
// below) that covers the rounding error of squared_distance; a point is skipped only where its
// computed distance to c provably is not smaller than its current one, hence the same choices,
// bit for bit, as the exhaustive loop with squared_distance.
#include "coreset.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "parallel.hpp"

namespace fabguard {

float squared_distance(const float* a, const float* b, int64_t d) {
    // Lane l sums the terms i = l mod 8 in order, then the lanes add in a fixed tree. Written so the
    // compiler vectorises across lanes (no reassociation: the build uses no -ffast-math).
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        for (int l = 0; l < 8; ++l) {
            const float t = a[i + l] - b[i + l];
            acc[l] += t * t;
        }
    }
    for (int l = 0; i + l < d; ++l) {
        const float t = a[i + l] - b[i + l];
        acc[l] += t * t;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

namespace {

constexpr int64_t kChunk = 2048;  // points or centres per parallel work item

// Error of s~ = squared_distance vs the exact s (u = 2^-24): each term (a - b)^2 takes 2 roundings,
// then at most ceil(d/8) + 3 additions, all of non-negative numbers, so |s~ - s| <= E s with
// E = gamma_(ceil(d/8)+5) < (d + 8) u, plus, where terms fall below the normal range, at most
// 2d + 3 roundings of absolute error 2^-150 each: a = (d + 2) 2^-149. For the true distances
// D = |c - c_j|, r = |x - c_j| and q = |x - c|, q >= D - r. Skipping x needs q~ >= r~ for sure, and
// D~ >= 4 (r~ + a)(1 + E)/(1 - E) + a gives D >= 2 sqrt((r~ + a)/(1 - E)) >= 2r, so
// q~ >= (1 - E) q^2 - a >= (1 - E)(D - r)^2 - a >= r~. (1 + 3E) >= (1 + E)/(1 - E) for E < 1/3;
// the check itself runs in double, whose rounding (2^-53) the 3E vs 2E + O(E^2) slack covers.
struct Margin {
    double factor, absolute;
    explicit Margin(int64_t d)
        : factor(1.0 + 3.0 * static_cast<double>(d + 8) * std::ldexp(1.0, -24)),
          absolute(5.0 * static_cast<double>(d + 2) * std::ldexp(1.0, -149)) {}
    // True where every point within squared distance r2 of a centre at squared distance D2 from c
    // certainly keeps its centre.
    bool far(float D2, float r2) const {
        return static_cast<double>(D2) >= 4.0 * (static_cast<double>(r2) + absolute) * factor + absolute;
    }
};

// The points nearest to one centre: their indices, squared distances and rows, in the same order.
struct Cluster {
    std::vector<int64_t> ids;
    std::vector<float> s;
    std::vector<float> rows;
    float radius2 = -1.f;   // largest s; -1: empty
    int64_t farthest = -1;  // the member at radius2 (smallest index on a tie)

    int64_t size() const { return static_cast<int64_t>(ids.size()); }
    void measure() {
        radius2 = -1.f;
        farthest = -1;
        for (size_t m = 0; m < ids.size(); ++m) {
            if (s[m] > radius2 || (s[m] == radius2 && ids[m] < farthest)) {
                radius2 = s[m];
                farthest = ids[m];
            }
        }
    }
    // Every member's row is at rows[m d]; find the place of point id (it is a member).
    int64_t place(int64_t id) const {
        return static_cast<int64_t>(std::find(ids.begin(), ids.end(), id) - ids.begin());
    }
};

void check_arguments(const float* x, int64_t n, int64_t d, int64_t k, int64_t start, int threads) {
    using std::to_string;
    if (n < 1 || d < 1)
        throw std::invalid_argument("features must have at least one row and one column, got (" + to_string(n) +
                                    ", " + to_string(d) + ")");
    if (k < 1 || k > n)
        throw std::invalid_argument("k must be in [1, " + to_string(n) + "] (the number of rows), got " + to_string(k));
    if (start < 0 || start >= n)
        throw std::invalid_argument("start must be in [0, " + to_string(n) + "), got " + to_string(start));
    if (threads < 1) throw std::invalid_argument("threads must be >= 1, got " + to_string(threads));
    // |a - b| <= 2 limit for every term, so a squared distance is at most 4 d limit^2 = FLT_MAX / 2.
    const float limit = std::sqrt(std::numeric_limits<float>::max() / (8.0f * static_cast<float>(d)));
    for (int64_t i = 0; i < n * d; ++i) {
        if (!(std::fabs(x[i]) <= limit)) {
            char text[120];
            std::snprintf(text, sizeof text, "] is %g: values must be finite and at most %.3g in magnitude",
                          static_cast<double>(x[i]), static_cast<double>(limit));
            throw std::invalid_argument("features[" + to_string(i / d) + ", " + to_string(i % d) + text +
                                        " (float32 squared distances)");
        }
    }
}

}  // namespace

std::vector<int64_t> kcenter_greedy(const float* x, int64_t n, int64_t d, int64_t k, int64_t start,
                                    int threads, const std::function<bool(int64_t)>& poll) {
    check_arguments(x, n, d, k, start, threads);
    const Margin margin(d);
    const size_t du = static_cast<size_t>(d);
    Team team(threads);
    std::vector<int64_t> chosen{start};
    chosen.reserve(static_cast<size_t>(k));
    std::vector<float> centres(static_cast<size_t>(k) * du);  // chosen rows, contiguous for the scan
    std::copy(x + start * d, x + (start + 1) * d, centres.begin());
    std::vector<uint8_t> moved(static_cast<size_t>(n), 0);  // by point index, within one step
    std::vector<Cluster> clusters(1);
    clusters.reserve(static_cast<size_t>(k));

    Cluster& first = clusters[0];
    first.ids.resize(static_cast<size_t>(n));
    first.s.resize(static_cast<size_t>(n));
    first.rows.assign(x, x + n * d);
    team.run((n + kChunk - 1) / kChunk, [&](int64_t item, int) {
        for (int64_t p = item * kChunk; p < std::min(n, (item + 1) * kChunk); ++p) {
            first.ids[p] = p;
            first.s[p] = squared_distance(x + p * d, x + start * d, d);
        }
    });
    first.measure();

    std::vector<float> D2;        // squared distance of the new centre to each centre
    std::vector<int64_t> active;  // clusters that the new centre may take points from
    std::vector<Cluster> taken;   // per active cluster, the points it loses
    struct Item { int64_t cluster, begin, end; };
    std::vector<Item> items;
    auto last_poll = std::chrono::steady_clock::now();

    for (int64_t step = 1; step < k; ++step) {
        int64_t best = 0;  // next centre: the farthest point overall, smallest index on a tie
        for (int64_t j = 1; j < static_cast<int64_t>(clusters.size()); ++j) {
            const Cluster& a = clusters[j];
            const Cluster& b = clusters[best];
            if (a.radius2 > b.radius2 || (a.radius2 == b.radius2 && a.farthest < b.farthest)) best = j;
        }
        const int64_t c = clusters[best].farthest;
        const float* row = clusters[best].rows.data() + clusters[best].place(c) * d;
        float* xc = centres.data() + step * d;
        std::copy(row, row + d, xc);
        chosen.push_back(c);

        const int64_t n_centres = step;
        D2.resize(static_cast<size_t>(n_centres));
        team.run((n_centres + kChunk - 1) / kChunk, [&](int64_t item, int) {
            for (int64_t j = item * kChunk; j < std::min(n_centres, (item + 1) * kChunk); ++j)
                D2[j] = clusters[j].radius2 < 0.f ? 0.f : squared_distance(xc, centres.data() + j * d, d);
        });
        active.clear();
        items.clear();
        for (int64_t j = 0; j < n_centres; ++j) {
            if (clusters[j].radius2 < 0.f || margin.far(D2[j], clusters[j].radius2)) continue;
            active.push_back(j);
            const int64_t size = clusters[j].size();
            for (int64_t b = 0; b < size; b += kChunk) items.push_back({j, b, std::min(size, b + kChunk)});
        }
        team.run(static_cast<int64_t>(items.size()), [&](int64_t i, int) {
            const Item& it = items[i];
            const float Dj = D2[it.cluster];
            Cluster& cl = clusters[it.cluster];
            for (int64_t m = it.begin; m < it.end; ++m) {
                if (margin.far(Dj, cl.s[m])) continue;
                const float q = squared_distance(cl.rows.data() + m * d, xc, d);
                if (q < cl.s[m]) {
                    cl.s[m] = q;
                    moved[cl.ids[m]] = 1;
                }
            }
        });
        taken.resize(active.size());
        team.run(static_cast<int64_t>(active.size()), [&](int64_t a, int) {
            Cluster& cl = clusters[active[a]];
            Cluster& out = taken[a];
            out = Cluster();
            size_t kept = 0;
            for (size_t m = 0; m < cl.ids.size(); ++m) {
                const float* r = cl.rows.data() + m * du;
                if (moved[cl.ids[m]]) {
                    moved[cl.ids[m]] = 0;
                    out.ids.push_back(cl.ids[m]);
                    out.s.push_back(cl.s[m]);
                    out.rows.insert(out.rows.end(), r, r + d);
                    continue;
                }
                if (kept != m) {
                    cl.ids[kept] = cl.ids[m];
                    cl.s[kept] = cl.s[m];
                    std::copy(r, r + d, cl.rows.data() + kept * du);
                }
                ++kept;
            }
            cl.ids.resize(kept);
            cl.s.resize(kept);
            cl.rows.resize(kept * du);
            if (cl.ids.capacity() > 2 * kept + 16) {  // keeps the memory O(n) in all
                cl.ids.shrink_to_fit();
                cl.s.shrink_to_fit();
                cl.rows.shrink_to_fit();
            }
            cl.measure();
        });
        Cluster fresh;
        size_t total = 0;
        for (const Cluster& t : taken) total += t.ids.size();
        fresh.ids.reserve(total);
        fresh.s.reserve(total);
        fresh.rows.reserve(total * du);
        for (Cluster& t : taken) {
            fresh.ids.insert(fresh.ids.end(), t.ids.begin(), t.ids.end());
            fresh.s.insert(fresh.s.end(), t.s.begin(), t.s.end());
            fresh.rows.insert(fresh.rows.end(), t.rows.begin(), t.rows.end());
            t = Cluster();
        }
        fresh.measure();
        clusters.push_back(std::move(fresh));

        if (poll) {
            const auto now = std::chrono::steady_clock::now();
            if (now - last_poll >= std::chrono::milliseconds(200)) {
                last_poll = now;
                if (!poll(step + 1)) return chosen;
            }
        }
    }
    if (poll) poll(static_cast<int64_t>(chosen.size()));
    return chosen;
}

}  // namespace fabguard
