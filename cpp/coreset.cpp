// Greedy k-centre selection with triangle-inequality pruning.
//
// The exhaustive loop (what fabguard ran in PyTorch before) reads all n points at every one of the k
// steps: n k d memory traffic, minutes for PatchCore on a few hundred images. Here every point
// belongs to the cluster of its nearest chosen centre, and each cluster knows its radius (the
// largest squared distance of a member). When a new centre c is chosen, a point x of cluster j can
// only come closer to c than to its centre c_j if |c - c_j| >= 2 |x - c_j| fails (triangle
// inequality), so whole clusters far from c, and within the others the points near their own
// centre, are skipped. Each cluster keeps its members sorted by distance, farthest first, with their
// rows contiguous (a copy of x): the points a new centre may take are a front of each cluster
// found by binary search and read as one stream, and the farthest point overall (the next centre)
// is the first of some cluster.
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

constexpr int64_t kChunk = 512;  // points or centres per parallel work item

// Error of s~ = squared_distance vs the exact s (u = 2^-24): each term (a - b)^2 takes 2 roundings,
// then at most ceil(d/8) + 3 additions, all of non-negative numbers, so |s~ - s| <= E s with
// E = gamma_(ceil(d/8)+5) < (d + 8) u, plus, where terms fall below the normal range, at most
// 2d + 3 roundings of absolute error 2^-150 each: a = (d + 2) 2^-149. For the true distances
// D = |c - c_j|, r = |x - c_j| and q = |x - c|, q >= D - r. Skipping x needs q~ >= r~ for sure, and
// D~ >= 4 (r~ + a)(1 + E)/(1 - E) + a gives D >= 2 sqrt((r~ + a)/(1 - E)) >= 2r, so
// q~ >= (1 - E) q^2 - a >= (1 - E)(D - r)^2 - a >= r~. Solved for r~ with (1 + 3E) >= (1 + E)/(1 - E)
// (E < 1/3): r~ <= (D~ - a) / (4 (1 + 3E)) - a, evaluated in double, whose rounding (2^-53) the
// 3E vs 2E + O(E^2) slack covers, then rounded down to float.
class Margin {
public:
    explicit Margin(int64_t d)
        : factor_(4.0 * (1.0 + 3.0 * static_cast<double>(d + 8) * std::ldexp(1.0, -24))),
          absolute_(5.0 * static_cast<double>(d + 2) * std::ldexp(1.0, -149)) {}
    // The largest squared distance to its centre c_j at which a point certainly keeps c_j against a
    // new centre at squared distance D2 from c_j; negative where no point is that sure.
    float keep_below(float D2) const {
        const double v = (static_cast<double>(D2) - absolute_) / factor_ - absolute_;
        if (v < 0.0) return -1.f;
        float f = static_cast<float>(v);
        if (static_cast<double>(f) > v) f = std::nextafter(f, 0.f);
        return f;
    }

private:
    double factor_, absolute_;
};

// The points nearest to one centre: indices, squared distances s and rows, in the same order, by s
// descending (then index ascending), alive at places [begin, size). Points only ever leave a
// cluster, from a front part (s above a cut) whose staying points then shift back over the gaps, so
// the order holds without sorting again and the farthest member is the first.
struct Cluster {
    std::vector<int64_t> ids;
    std::vector<float> s;
    std::vector<float> rows;
    int64_t begin = 0;

    int64_t end() const { return static_cast<int64_t>(ids.size()); }
    bool empty() const { return begin == end(); }
    float radius2() const { return empty() ? -1.f : s[begin]; }
    int64_t farthest() const { return empty() ? -1 : ids[begin]; }
};

// Greater in the order of the next choice: the larger squared distance, the smaller index on a tie.
bool farther(float s_a, int64_t id_a, float s_b, int64_t id_b) {
    return s_a > s_b || (s_a == s_b && id_a < id_b);
}

