// The CUDA side of dropout.rs: y = x · (keep ? scale : 0) from a one-byte keep mask, for the
// forward (x) and the backward (the incoming gradient), in f32 and bf16 (maths in f32).

#include <stdint.h>
#include <cuda_bf16.h>

extern "C" __global__ void rdrop_dropout_f32(const float* x, const uint8_t* keep, float* y,
                                             unsigned long long n, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        y[i] = x[i] * (keep[i] ? scale : 0.0f);
    }
}

extern "C" __global__ void rdrop_dropout_bf16(const __nv_bfloat16* x, const uint8_t* keep,
                                              __nv_bfloat16* y, unsigned long long n, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        y[i] = __float2bfloat16(__bfloat162float(x[i]) * (keep[i] ? scale : 0.0f));
    }
}
