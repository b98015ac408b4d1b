//! `residual_layer_norm`: the post-norm blocks' `LayerNorm(x + h)` in one pass forward (CPU kernel
//! and, built with `cuda`, a CUDA one in f32 and bf16); the backward is [`super::layer_norm`]'s.
//!
//! The composed `layer_norm(x + h)` keeps the sum for the backward, one more activation-sized
//! tensor per block; here the backward forms the sum again, for as long as it needs it.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use rdrop_kernels::{available, contiguous, cuda_kernels_for, float_dispatch, rows_per_task};

use super::layer_norm::{self, moments};

const OP: &str = "residual layer norm";

/// `layer_norm(x + h, weight, bias, eps)` for `x` and `h` of one shape `[..., D]` and `weight`,
/// `bias` `[D]`.
pub fn residual_layer_norm(
    x: &Tensor,
    h: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let fused = available(x) || (cuda_kernels_for(x) && matches!(dtype, DType::F32 | DType::BF16));
    let same = [h, weight, bias].iter().all(|t| t.dtype() == dtype);
    if fused && same && h.shape() == x.shape() {
        // Weight and bias as one `[2, D]` input: a custom op takes at most three.
        let params = Tensor::stack(&[weight, bias], 0)?;
        x.contiguous()?
            .apply_op3(&h.contiguous()?, &params, ResidualLayerNorm { eps })
    } else {
        layer_norm::layer_norm(&(x + h)?, weight, bias, eps)
    }
}

struct ResidualLayerNorm {
    eps: f64,
}

/// Width of the rows of `x` (layout `xl`), checked against `h`'s layout and the `[2, D]` parameters.
fn width(xl: &Layout, hl: &Layout, pl: &Layout) -> candle_core::Result<usize> {
    let d = xl.shape().dims().last().copied().unwrap_or(1);
    if hl.shape() != xl.shape() || pl.shape().dims() != [2, d] {
        candle_core::bail!(
            "{OP}: x {:?}, h {:?}, weight and bias {:?}",
            xl.shape(),
            hl.shape(),
            pl.shape()
        )
    }
    Ok(d)
}

impl ResidualLayerNorm {
    fn forward<T: WithDType>(&self, x: &[T], h: &[T], params: &[T], d: usize) -> Vec<T> {
        let (w, b) = params.split_at(d);
        let mut out = vec![T::zero(); x.len()];
        let chunk = d * rows_per_task(x.len() / d.max(1));
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(h.par_chunks(chunk)))
            .for_each(|(o, (x, h))| {
                let mut sum = vec![T::zero(); d];
                for ((orow, xrow), hrow) in o.chunks_mut(d).zip(x.chunks(d)).zip(h.chunks(d)) {
                    // The sum in T, as `x + h` would round it.
                    for ((s, &x), &h) in sum.iter_mut().zip(xrow).zip(hrow) {
                        *s = x + h;
                    }
                    let (mean, rstd) = moments(&sum, self.eps);
                    for j in 0..d {
                        let xh = (sum[j].to_f64() - mean) * rstd;
                        orow[j] = T::from_f64(xh * w[j].to_f64() + b[j].to_f64());
                    }
                }
            });
        out
    }
}

impl CustomOp3 for ResidualLayerNorm {
    fn name(&self) -> &'static str {
        "rdrop-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        hs: &CpuStorage,
        hl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = width(xl, hl, pl)?;
        let out = float_dispatch!(OP, xs, |T| self.forward::<T>(
            contiguous(xs, xl, OP, "x")?,
            contiguous(hs, hl, OP, "h")?,
            contiguous(ps, pl, OP, "weight and bias")?,
            d
        ));
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        hs: &candle_core::CudaStorage,
        hl: &Layout,
        ps: &candle_core::CudaStorage,
        pl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{
            DeviceRepr, PushKernelArg, ValidAsZeroBits,
        };
        use candle_core::cuda_backend::{CudaDType, WrapErr};
        use candle_core::CudaStorage;
        use rdrop_kernels::cuda::{contiguous_view, per_row};

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/residual_layer_norm.ptx"));
        fn launch<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
            kernel: &str,
            eps: f64,
            (xs, xl): (&CudaStorage, &Layout),
            (hs, hl): (&CudaStorage, &Layout),
            (ps, pl): (&CudaStorage, &Layout),
        ) -> candle_core::Result<CudaStorage> {
            let d = width(xl, hl, pl)?;
            let dev = &xs.device;
            let x = contiguous_view::<T>(xs, xl, OP, "x")?;
            let h = contiguous_view::<T>(hs, hl, OP, "h")?;
            let p = contiguous_view::<T>(ps, pl, OP, "weight and bias")?;
            let (w, b) = (p.slice(0..d), p.slice(d..2 * d));
            let n = xl.shape().elem_count();
            let out = dev.alloc_zeros::<T>(n.max(1))?;
            if n > 0 {
                let func =
                    dev.get_or_load_custom_func(kernel, "rdrop_seq2seq_residual_layer_norm", PTX)?;
                let mut l = func.builder();
                l.arg(&x);
                l.arg(&h);
                l.arg(&w);
                l.arg(&b);
                l.arg(&out);
                candle_core::builder_arg!(l, d as u32, eps as f32);
                // SAFETY: one block per row of `d` values of `x`, `h` and `out`; `w`, `b` hold `d`.
                unsafe { l.launch(per_row(n / d)) }.w()?;
            }
            Ok(T::wrap_cuda_slice(out, dev.clone()))
        }

        let args = ((xs, xl), (hs, hl), (ps, pl));
        let out = match xs.dtype() {
            DType::F32 => launch::<f32>(
                "rdrop_residual_layer_norm_f32",
                self.eps,
                args.0,
                args.1,
                args.2,
            )?,
            DType::BF16 => launch::<half::bf16>(
                "rdrop_residual_layer_norm_bf16",
                self.eps,
                args.0,
                args.1,
                args.2,
            )?,
            dtype => candle_core::bail!("{OP}: no CUDA kernel for {dtype:?}"),
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        h: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let w = params.get(0)?;
        let (gs, gw, gb) = layer_norm::backward(&(x + h)?, &w, grad, self.eps)?;
        let gp = Tensor::stack(&[gw, gb], 0)?;
        Ok((Some(gs.clone()), Some(gs), Some(gp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::layer_norm_composed;
    use crate::ops::test_support::{close, grads, random};

    #[test]
    fn matches_layer_norm_of_the_sum() {
        let (x, h) = (random(&[3, 5, 16], 61), random(&[3, 5, 16], 62));
        let (w, b) = (random(&[16], 63), random(&[16], 64));
        let fused = residual_layer_norm(&x, &h, &w, &b, 1e-5).unwrap();
        let composed =
            layer_norm_composed(&(x.as_tensor() + h.as_tensor()).unwrap(), &w, &b, 1e-5).unwrap();
        close("value", &fused, &composed);
        let vars = [&x, &h, &w, &b];
        for (name, (a, c)) in ["x", "h", "weight", "bias"]
            .iter()
            .zip(grads(&fused, &vars).iter().zip(&grads(&composed, &vars)))
        {
            close(&format!("grad {name}"), a, c);
        }
    }

    /// As `x + h` would, a mismatched `h` is an error, not a broadcast.
    #[test]
    fn mismatched_shapes_are_an_error() {
        let (x, h) = (random(&[2, 4, 8], 71), random(&[1, 4, 8], 72));
        let (w, b) = (random(&[8], 73), random(&[8], 74));
        assert!(residual_layer_norm(&x, &h, &w, &b, 1e-5).is_err());
    }
}
