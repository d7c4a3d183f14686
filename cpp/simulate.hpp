// Seeded batch-production simulator after the paper's Table V.
#pragma once

#include <cstdint>
#include <vector>

namespace fabguard {

struct SimConfig {
    int64_t n_machines = 250;
    int64_t n_batches = 2000;
    int64_t n_low = 3;              // low-yield machines, drawn at random among all machines
    double low_yield = 0.4;
    double healthy_min = 0.998;     // healthy yields ~ Uniform(healthy_min, healthy_max)
    double healthy_max = 1.0;
    double inspect_share = 0.3;     // share of machines with inspection equipment
    double pieces_mean = 2000, pieces_sd = 1500, pieces_min = 1, pieces_max = 20000;
    double steps_mean = 20, steps_sd = 7, steps_min = 5, steps_max = 50;
    double inspect_steps_frac = 0.1, inspect_steps_sd = 2;  // per batch, at least 2, last inspects
    double accuracy_mean = 0.90, accuracy_sd = 0.02, accuracy_min = 0.85, accuracy_max = 1.0;
    uint64_t seed = 0;
};

struct SimResult {
    // The input format, rows grouped by batch in step order.
    std::vector<int64_t> batch_ptr;
    std::vector<int32_t> machine;
    std::vector<int64_t> pieces_in;
    std::vector<int64_t> defects;
    std::vector<uint8_t> inspects;
    // The truth, per machine.
    std::vector<double> yield;
    std::vector<double> miss_rate;        // NaN for machines without inspection equipment
    std::vector<uint8_t> has_inspection;
    std::vector<uint8_t> low;
    // Defects each machine actually made (detected or not).
    std::vector<int64_t> defects_made;
};

// Throws std::invalid_argument on an impossible configuration. Machine properties come from the
// random stream (seed, 0) and batch i from (seed, i + 1), so a batch does not depend on the others.
SimResult simulate(const SimConfig& config);

}  // namespace fabguard
