// The CUDA side of top_k.rs: per row of next-token logits, the log-normaliser after banning up to
// two tokens and the k best (value, token) pairs, one block per row, so a search step copies
// 1 + 2k floats per row to the host instead of the vocabulary.
//
// Order: larger value first, then lower token (torch.topk's and argmax's tie rule); banned tokens
// are -inf and fill the list, lowest first, when fewer than k are finite. NaN never enters it.

#include <stdint.h>

#include "../../../kernels/cuda/block_reduce.cuh"

// Largest k: twice the largest beam the search runs on the device (8).
#define MAX_K 16

__device__ inline bool ranks_before(float av, uint32_t ai, float bv, uint32_t bi) {
    return av > bv || (av == bv && ai < bi);
}

// Puts (v, i) into the list `lv`/`li` of k entries, best first, if it ranks within it.
__device__ inline void insert(float* lv, uint32_t* li, int k, float v, uint32_t i) {
    if (!ranks_before(v, i, lv[k - 1], li[k - 1])) return;
    int p = k - 1;
    while (p > 0 && ranks_before(v, i, lv[p - 1], li[p - 1])) {
        lv[p] = lv[p - 1];
        li[p] = li[p - 1];
        --p;
    }
    lv[p] = v;
    li[p] = i;
}

// logits [rows, v] -> out [rows, 1 + 2k]: the log-normaliser (over the logits after the bans with
// `renormalize`, before them without; +inf when every token is -inf), the k values (banned ones
// -inf) and their tokens as floats (exact below 2^24).
extern "C" __global__ void rdrop_masked_top_k_f32(const float* logits, float* out, int rows, int v,
                                                  int k, uint32_t ban0, uint32_t ban1,
                                                  int n_banned, int renormalize) {
    __shared__ double shared[WARPS];
    __shared__ float sv[THREADS * MAX_K];
    __shared__ uint32_t si[THREADS * MAX_K];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + (size_t)r * v;
    const unsigned tid = threadIdx.x;
    auto value = [&](int j) {
        const bool banned = (n_banned > 0 && (uint32_t)j == ban0) || (n_banned > 1 && (uint32_t)j == ban1);
        return banned ? -INFINITY : x[j];
    };

    float m = -INFINITY;
    for (int j = tid; j < v; j += THREADS) m = fmaxf(m, renormalize ? value(j) : x[j]);
    m = block_max(m, shared);
    double z = 0.0;
    if (m != -INFINITY) {
        for (int j = tid; j < v; j += THREADS) z += (double)expf((renormalize ? value(j) : x[j]) - m);
    }
    z = block_sum(z, shared);
    const float norm = m == -INFINITY ? INFINITY : m + (float)log(z);

    float lv[MAX_K];
    uint32_t li[MAX_K];
    for (int q = 0; q < k; ++q) lv[q] = -INFINITY, li[q] = 0xffffffffu;
    for (int j = tid; j < v; j += THREADS) insert(lv, li, k, value(j), (uint32_t)j);
    for (int q = 0; q < k; ++q) sv[tid * MAX_K + q] = lv[q], si[tid * MAX_K + q] = li[q];

    // Tree merge: at each level thread t merges its list with that of t + s.
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        __syncthreads();
        if (tid < (unsigned)s) {
            const float* av = &sv[tid * MAX_K];
            const uint32_t* ai = &si[tid * MAX_K];
            const float* bv = &sv[(tid + s) * MAX_K];
            const uint32_t* bi = &si[(tid + s) * MAX_K];
            int a = 0, b = 0;
            for (int q = 0; q < k; ++q) {
                if (ranks_before(av[a], ai[a], bv[b], bi[b])) {
                    lv[q] = av[a], li[q] = ai[a], ++a;
                } else {
                    lv[q] = bv[b], li[q] = bi[b], ++b;
                }
            }
        }
        __syncthreads();
        if (tid < (unsigned)s) {
            for (int q = 0; q < k; ++q) sv[tid * MAX_K + q] = lv[q], si[tid * MAX_K + q] = li[q];
        }
    }
    if (tid == 0) {
        float* o = out + (size_t)r * (1 + 2 * k);
        o[0] = norm;
        for (int q = 0; q < k; ++q) {
            o[1 + q] = sv[q];
            o[1 + k + q] = (float)si[q];
        }
    }
}
