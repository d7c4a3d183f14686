#include "production.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>

#include "rng.hpp"

namespace fabguard {

namespace {

constexpr int64_t kMaxCount = int64_t{1} << 53;  // counts are summed in double by the EM

[[noreturn]] void fail_row(int64_t batch, int64_t row, const std::string& what) {
    std::ostringstream msg;
    msg << "batch index " << batch << ", row " << row << ": " << what;
    throw std::invalid_argument(msg.str());
}

}  // namespace

void validate(const Production& pr) {
    if (pr.n_batches <= 0) throw std::invalid_argument("production data has no batches");
    if (pr.n_machines <= 0) throw std::invalid_argument("production data has no machines");
    if (pr.batch_ptr[0] != 0) throw std::invalid_argument("batch_ptr[0] must be 0");
    if (pr.batch_ptr[pr.n_batches] != pr.n_rows)
        throw std::invalid_argument("batch_ptr[-1] must equal the number of rows");
    for (int64_t b = 0; b < pr.n_batches; ++b) {
        const int64_t r0 = pr.batch_ptr[b];
        const int64_t r1 = pr.batch_ptr[b + 1];
        if (r1 <= r0) fail_row(b, r0, "batch has no steps (batch_ptr must increase)");
        if (r1 > pr.n_rows) fail_row(b, r0, "batch_ptr points past the last row");
        for (int64_t r = r0; r < r1; ++r) {
            const int32_t m = pr.machine[r];
            if (m < 0 || m >= pr.n_machines)
                fail_row(b, r, "machine index " + std::to_string(m) + " outside [0, " +
                                   std::to_string(pr.n_machines) + ")");
            if (pr.pieces_in[r] < 0) fail_row(b, r, "pieces_in is negative");
            if (pr.pieces_in[r] > kMaxCount) fail_row(b, r, "pieces_in exceeds 2^53");
            if (pr.defects[r] < 0) fail_row(b, r, "defects is negative");
            if (pr.defects[r] > pr.pieces_in[r]) fail_row(b, r, "defects exceed pieces_in");
            if (pr.inspects[r] > 1) fail_row(b, r, "inspects must be 0 or 1");
            if (pr.defects[r] > 0 && !pr.inspects[r])
                fail_row(b, r, "defects detected at a step that does not inspect");
            if (r > r0 && pr.pieces_in[r] > pr.pieces_in[r - 1] - pr.defects[r - 1])
                fail_row(b, r, "pieces_in exceeds the pieces left by the previous step");
        }
        if (pr.pieces_in[r0] == 0) fail_row(b, r0, "batch starts with zero pieces");
    }
}

void validate(const Subsets& subsets, int64_t n_batches) {
    if (subsets.n_subsets <= 0) throw std::invalid_argument("no batch subsets given");
    if (subsets.ptr[0] != 0) throw std::invalid_argument("subset_ptr[0] must be 0");
    // All offsets first: an index is read only once every offset is known to be in order.
    for (int64_t s = 0; s < subsets.n_subsets; ++s)
        if (subsets.ptr[s + 1] <= subsets.ptr[s])
            throw std::invalid_argument("subset " + std::to_string(s) + " is empty");
    for (int64_t i = 0; i < subsets.ptr[subsets.n_subsets]; ++i) {
        if (subsets.idx[i] < 0 || subsets.idx[i] >= n_batches)
            throw std::invalid_argument("subset_idx[" + std::to_string(i) + "] holds batch index " +
                                        std::to_string(subsets.idx[i]) + " outside [0, " +
                                        std::to_string(n_batches) + ")");
    }
}

std::vector<int64_t> draw_resamples(int64_t n_batches, double fraction, int64_t n_resamples,
                                    uint64_t seed) {
    if (n_batches <= 0) throw std::invalid_argument("n_batches must be positive");
    if (!(fraction > 0.0 && fraction <= 1.0))
        throw std::invalid_argument("fraction must be in (0, 1]");
    if (n_resamples <= 0) throw std::invalid_argument("n_resamples must be positive");
    const int64_t k = std::max<int64_t>(
        1, static_cast<int64_t>(std::llround(fraction * static_cast<double>(n_batches))));
    if (n_resamples > std::numeric_limits<int64_t>::max() / k / 8)
        throw std::length_error("n_resamples x batches per resample overflows 64-bit sizes");
    std::vector<int64_t> out(static_cast<size_t>(k * n_resamples));
    std::vector<int64_t> perm(static_cast<size_t>(n_batches));
    for (int64_t r = 0; r < n_resamples; ++r) {
        std::iota(perm.begin(), perm.end(), 0);
        Rng rng(seed, static_cast<uint64_t>(r));
        for (int64_t i = 0; i < k; ++i) {  // partial Fisher-Yates
            const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n_batches - i)));
            std::swap(perm[i], perm[j]);
        }
        std::sort(perm.begin(), perm.begin() + k);
        std::copy(perm.begin(), perm.begin() + k, out.begin() + r * k);
    }
    return out;
}

std::vector<int64_t> draw_bootstrap(int64_t n_batches, int64_t n_resamples, uint64_t seed) {
    if (n_batches <= 0) throw std::invalid_argument("n_batches must be positive");
    if (n_resamples <= 0) throw std::invalid_argument("n_resamples must be positive");
    if (n_resamples > (int64_t{1} << 62) || n_resamples > std::numeric_limits<int64_t>::max() / n_batches / 8)
        throw std::length_error("n_resamples x batches overflows 64-bit sizes");
    std::vector<int64_t> out(static_cast<size_t>(n_batches * n_resamples));
    std::vector<int64_t> count(static_cast<size_t>(n_batches));
    for (int64_t r = 0; r < n_resamples; ++r) {
        std::fill(count.begin(), count.end(), 0);
        Rng rng(seed, (uint64_t{1} << 63) + static_cast<uint64_t>(r));
        for (int64_t i = 0; i < n_batches; ++i) ++count[rng.below(static_cast<uint64_t>(n_batches))];
        int64_t* dst = out.data() + r * n_batches;  // counting sort: sorted without a comparison sort
        for (int64_t b = 0; b < n_batches; ++b)
            for (int64_t c = 0; c < count[b]; ++c) *dst++ = b;
    }
    return out;
}

}  // namespace fabguard
