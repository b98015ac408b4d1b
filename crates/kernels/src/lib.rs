//! Kernel plumbing shared by rdrop's fused candle ops (the model's layers, the R-Drop loss): which
//! tensors a kernel takes, borrowing their elements, the float types, vector dispatch, CUDA launches.
//!
//! Every fused op is a candle custom op whose CPU forward and backward sit in one file next to the
//! code that uses it (`rdrop-seq2seq`'s `ops`, `rdrop-loss`'s `fused`); this crate holds only what
//! they would otherwise each write again. Tensors it does not take (other devices, other dtypes)
//! go through composed candle ops, which are also the kernels' references in the tests. With the
//! `cuda` feature, ops whose CUDA kernels exist take f32 CUDA tensors too ([`available_cuda`]).

#![deny(missing_docs)]

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod emulate;
mod error;
mod float;
mod host;
mod simd;

pub use error::{Error, Result};
pub use float::Float;
pub use host::{
    available, available_cuda, contiguous, cuda_kernels_for, host_vec, row_width, rows_per_task,
    with_host_f32,
};

// For the macros: the candle they expand to is this crate's.
#[doc(hidden)]
pub use candle_core as __candle;
