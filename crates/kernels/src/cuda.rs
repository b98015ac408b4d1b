//! CUDA plumbing for the fused ops (feature `cuda`): an input's contiguous device view, the
//! one-block-per-row launch the row kernels share and the grid-stride launch of elementwise ones.
//!
//! Each op's kernels live in a `.cu` file beside its Rust file, compiled to PTX by that crate's
//! build script with the CUDA build's nvcc and loaded with `CudaDevice::get_or_load_custom_func`
//! (once per device, then cached by candle); the driver JIT-compiles the PTX at the first launch.

use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, Layout};

use crate::error::{Error, Result};

/// Threads per block of the row kernels: a row of a 58k vocabulary is ~230 elements per thread.
pub const ROW_THREADS: u32 = 256;

/// A custom op's CUDA input `s` (layout `l`) as its contiguous view of `T`; `op` and `what` name
/// it in the error.
pub fn contiguous_view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &'static str,
    what: &'static str,
) -> Result<CudaView<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => Err(Error::NotContiguous { op, what }),
    }
}

/// One block of [`ROW_THREADS`] per row, `rows` rows.
pub fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride launch over `n` elements: blocks of 256 threads, at most 8192 of them (each
/// thread then loops), as the elementwise kernels expect.
pub fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 8192) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
