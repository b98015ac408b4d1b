// Runs CUDA C++ kernels on the host, for testing their logic on machines without a GPU: each block's
// threads are real threads, `__syncthreads` is a barrier, warp shuffles go through a block-wide
// exchange, and blocks run one after another (so `__shared__` can be a function-local static).
//
// Enough for the row kernels in this repository: one-dimensional blocks, shuffles called by every
// thread of the block at the same point (as warp-synchronous reductions do), f32/f64 maths from
// <cmath> (host `expf` may differ from the device's by an ulp). Not a general CUDA emulator.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __shared__ static

struct emu_dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;
inline std::barrier<>* emu_block_barrier = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

// Every thread of the block must call it; lanes exchange within their warp (mask < 32).
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static std::vector<T> slots(1024);
    slots[threadIdx.x] = v;
    __syncthreads();
    const T r = slots[threadIdx.x ^ lane_mask];
    __syncthreads();
    return r;
}

// kernel<<<grid, block>>>(): `kernel` is a callable taking no arguments (bind them in a lambda).
inline void emu_launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        std::barrier<> bar(block);
        emu_block_barrier = &bar;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([&, b, t] {
                blockIdx = {b, 0, 0};
                threadIdx = {t, 0, 0};
                kernel();
            });
        }
        for (auto& th : threads) th.join();
    }
}
