// The CUDA side of residual_layer_norm.rs: y = LayerNorm(x + h) · w + b over rows of width d, one
// block per row; the sum is formed in f32 and its moments in f64. f32 and bf16 storage (maths in
// f32/f64: a bf16 sum is not rounded to bf16 here, while the backward, the layer norm's on x + h,
// forms it in bf16; the difference is far below bf16's tolerance).

#include <stdint.h>
#include <math.h>

#include "../../../kernels/cuda/block_reduce.cuh"

__device__ inline float rdrop_ln_load(const float* p, size_t i) { return p[i]; }
__device__ inline void rdrop_ln_store(float* p, size_t i, float v) { p[i] = v; }

template <class T>
__device__ void rdrop_residual_layer_norm(const T* x, const T* h, const T* w, const T* b, T* y,
                                          unsigned int d, float eps) {
    __shared__ double shared[WARPS];
    const size_t base = (size_t)blockIdx.x * d;
    double s1 = 0.0;
    for (unsigned int j = threadIdx.x; j < d; j += THREADS)
        s1 += (double)(rdrop_ln_load(x, base + j) + rdrop_ln_load(h, base + j));
    const double mean = block_sum(s1, shared) / d;
    double s2 = 0.0;
    for (unsigned int j = threadIdx.x; j < d; j += THREADS) {
        const double c = (double)(rdrop_ln_load(x, base + j) + rdrop_ln_load(h, base + j)) - mean;
        s2 += c * c;
    }
    const double rstd = 1.0 / sqrt(block_sum(s2, shared) / d + (double)eps);
    for (unsigned int j = threadIdx.x; j < d; j += THREADS) {
        const double c = (double)(rdrop_ln_load(x, base + j) + rdrop_ln_load(h, base + j)) - mean;
        rdrop_ln_store(y, base + j,
                       (float)(c * rstd * rdrop_ln_load(w, j) + rdrop_ln_load(b, j)));
    }
}

extern "C" __global__ void rdrop_residual_layer_norm_f32(const float* x, const float* h,
                                                         const float* w, const float* b, float* y,
                                                         unsigned int d, float eps) {
    rdrop_residual_layer_norm(x, h, w, b, y, d, eps);
}

// bf16 storage exists only on the device (the host emulator runs the f32 kernel).
#ifdef __CUDACC__
#include <cuda_bf16.h>

__device__ inline float rdrop_ln_load(const __nv_bfloat16* p, size_t i) {
    return __bfloat162float(p[i]);
}
__device__ inline void rdrop_ln_store(__nv_bfloat16* p, size_t i, float v) {
    p[i] = __float2bfloat16(v);
}

extern "C" __global__ void rdrop_residual_layer_norm_bf16(const __nv_bfloat16* x,
                                                          const __nv_bfloat16* h,
                                                          const __nv_bfloat16* w,
                                                          const __nv_bfloat16* b,
                                                          __nv_bfloat16* y, unsigned int d,
                                                          float eps) {
    rdrop_residual_layer_norm(x, h, w, b, y, d, eps);
}
#endif
