// Counter-free, portable random streams.
//
// Every random draw in the core comes from an Rng keyed by (seed, stream), where the stream is a
// replicate or batch index, never a thread id: results are identical for any thread count and on
// any platform (the standard library's distributions are implementation-defined, so none is used).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace fabguard {

inline uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
class Rng {
public:
    Rng(uint64_t seed, uint64_t stream) {
        uint64_t s = seed;
        uint64_t mixed = splitmix64(s) ^ (stream * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull);
        for (auto& word : s_) word = splitmix64(mixed);
    }

    uint64_t next() {
        const uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }

    // Uniform on [0, 1).
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

    // Uniform integer on [0, n), n > 0, without modulo bias.
    uint64_t below(uint64_t n) {
        const uint64_t limit = std::numeric_limits<uint64_t>::max() -
                               std::numeric_limits<uint64_t>::max() % n;
        uint64_t x;
        do {
            x = next();
        } while (x >= limit);
        return x % n;
    }

    // Standard normal (Box-Muller, one value per call).
    double normal() {
        const double u1 = 1.0 - uniform();  // (0, 1]
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }

    // Binomial(n, p): inversion for small means, BTRS (Hormann 1993) otherwise.
    int64_t binomial(int64_t n, double p) {
        if (n <= 0 || p <= 0.0) return 0;
        if (p >= 1.0) return n;
        if (p > 0.5) return n - binomial(n, 1.0 - p);
        if (static_cast<double>(n) * p < 10.0) return binomial_inversion(n, p);
        return binomial_btrs(n, p);
    }

private:
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

    int64_t binomial_inversion(int64_t n, double p) {
        const double q = 1.0 - p;
        const double s = p / q;
        const double a = static_cast<double>(n + 1) * s;
        const double r0 = std::pow(q, static_cast<double>(n));
        for (;;) {
            double r = r0;
            double u = uniform();
            int64_t x = 0;
            while (u > r) {
                u -= r;
                ++x;
                if (x > n) break;
                r *= a / static_cast<double>(x) - s;
            }
            if (x <= n) return x;
        }
    }

    int64_t binomial_btrs(int64_t n, double p) {
        const double nd = static_cast<double>(n);
        const double q = 1.0 - p;
        const double spq = std::sqrt(nd * p * q);
        const double b = 1.15 + 2.53 * spq;
        const double a = -0.0873 + 0.0248 * b + 0.01 * p;
        const double c = nd * p + 0.5;
        const double v_r = 0.92 - 4.2 / b;
        const double alpha = (2.83 + 5.1 / b) * spq;
        const double lpq = std::log(p / q);
        const double m = std::floor((nd + 1.0) * p);
        const double h = std::lgamma(m + 1.0) + std::lgamma(nd - m + 1.0);
        for (;;) {
            const double u = uniform() - 0.5;
            double v = uniform();
            const double us = 0.5 - std::fabs(u);
            const double k = std::floor((2.0 * a / us + b) * u + c);
            if (k < 0.0 || k > nd) continue;
            if (us >= 0.07 && v <= v_r) return static_cast<int64_t>(k);
            if (v <= 0.0) continue;
            v = std::log(v * alpha / (a / (us * us) + b));
            if (v <= h - std::lgamma(k + 1.0) - std::lgamma(nd - k + 1.0) + (k - m) * lpq)
                return static_cast<int64_t>(k);
        }
    }

    uint64_t s_[4];
};

}  // namespace fabguard
