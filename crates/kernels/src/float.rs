//! The float types the CPU kernels run in: f32 and f64, with candle's conversions (`WithDType`)
//! and the maths of `num_traits::Float` (exp, infinities).

use candle_core::WithDType;

/// f32 or f64: what the fused CPU kernels compute in (row sums are kept in f64 where it matters).
pub trait Float: WithDType + num_traits::Float {}

impl Float for f32 {}
impl Float for f64 {}
