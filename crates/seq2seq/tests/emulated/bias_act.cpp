// The feed-forward's bias + activation kernels (src/ops/bias_act.cu) on the host emulator, f32,
// against the definitions written out here in f64: silu z·σ(z), gelu z·Φ(z), its tanh
// approximation, relu; the backward against central differences of those definitions (the
// derivatives are not written out twice). Exit status 1 on any mismatch. Built and run by
// tests/cuda_emulated.rs.
#include "../../../kernels/cuda/emulate.hpp"
#include "../../src/ops/bias_act.cu"

#include <cstdio>
#include <random>

namespace {

int failures = 0;

double reference(double z, int act) {
    switch (act) {
        case 0: return z / (1.0 + std::exp(-z));
        case 1: return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
        case 2: {
            const double k = std::sqrt(2.0 / M_PI);
            return 0.5 * z * (1.0 + std::tanh(k * (z + 0.044715 * z * z * z)));
        }
        default: return z > 0.0 ? z : 0.0;
    }
}

// Within 2e-6 of `scale` (f32 rounding; 1 + tanh cancels near -1, so the gradient's error scales
// with the incoming gradient, not with the small result).
void check(const char* what, int act, size_t i, double got, double want, double scale) {
    if (!(std::fabs(got - want) <= 2e-6 * scale)) {
        if (++failures <= 20) std::printf("  act %d %s[%zu]: %.9g vs %.9g\n", act, what, i, got, want);
    }
}

void run(int rows, int d, int act, unsigned grid, unsigned block) {
    std::printf("act %d: %d x %d, grid %u x %u\n", act, rows, d, grid, block);
    std::mt19937_64 rng(7 + act * 131 + d);
    std::uniform_real_distribution<float> u(-6.0f, 6.0f);
    const size_t n = (size_t)rows * d;
    std::vector<float> x(n), b(d), g(n), y(n, 0.0f), dz(n, 0.0f);
    for (auto& e : x) e = u(rng);
    for (auto& e : b) e = u(rng) / 4.0f;
    for (auto& e : g) e = u(rng);
    emu_launch(grid, block, [&] { rdrop_bias_act_f32(x.data(), b.data(), y.data(), n, d, act); });
    emu_launch(grid, block, [&] {
        rdrop_bias_act_grad_f32(x.data(), b.data(), g.data(), dz.data(), n, d, act);
    });
    const double h = 1e-5;
    for (size_t i = 0; i < n; ++i) {
        const double z = (double)x[i] + (double)b[i % d];
        const double want = reference(z, act);
        check("value", act, i, y[i], want, 1.0 + std::fabs(want));
        // Relu's kink: no derivative within h of it.
        if (act == 3 && std::fabs(z) < 2 * h) continue;
        const double slope = (reference(z + h, act) - reference(z - h, act)) / (2 * h);
        check("gradient", act, i, dz[i], (double)g[i] * slope, std::fabs((double)g[i]) * (1.0 + std::fabs(slope)));
    }
}

}  // namespace

int main() {
    // Rows of a width that does not divide the block, more elements than the grid's threads (the
    // grid-stride loop), and fewer.
    for (int act = 0; act < 4; ++act) {
        run(7, 37, act, 2, 64);
        run(3, 5, act, 4, 32);
    }
    if (failures) {
        std::printf("%d mismatches\n", failures);
        return 1;
    }
    std::printf("all values and gradients match\n");
    return 0;
}
