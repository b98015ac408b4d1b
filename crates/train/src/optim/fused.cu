// The CUDA side of fused.rs: AdamW's three in-place passes, one thread per element (grid-stride),
// with the constants the Rust side rounds to f32 exactly as the composed update does.

extern "C" __global__ void rdrop_adamw_moment1_f32(float* m, const float* g, unsigned long long n,
                                                   float beta, float one_minus_beta) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        m[i] = __fadd_rn(__fmul_rn(m[i], beta), __fmul_rn(g[i], one_minus_beta));
    }
}

extern "C" __global__ void rdrop_adamw_moment2_f32(float* v, const float* g, unsigned long long n,
                                                   float beta, float one_minus_beta) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float g2 = __fmul_rn(g[i], g[i]);
        v[i] = __fadd_rn(__fmul_rn(v[i], beta), __fmul_rn(g2, one_minus_beta));
    }
}

// θ ← θ·decay − m / (√v·inv_bc2 + eps) · step; the _rn intrinsics keep nvcc from contracting the
// products into FMAs, so the GPU rounds like the CPU.
extern "C" __global__ void rdrop_adamw_param_f32(float* theta, const float* m, const float* v,
                                                 unsigned long long n, float decay, float inv_bc2,
                                                 float eps, float step) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float denom = __fadd_rn(__fmul_rn(sqrtf(v[i]), inv_bc2), eps);
        theta[i] = __fsub_rn(__fmul_rn(theta[i], decay), __fmul_rn(__fdiv_rn(m[i], denom), step));
    }
}
