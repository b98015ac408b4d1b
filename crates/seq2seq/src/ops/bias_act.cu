// The CUDA side of bias_act.rs: y = act(x + b) over rows of width d, and its backward
// dz = dy · act'(x + b) with z recomputed, in f32 and bf16 (maths in f32). `act`: 0 silu, 1 gelu
// (erf), 2 gelu (tanh approximation), 3 relu, as `Act::code` numbers them.

#include <stdint.h>
#include <math.h>

__device__ inline float rdrop_act(float z, int act) {
    switch (act) {
        case 0:
            return z / (1.0f + expf(-z));
        case 1:
            return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f));
        case 2:
            return 0.5f * z * (1.0f + tanhf(0.79788456080286536f * z * (1.0f + 0.044715f * z * z)));
        default:
            return z > 0.0f ? z : 0.0f;
    }
}

__device__ inline float rdrop_act_grad(float z, int act) {
    switch (act) {
        case 0: {
            const float s = 1.0f / (1.0f + expf(-z));
            return s * (1.0f + z * (1.0f - s));
        }
        case 1:
            // Φ(z) + z·φ(z)
            return 0.5f * (1.0f + erff(z * 0.70710678118654752f)) +
                   z * 0.39894228040143268f * expf(-0.5f * z * z);
        case 2: {
            const float t = tanhf(0.79788456080286536f * z * (1.0f + 0.044715f * z * z));
            return 0.5f * (1.0f + t) +
                   0.5f * z * (1.0f - t * t) * 0.79788456080286536f * (1.0f + 3.0f * 0.044715f * z * z);
        }
        default:
            return z > 0.0f ? 1.0f : 0.0f;
    }
}

extern "C" __global__ void rdrop_bias_act_f32(const float* x, const float* b, float* y,
                                              unsigned long long n, unsigned int d, int act) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        y[i] = rdrop_act(x[i] + b[i % d], act);
    }
}

extern "C" __global__ void rdrop_bias_act_grad_f32(const float* x, const float* b, const float* g,
                                                   float* dz, unsigned long long n, unsigned int d,
                                                   int act) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        dz[i] = g[i] * rdrop_act_grad(x[i] + b[i % d], act);
    }
}

// bf16 storage exists only on the device (the host emulator runs the f32 kernels).
#ifdef __CUDACC__
#include <cuda_bf16.h>

extern "C" __global__ void rdrop_bias_act_bf16(const __nv_bfloat16* x, const __nv_bfloat16* b,
                                               __nv_bfloat16* y, unsigned long long n,
                                               unsigned int d, int act) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float z = __bfloat162float(x[i]) + __bfloat162float(b[i % d]);
        y[i] = __float2bfloat16(rdrop_act(z, act));
    }
}

extern "C" __global__ void rdrop_bias_act_grad_bf16(const __nv_bfloat16* x,
                                                    const __nv_bfloat16* b,
                                                    const __nv_bfloat16* g, __nv_bfloat16* dz,
                                                    unsigned long long n, unsigned int d, int act) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float z = __bfloat162float(x[i]) + __bfloat162float(b[i % d]);
        dz[i] = __float2bfloat16(__bfloat162float(g[i]) * rdrop_act_grad(z, act));
    }
}
#endif
