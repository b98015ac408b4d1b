//! `softmax_last_dim` with a backward: one fused kernel forward (a row pass on the CPU, candle's
//! own softmax kernel on CUDA) and `y ⊙ (g − Σ g⊙y)` in tensor ops back, so only `y` is kept.
//!
//! candle's `softmax_last_dim` has no backward, so a trainable model had to compose softmax from
//! five ops, each keeping its output alive until the backward pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;
use rdrop_kernels::{available, available_cuda, contiguous, float_dispatch, rows_per_task, Float};

const OP: &str = "softmax";

/// Softmax over the last dimension, differentiable. CPU f32/f64 and (built with `cuda`) CUDA f32
/// take the fused forward; anything else composes it from candle ops.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if available(x) || available_cuda(x) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

struct Softmax;

impl Softmax {
    fn forward<T: Float>(x: &[T], d: usize) -> Vec<T> {
        let mut out = vec![T::zero(); x.len()];
        let per = rows_per_task(x.len() / d.max(1));
        out.par_chunks_mut(d * per)
            .zip(x.par_chunks(d * per))
            .for_each(|(o, x)| {
                for (orow, xrow) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let max = xrow
                        .iter()
                        .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
                    let mut sum = 0f64;
                    for (slot, &v) in orow.iter_mut().zip(xrow) {
                        *slot = (v - max).exp();
                        sum += slot.to_f64();
                    }
                    let inv = T::from_f64(1.0 / sum);
                    for slot in orow.iter_mut() {
                        *slot *= inv;
                    }
                }
            });
        out
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "rdrop-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l.shape().dims().last().copied().unwrap_or(1);
        let out = float_dispatch!(OP, s, |T| Softmax::forward::<T>(
            contiguous(s, l, OP, "x")?,
            d
        ));
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{kernels, WrapErr};
        let dev = &s.device;
        let x = rdrop_kernels::cuda::contiguous_view::<f32>(s, l, OP, "x")?;
        let el = l.shape().elem_count();
        let d = l.shape().dims().last().copied().unwrap_or(1);
        let out = dev.alloc_zeros::<f32>(el.max(1))?;
        if el > 0 {
            // candle-nn's launch of its kernel: one warp per row (`softmax_last_dim`).
            let cfg = LaunchConfig {
                grid_dim: ((el / d) as u32, 1, 1),
                block_dim: (1, 32, 1),
                shared_mem_bytes: 0,
            };
            let func = dev.get_or_load_func("softmax_f32", &kernels::REDUCE)?;
            let mut b = func.builder();
            b.arg(&x);
            b.arg(&out);
            candle_core::builder_arg!(b, d as i32);
            // SAFETY: the kernel reads and writes `el / d` rows of `d` values.
            unsafe { b.launch(cfg) }.w()?;
        }
        let out = candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone());
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let gy = (g * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * g.broadcast_sub(&gy)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::{close, grads, random};

    #[test]
    fn softmax_matches_composed_ops() {
        // Wide logits (the max shift matters) and a row width that is not a power of two.
        let x = random(&[3, 4, 37], 5);
        let x = candle_core::Var::from_tensor(&(x.as_tensor() * 10.0).unwrap()).unwrap();
        let fused = softmax_last_dim(&x).unwrap();
        let composed = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        close("value", &fused, &composed);
        close(
            "grad",
            &grads(&fused, &[&x])[0],
            &grads(&composed, &[&x])[0],
        );
    }
}
