// The fused loss's CUDA kernels (src/fused.cu) on the host emulator, against a double-precision
// reference written from the definitions (log-softmax, label-smoothed CE, the two KLs) and central
// finite differences of that reference for the gradient. Exit status 1 on any mismatch.
// Built and run by tests/cuda_emulated.rs.
#include "../../../kernels/cuda/emulate.hpp"
#include "../../src/fused.cu"

#include <cstdio>
#include <random>

namespace {

int failures = 0;

void check(const char* what, int i, double got, double want, double tol) {
    if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
        if (++failures <= 20) std::printf("  %s[%d]: kernel %.8g vs reference %.8g\n", what, i, got, want);
    }
}

struct Case {
    const char* name;
    int n, v;
    bool pair;
    double eps, scale;
};

// Columns as fused.rs defines them, from log-probabilities computed directly in f64.
std::vector<double> reference(const std::vector<double>& x, const std::vector<uint32_t>& target,
                              const Case& c, uint32_t pad) {
    const int w = c.pair ? 8 : 3, v = c.v;
    const double off = c.eps / (v - 1), on = 1.0 - c.eps - off;
    auto log_probs = [&](int row, double& lse) {
        double m = -INFINITY, z = 0.0;
        for (int j = 0; j < v; ++j) m = std::max(m, x[(size_t)row * v + j]);
        for (int j = 0; j < v; ++j) z += std::exp(x[(size_t)row * v + j] - m);
        lse = m + std::log(z);
        std::vector<double> lp(v);
        for (int j = 0; j < v; ++j) lp[j] = x[(size_t)row * v + j] - lse;
        return lp;
    };
    auto ce = [&](const std::vector<double>& lp, uint32_t t) {
        double all = 0.0;
        for (double l : lp) all += l;
        return -(on * lp[t] + off * all);
    };
    std::vector<double> out((size_t)c.n * w, 0.0);
    for (int i = 0; i < c.n; ++i) {
        const uint32_t t = target[i];
        if (t == pad) continue;
        double lse1, lse2;
        const auto lp1 = log_probs(i, lse1);
        double* o = &out[(size_t)i * w];
        if (!c.pair) {
            o[0] = ce(lp1, t), o[1] = -lp1[t], o[2] = lse1;
            continue;
        }
        const auto lp2 = log_probs(i + c.n, lse2);
        double kl12 = 0.0, kl21 = 0.0;
        for (int j = 0; j < v; ++j) {
            kl12 += std::exp(lp1[j]) * (lp1[j] - lp2[j]);
            kl21 += std::exp(lp2[j]) * (lp2[j] - lp1[j]);
        }
        const double cols[8] = {ce(lp1, t), -lp1[t], ce(lp2, t), -lp2[t], kl12, kl21, lse1, lse2};
        for (int k = 0; k < 8; ++k) o[k] = cols[k];
    }
    return out;
}

void run(const Case& c) {
    std::printf("%s: n %d, V %d, pair %d, eps %.2f\n", c.name, c.n, c.v, (int)c.pair, c.eps);
    const int rows = c.pair ? 2 * c.n : c.n, w = c.pair ? 8 : 3;
    const uint32_t pad = 1;
    std::mt19937_64 rng(7 + c.v);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    std::vector<float> xf((size_t)rows * c.v);
    for (auto& e : xf) e = (float)(c.scale * u(rng));
    std::vector<double> x(xf.begin(), xf.end());  // the reference sees the same f32 values
    std::vector<uint32_t> target(c.n);
    for (int i = 0; i < c.n; ++i) target[i] = (uint32_t)((i * 37 + 5) % c.v);
    target[1] = pad;  // one padding row, left at zero
    if (target[0] == pad) target[0] = 2;

    const double off = c.eps / (c.v - 1), on = 1.0 - c.eps - off;
    std::vector<float> stats((size_t)c.n * w, 0.0f);
    emu_launch(c.n, THREADS, [&] {
        rdrop_token_stats_f32(xf.data(), target.data(), stats.data(), c.n, c.v, c.pair, pad, on, off);
    });
    const auto want = reference(x, target, c, pad);
    for (size_t k = 0; k < want.size(); ++k) check("stats", (int)k, stats[k], want[k], 1e-5);

    // Gradient of L = Σ g·stats for random g, against central differences of the reference.
    std::vector<double> g((size_t)c.n * w);
    for (auto& e : g) e = u(rng);
    std::vector<float> both((size_t)c.n * 2 * w);
    for (int i = 0; i < c.n; ++i)
        for (int k = 0; k < w; ++k) {
            both[(size_t)i * 2 * w + k] = stats[(size_t)i * w + k];
            both[(size_t)i * 2 * w + w + k] = (float)g[(size_t)i * w + k];
        }
    std::vector<float> grad((size_t)rows * c.v, 0.0f);
    emu_launch(c.n, THREADS, [&] {
        rdrop_token_stats_grad_f32(xf.data(), target.data(), both.data(), grad.data(), c.n, c.v,
                                   c.pair, pad, on, off);
    });
    auto objective = [&](const std::vector<double>& xs) {
        const auto s = reference(xs, target, c, pad);
        double l = 0.0;
        for (size_t k = 0; k < s.size(); ++k) l += (double)(float)g[k] * s[k];
        return l;
    };
    const double h = 1e-5;
    std::vector<double> xp = x;
    for (size_t k = 0; k < xp.size(); ++k) {
        const double keep = xp[k];
        xp[k] = keep + h;
        const double up = objective(xp);
        xp[k] = keep - h;
        const double down = objective(xp);
        xp[k] = keep;
        check("grad", (int)k, grad[k], (up - down) / (2 * h), 1e-4);
    }
}

}  // namespace

int main() {
    // V above, below and not a multiple of the block's 256 threads; logits spread wide enough that
    // the max shift matters; with and without label smoothing.
    const Case cases[] = {
        {"pair", 4, 300, true, 0.1, 6.0},
        {"pair, V < threads, no smoothing", 3, 57, true, 0.0, 3.0},
        {"single copy", 3, 1000, false, 0.1, 8.0},
    };
    for (const auto& c : cases) run(c);
    if (failures) {
        std::printf("%d mismatches\n", failures);
        return 1;
    }
    std::printf("all statistics and gradients match\n");
    return 0;
}
