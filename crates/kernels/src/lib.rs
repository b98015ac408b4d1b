//! CPU kernel plumbing shared by rdrop's fused candle ops (the model's layers, the R-Drop loss):
//! which tensors a kernel takes, borrowing their elements, the float types, and vector dispatch.
//!
//! Every fused op is a candle custom op whose CPU forward and backward sit in one file next to the
//! code that uses it (`rdrop-seq2seq`'s `ops`, `rdrop-loss`'s `fused`); this crate holds only what
//! they would otherwise each write again. Tensors it does not take (other devices, other dtypes)
//! go through composed candle ops, which are also the kernels' references in the tests.

#![deny(missing_docs)]

mod error;
mod float;
mod host;
mod simd;

pub use error::{Error, Result};
pub use float::Float;
pub use host::{available, contiguous, host_vec, row_width, rows_per_task, with_host_f32};

// For the macros: the candle they expand to is this crate's.
#[doc(hidden)]
pub use candle_core as __candle;
