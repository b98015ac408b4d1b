// The CUDA side of fused.rs: per-token CE, NLL and KL statistics of a row of logits, and their
// gradient, one block per target row. Same columns, formulas and rounding points as the CPU code.
//
// Rows whose target is `pad` are skipped: the Rust side hands in zeroed outputs. Reductions run in
// f64 in a fixed order, so a launch is deterministic; element maths is f32, as on the CPU.

#include <stdint.h>

#include "../../kernels/cuda/block_reduce.cuh"

struct RowSums {
    float max;
    double lse;    // log Σ exp(x)
    double total;  // Σ x
    double z;      // Σ exp(x − max)
};

__device__ RowSums row_sums(const float* x, int v, double* shared) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < v; j += THREADS) m = fmaxf(m, x[j]);
    RowSums r;
    r.max = block_max(m, shared);
    double z = 0.0, total = 0.0;
    for (int j = threadIdx.x; j < v; j += THREADS) {
        z += (double)expf(x[j] - r.max);
        total += (double)x[j];
    }
    r.z = block_sum(z, shared);
    r.total = block_sum(total, shared);
    r.lse = (double)r.max + log(r.z);
    return r;
}

// logits [R, V] (R = n, or 2n for a pair: row i of copy 1 pairs with row i + n), target [n] ->
// out [n, 3] (CE, NLL, lse) or [n, 8] (CE1, NLL1, CE2, NLL2, KL12, KL21, lse1, lse2).
extern "C" __global__ void rdrop_token_stats_f32(const float* logits, const uint32_t* target,
                                                 float* out, int n, int v, int pair, uint32_t pad,
                                                 double on, double off) {
    __shared__ double shared[WARPS];
    const int i = blockIdx.x;
    if (i >= n || target[i] == pad) return;
    const int t = (int)target[i];
    const float* x1 = logits + (size_t)i * v;
    const RowSums a = row_sums(x1, v, shared);
    const double nll1 = a.lse - (double)x1[t];
    // Σ_v −log p_v = V·lse − Σ_v x_v.
    const double ce1 = on * nll1 + off * ((double)v * a.lse - a.total);
    if (!pair) {
        if (threadIdx.x == 0) {
            float* o = out + (size_t)i * 3;
            o[0] = (float)ce1;
            o[1] = (float)nll1;
            o[2] = (float)a.lse;
        }
        return;
    }
    const float* x2 = logits + (size_t)(i + n) * v;
    const RowSums b = row_sums(x2, v, shared);
    const double nll2 = b.lse - (double)x2[t];
    const double ce2 = on * nll2 + off * ((double)v * b.lse - b.total);
    // d = log p1 − log p2 = (x1 − x2) − (lse1 − lse2); p = exp(x − max) / z.
    const float shift = (float)(a.lse - b.lse);
    double k12 = 0.0, k21 = 0.0;
    for (int j = threadIdx.x; j < v; j += THREADS) {
        const float d = x1[j] - x2[j] - shift;
        k12 += (double)expf(x1[j] - a.max) * (double)d;
        k21 -= (double)expf(x2[j] - b.max) * (double)d;
    }
    k12 = block_sum(k12, shared) / a.z;
    k21 = block_sum(k21, shared) / b.z;
    if (threadIdx.x == 0) {
        float* o = out + (size_t)i * 8;
        o[0] = (float)ce1;
        o[1] = (float)nll1;
        o[2] = (float)ce2;
        o[3] = (float)nll2;
        o[4] = (float)k12;
        o[5] = (float)k21;
        o[6] = (float)a.lse;
        o[7] = (float)b.lse;
    }
}

// Gradient of Σ_columns grad·stat with respect to the logits. `both` is [n, 2w]: the forward's
// statistics, then the incoming gradient of each column. out [R, V], pad rows left as zero.
extern "C" __global__ void rdrop_token_stats_grad_f32(const float* logits, const uint32_t* target,
                                                      const float* both, float* out, int n, int v,
                                                      int pair, uint32_t pad, double on,
                                                      double off) {
    const int i = blockIdx.x;
    if (i >= n || target[i] == pad) return;
    const int t = (int)target[i];
    const int w = pair ? 8 : 3;
    const float* s = both + (size_t)i * 2 * w;
    const float* g = s + w;
    if (!pair) {
        // ∂CE/∂x = p − (on·e_t + off), ∂NLL/∂x = p − e_t, ∂lse/∂x = p.
        const float gp = (float)((double)g[0] + (double)g[1] + (double)g[2]);
        const float c = (float)((double)g[0] * off);
        const double gold = (double)g[0] * on + (double)g[1];
        const float lse = s[2];
        const float* x = logits + (size_t)i * v;
        float* o = out + (size_t)i * v;
        for (int j = threadIdx.x; j < v; j += THREADS) {
            const float val = gp * expf(x[j] - lse) - c;
            o[j] = j == t ? (float)((double)val - gold) : val;
        }
        return;
    }
    const float gp1 = (float)((double)g[0] + (double)g[1] + (double)g[6]);
    const float gp2 = (float)((double)g[2] + (double)g[3] + (double)g[7]);
    const float c1 = (float)((double)g[0] * off), c2 = (float)((double)g[2] * off);
    const double gold1 = (double)g[0] * on + (double)g[1];
    const double gold2 = (double)g[2] * on + (double)g[3];
    const float g12 = g[4], g21 = g[5], kl12 = s[4], kl21 = s[5], lse1 = s[6], lse2 = s[7];
    const float* x1 = logits + (size_t)i * v;
    const float* x2 = logits + (size_t)(i + n) * v;
    float* o1 = out + (size_t)i * v;
    float* o2 = out + (size_t)(i + n) * v;
    for (int j = threadIdx.x; j < v; j += THREADS) {
        const float lp1 = x1[j] - lse1, lp2 = x2[j] - lse2;
        const float p1 = expf(lp1), p2 = expf(lp2);
        const float d = lp1 - lp2;
        // ∂KL12/∂x1 = p1(d − KL12), ∂KL12/∂x2 = p2 − p1;
        // ∂KL21/∂x1 = p1 − p2,       ∂KL21/∂x2 = p2(−d − KL21).
        const float v1 = gp1 * p1 - c1 + g12 * p1 * (d - kl12) + g21 * (p1 - p2);
        const float v2 = gp2 * p2 - c2 + g12 * (p2 - p1) + g21 * p2 * (-d - kl21);
        o1[j] = j == t ? (float)((double)v1 - gold1) : v1;
        o2[j] = j == t ? (float)((double)v2 - gold2) : v2;
    }
}
