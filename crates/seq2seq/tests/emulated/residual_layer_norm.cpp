// The post-norm blocks' residual + layer norm kernel (src/ops/residual_layer_norm.cu) on the host
// emulator, f32, against the definition written out here in f64: s = x + h (rounded to f32, as
// the model's tensors are), mean and biased variance over the row, (s − mean)/√(var + eps)·w + b.
// Exit status 1 on any mismatch. Built and run by tests/cuda_emulated.rs.
#include "../../../kernels/cuda/emulate.hpp"
#include "../../src/ops/residual_layer_norm.cu"

#include <cstdio>
#include <random>

namespace {

int failures = 0;

void run(int rows, int d) {
    std::printf("%d rows of %d\n", rows, d);
    std::mt19937_64 rng(3 + d);
    std::uniform_real_distribution<float> u(-3.0f, 3.0f);
    const size_t n = (size_t)rows * d;
    std::vector<float> x(n), h(n), w(d), b(d), y(n, 0.0f);
    // An offset row mean, as residual streams have, so the centring matters.
    for (auto& e : x) e = u(rng) + 5.0f;
    for (auto& e : h) e = u(rng);
    for (auto& e : w) e = u(rng);
    for (auto& e : b) e = u(rng);
    const float eps = 1e-5f;
    emu_launch(rows, THREADS, [&] {
        rdrop_residual_layer_norm_f32(x.data(), h.data(), w.data(), b.data(), y.data(), d, eps);
    });
    for (int r = 0; r < rows; ++r) {
        std::vector<double> s(d);
        double mean = 0.0, var = 0.0;
        for (int j = 0; j < d; ++j) {
            s[j] = (double)(x[(size_t)r * d + j] + h[(size_t)r * d + j]);
            mean += s[j];
        }
        mean /= d;
        for (int j = 0; j < d; ++j) var += (s[j] - mean) * (s[j] - mean);
        var /= d;
        for (int j = 0; j < d; ++j) {
            const double want = (s[j] - mean) / std::sqrt(var + (double)eps) * w[j] + b[j];
            const double got = y[(size_t)r * d + j];
            if (!(std::fabs(got - want) <= 1e-6 * (1.0 + std::fabs(want)))) {
                if (++failures <= 20) std::printf("  row %d, %d: %.9g vs %.9g\n", r, j, got, want);
            }
        }
    }
}

}  // namespace

int main() {
    // Widths below the 256 threads, a model's, and not a multiple of them.
    run(3, 31);
    run(2, 512);
    run(2, 777);
    if (failures) {
        std::printf("%d mismatches\n", failures);
        return 1;
    }
    std::printf("all rows match\n");
    return 0;
}
