// Block-wide reductions for the row kernels (one block of THREADS threads per row; every thread
// gets the result), shared by the .cu files of rdrop-loss and rdrop-seq2seq.
//
// `shared` holds one slot per warp. Reductions run in a fixed order, so a launch is deterministic.
#pragma once

// Threads per block: must equal rdrop_kernels::cuda::ROW_THREADS.
#define THREADS 256
#define WARPS (THREADS / 32)

// The block's sum.
__device__ double block_sum(double v, double* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();  // an earlier reduction has finished reading `shared`
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < WARPS; ++w) total += shared[w];
    return total;
}

// The block's max; NaN is ignored, as the CPU's `x > max` does (a NaN still poisons the sums).
__device__ float block_max(float v, double* shared) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = (double)v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < WARPS; ++w) m = fmaxf(m, (float)shared[w]);
    return m;
}
