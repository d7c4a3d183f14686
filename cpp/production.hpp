// The production table as the core sees it: rows grouped by batch, in step order.
#pragma once

#include <cstdint>
#include <vector>

namespace fabguard {

// Non-owning view of numpy arrays. Row r belongs to batch b when batch_ptr[b] <= r < batch_ptr[b+1].
struct Production {
    int64_t n_batches = 0;
    int64_t n_rows = 0;
    int64_t n_machines = 0;
    const int64_t* batch_ptr = nullptr;  // n_batches + 1 offsets
    const int32_t* machine = nullptr;    // machine index of each row, in [0, n_machines)
    const int64_t* pieces_in = nullptr;  // pieces entering the step
    const int64_t* defects = nullptr;    // defective pieces detected and removed at the step
    const uint8_t* inspects = nullptr;   // 1 where the step inspects

    int64_t first_row(int64_t b) const { return batch_ptr[b]; }
    int64_t end_row(int64_t b) const { return batch_ptr[b + 1]; }
    // Pieces that left the last step good (as far as inspection could tell).
    int64_t final_good(int64_t b) const {
        const int64_t last = batch_ptr[b + 1] - 1;
        return pieces_in[last] - defects[last];
    }
};

// Throws std::invalid_argument naming the batch index and row of the first violation. The core
// calls this before it trusts any index, whatever the Python layer has checked already: on
// construction of the view and again at the start of every fit (O(rows), cheap next to the EM).
void validate(const Production& pr);

// Batch subsets in CSR form (subset s holds idx[ptr[s] .. ptr[s+1])), e.g. the resamples.
struct Subsets {
    int64_t n_subsets = 0;
    const int64_t* ptr = nullptr;
    const int64_t* idx = nullptr;
};

void validate(const Subsets& subsets, int64_t n_batches);

// R subsets of round(fraction * n_batches) distinct batches each (at least 1), sorted; subset r is
// drawn from the random stream (seed, r).
std::vector<int64_t> draw_resamples(int64_t n_batches, double fraction, int64_t n_resamples,
                                    uint64_t seed);

// R bootstrap resamples: n_batches draws with replacement each, sorted; resample r is drawn from
// the random stream (seed, 2^63 + r), apart from draw_resamples' streams.
std::vector<int64_t> draw_bootstrap(int64_t n_batches, int64_t n_resamples, uint64_t seed);

}  // namespace fabguard
