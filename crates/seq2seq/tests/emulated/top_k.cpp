// The search's top-k kernel (src/generate/top_k.cu) on the host emulator, against the definition
// written out in f64: log-sum-exp over the row after (or, without renormalisation, before) the
// bans, and a stable sort by value, larger first, then lower token. Exit status 1 on any mismatch.
// Built and run by tests/cuda_emulated.rs.
#include "../../../kernels/cuda/emulate.hpp"
#include "../../src/generate/top_k.cu"

#include <algorithm>
#include <cstdio>
#include <random>
#include <utility>

namespace {

int failures = 0;

struct Case {
    const char* name;
    int rows, v, k;
    std::vector<uint32_t> banned;
    bool renormalize;
    int finite;  // tokens left finite in the last row (0: all)
};

void run(const Case& c) {
    std::printf("%s: rows %d, V %d, k %d, %zu banned, renormalize %d\n", c.name, c.rows, c.v, c.k,
                c.banned.size(), (int)c.renormalize);
    std::mt19937_64 rng(11 + c.v + c.k);
    // Values on a coarse grid, so many ties.
    std::uniform_int_distribution<int> u(-40, 40);
    std::vector<float> x((size_t)c.rows * c.v);
    for (auto& e : x) e = (float)u(rng) / 8.0f;
    if (c.finite > 0) {
        float* last = &x[(size_t)(c.rows - 1) * c.v];
        for (int j = c.finite; j < c.v; ++j) last[j * 7 % c.v] = -INFINITY;
    }
    const int w = 1 + 2 * c.k;
    std::vector<float> out((size_t)c.rows * w, 0.0f);
    const uint32_t b0 = c.banned.size() > 0 ? c.banned[0] : 0xffffffffu;
    const uint32_t b1 = c.banned.size() > 1 ? c.banned[1] : 0xffffffffu;
    emu_launch(c.rows, THREADS, [&] {
        rdrop_masked_top_k_f32(x.data(), out.data(), c.rows, c.v, c.k, b0, b1, (int)c.banned.size(),
                               (int)c.renormalize);
    });
    for (int r = 0; r < c.rows; ++r) {
        const float* row = &x[(size_t)r * c.v];
        std::vector<std::pair<float, uint32_t>> vals;
        for (int j = 0; j < c.v; ++j) {
            const bool ban = std::find(c.banned.begin(), c.banned.end(), (uint32_t)j) != c.banned.end();
            vals.push_back({ban ? -INFINITY : row[j], (uint32_t)j});
        }
        double m = -INFINITY, z = 0.0;
        for (int j = 0; j < c.v; ++j) m = std::max(m, (double)(c.renormalize ? vals[j].first : row[j]));
        for (int j = 0; j < c.v; ++j) z += std::exp((double)(c.renormalize ? vals[j].first : row[j]) - m);
        const double norm = m + std::log(z);
        std::stable_sort(vals.begin(), vals.end(), [](auto& a, auto& b) { return a.first > b.first; });
        const float* o = &out[(size_t)r * w];
        if (!(std::fabs(o[0] - norm) <= 1e-5 * (1.0 + std::fabs(norm)))) {
            if (++failures <= 20) std::printf("  row %d: norm %.8g vs %.8g\n", r, o[0], norm);
        }
        for (int q = 0; q < c.k; ++q) {
            if (o[1 + q] != vals[q].first || (uint32_t)o[1 + c.k + q] != vals[q].second) {
                if (++failures <= 20)
                    std::printf("  row %d, rank %d: (%g, %u) vs (%g, %u)\n", r, q, o[1 + q],
                                (uint32_t)o[1 + c.k + q], vals[q].first, vals[q].second);
            }
        }
    }
}

}  // namespace

int main() {
    // V below, above and not a multiple of the 256 threads; greedy's k = 1 and beam's 2 × beam up to
    // the largest; bans inside the best tokens; a row with fewer finite tokens than k.
    const std::vector<Case> cases = {
        {"greedy", 3, 1000, 1, {7}, true, 0},
        {"beam 4", 4, 5003, 8, {0, 3}, true, 0},
        {"beam 8, V < threads", 2, 57, 16, {1}, true, 0},
        {"no renormalisation", 2, 777, 6, {2, 9}, false, 0},
        {"too few finite", 2, 300, 10, {0}, true, 4},
    };
    for (const auto& c : cases) run(c);
    if (failures) {
        std::printf("%d mismatches\n", failures);
        return 1;
    }
    std::printf("all normalisers and top-k lists match\n");
    return 0;
}
