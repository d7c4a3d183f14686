// Greedy k-centre coreset (Gonzalez 1985) of float32 feature vectors: PatchCore's memory bank.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace fabguard {

// Squared Euclidean distance of two d-vectors in float32, summed in a fixed order (8 lanes, then a
// fixed tree), so every caller and thread gets the same bits. Its relative error is below
// (d + 8) * 2^-24 (see coreset.cpp).
float squared_distance(const float* a, const float* b, int64_t d);

// Indices of k points of x (n x d, row-major), chosen greedily: start first, then each time the
// point whose squared_distance to its nearest chosen point is largest (the smallest index on a
// tie). The result is exactly that of the exhaustive loop over all points with squared_distance;
// triangle-inequality bounds only skip distances that provably cannot change it, with a margin for
// float32 rounding. Same result for any thread count. Memory: a copy of x (its rows move with the
// clusters) and O(n + k d) more.
// poll(steps_done) is called about every 200 ms from the calling thread; false cancels, and the
// function then returns the indices chosen so far. Throws std::invalid_argument, before any work,
// unless n, d >= 1, 1 <= k <= n, 0 <= start < n, threads >= 1 and every value of x is finite and
// small enough that no squared distance overflows (the message names the first bad row and column).
std::vector<int64_t> kcenter_greedy(const float* x, int64_t n, int64_t d, int64_t k, int64_t start,
                                    int threads, const std::function<bool(int64_t)>& poll);

}  // namespace fabguard