// A cluster of the given points (id, s, row pointer), sorted into the order Cluster keeps.
struct Point {
    int64_t id;
    float s;
    const float* row;
};
Cluster make_cluster(std::vector<Point>& points, int64_t d) {
    std::sort(points.begin(), points.end(),
              [](const Point& a, const Point& b) { return farther(a.s, a.id, b.s, b.id); });
    Cluster cl;
    cl.ids.reserve(points.size());
    cl.s.reserve(points.size());
    cl.rows.reserve(points.size() * static_cast<size_t>(d));
    for (const Point& p : points) {
        cl.ids.push_back(p.id);
        cl.s.push_back(p.s);
        cl.rows.insert(cl.rows.end(), p.row, p.row + d);
    }
    return cl;
}

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
    std::vector<Cluster> clusters;
    clusters.reserve(static_cast<size_t>(k));
    {
        std::vector<Point> all(static_cast<size_t>(n));
        team.run((n + kChunk - 1) / kChunk, [&](int64_t item, int) {
            for (int64_t p = item * kChunk; p < std::min(n, (item + 1) * kChunk); ++p)
                all[p] = {p, squared_distance(x + p * d, x + start * d, d), x + p * d};
        });
        clusters.push_back(make_cluster(all, d));
    }

    std::vector<float> keep;      // per centre: its members at or below this certainly stay
    std::vector<int64_t> active;  // clusters that the new centre may take points from
    std::vector<int64_t> cut;     // per active cluster, the end of the places to check
    std::vector<uint8_t> moved;   // per place checked: active cluster a's place m at offset[a] + m - begin
    std::vector<int64_t> offset;
    std::vector<std::vector<Point>> leaving;  // per active cluster, its points the new centre takes
    struct Item { int64_t active, begin, end; };
    std::vector<Item> items;
    auto last_poll = std::chrono::steady_clock::now();

    for (int64_t step = 1; step < k; ++step) {
        int64_t best = 0;  // next centre: the farthest point overall
        for (int64_t j = 1; j < static_cast<int64_t>(clusters.size()); ++j) {
            const Cluster& a = clusters[j];
            const Cluster& b = clusters[best];
            if (farther(a.radius2(), a.farthest(), b.radius2(), b.farthest())) best = j;
        }
        const Cluster& source = clusters[best];
        float* xc = centres.data() + step * d;
        std::copy(source.rows.data() + source.begin * d, source.rows.data() + (source.begin + 1) * d, xc);
        chosen.push_back(source.farthest());

        const int64_t n_centres = step;
        keep.resize(static_cast<size_t>(n_centres));
        team.run((n_centres + kChunk - 1) / kChunk, [&](int64_t item, int) {
            for (int64_t j = item * kChunk; j < std::min(n_centres, (item + 1) * kChunk); ++j)
                if (!clusters[j].empty()) keep[j] = margin.keep_below(squared_distance(xc, centres.data() + j * d, d));
        });
        active.clear();
        cut.clear();
        offset.clear();
        items.clear();
        int64_t n_checked = 0;
        for (int64_t j = 0; j < n_centres; ++j) {
            const Cluster& cl = clusters[j];
            if (cl.empty() || cl.radius2() <= keep[j]) continue;
            const float limit = keep[j];
            const int64_t e = std::partition_point(cl.s.begin() + cl.begin, cl.s.end(),
                                                   [limit](float v) { return v > limit; }) - cl.s.begin();
            for (int64_t b = cl.begin; b < e; b += kChunk)
                items.push_back({static_cast<int64_t>(active.size()), b, std::min(e, b + kChunk)});
            active.push_back(j);
            cut.push_back(e);
            offset.push_back(n_checked);
            n_checked += e - cl.begin;
        }
        moved.assign(static_cast<size_t>(n_checked), 0);
        team.run(static_cast<int64_t>(items.size()), [&](int64_t i, int) {
            const Item& it = items[i];
            Cluster& cl = clusters[active[it.active]];
            uint8_t* flag = moved.data() + offset[it.active];
            for (int64_t m = it.begin; m < it.end; ++m) {
                const float q = squared_distance(cl.rows.data() + m * d, xc, d);
                if (q < cl.s[m]) {
                    cl.s[m] = q;
                    flag[m - cl.begin] = 1;
                }
            }
        });
        // The leaving points out, the staying ones of the checked front shifted back over the gaps:
        // the order stays, and the cluster now starts later.
        leaving.resize(active.size());
        team.run(static_cast<int64_t>(active.size()), [&](int64_t a, int) {
            Cluster& cl = clusters[active[a]];
            const uint8_t* flag = moved.data() + offset[a];
            std::vector<Point>& out = leaving[a];
            out.clear();
            int64_t w = cut[a];
            for (int64_t m = cut[a] - 1; m >= cl.begin; --m) {
                if (flag[m - cl.begin]) {
                    out.push_back({cl.ids[m], cl.s[m], nullptr});
                    continue;
                }
                if (--w != m) {
                    cl.ids[w] = cl.ids[m];
                    cl.s[w] = cl.s[m];
                    std::copy(cl.rows.data() + m * d, cl.rows.data() + (m + 1) * d, cl.rows.data() + w * d);
                }
            }
            if (out.empty()) return;
            for (Point& p : out) p.row = x + p.id * d;  // the shift may have overwritten the copy
            cl.begin = w;
            if (cl.begin > cl.end() - cl.begin + 64) {  // the dead front outgrew the live part: drop it
                cl.ids.erase(cl.ids.begin(), cl.ids.begin() + cl.begin);
                cl.s.erase(cl.s.begin(), cl.s.begin() + cl.begin);
                cl.rows.erase(cl.rows.begin(), cl.rows.begin() + cl.begin * d);
                cl.ids.shrink_to_fit();
                cl.s.shrink_to_fit();
                cl.rows.shrink_to_fit();
                cl.begin = 0;
            }
        });
        std::vector<Point> fresh;
        for (std::vector<Point>& out : leaving) fresh.insert(fresh.end(), out.begin(), out.end());
        clusters.push_back(make_cluster(fresh, d));

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
