//! `layer_norm` over the last dimension with weight and bias `[D]`: the CPU forward and a backward
//! whose parameter gradients are per-chunk sums; on CUDA (f32, bf16), candle's layer-norm kernel
//! forward and a backward in tensor ops. `layer_norm_composed` elsewhere and as the reference.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType, D};
use rayon::prelude::*;
use rdrop_kernels::{
    available, available_cuda, contiguous, cuda_kernels_for, float_dispatch, row_width,
    rows_per_task,
};

const OP: &str = "layer norm";

/// Layer normalisation over the last dimension, then `weight` and `bias` (`[D]` each).
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let cuda_bf16 = x.dtype() == DType::BF16 && cuda_kernels_for(x);
    if (available(x) || available_cuda(x) || cuda_bf16)
        && x.dtype() == weight.dtype()
        && x.dtype() == bias.dtype()
    {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNorm { eps },
        )
    } else {
        layer_norm_composed(x, weight, bias, eps)
    }
}

/// Layer norm from differentiable ops; statistics in f32 for half-precision input, as PyTorch's
/// kernels do.
pub fn layer_norm_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

struct LayerNorm {
    eps: f64,
}

/// Mean and 1/σ of a row, in f64.
pub(super) fn moments<T: WithDType>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|v| {
            let c = v.to_f64() - mean;
            c * c
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl LayerNorm {
    fn forward<T: WithDType>(&self, x: &[T], w: &[T], b: &[T], d: usize) -> Vec<T> {
        let mut out = vec![T::zero(); x.len()];
        let per = rows_per_task(x.len() / d.max(1));
        out.par_chunks_mut(d * per)
            .zip(x.par_chunks(d * per))
            .for_each(|(o, x)| {
                for (orow, xrow) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let (mean, rstd) = moments(xrow, self.eps);
                    for j in 0..d {
                        let xh = (xrow[j].to_f64() - mean) * rstd;
                        orow[j] = T::from_f64(xh * w[j].to_f64() + b[j].to_f64());
                    }
                }
            });
        out
    }

    /// `[gx; gw; gb]` packed as `rows + 2` rows of width `d`.
    fn backward<T: WithDType>(&self, x: &[T], w: &[T], g: &[T], d: usize) -> Vec<T> {
        let rows = x.len() / d.max(1);
        let mut out = vec![T::zero(); (rows + 2) * d];
        let (gx, params) = out.split_at_mut(rows * d);
        let per = rows_per_task(rows);
        let partials: Vec<(Vec<f64>, Vec<f64>)> = gx
            .par_chunks_mut(d * per)
            .zip(x.par_chunks(d * per).zip(g.par_chunks(d * per)))
            .map(|(gx, (x, g))| {
                let (mut gw, mut gb) = (vec![0f64; d], vec![0f64; d]);
                let mut xh = vec![0f64; d];
                for ((gxrow, xrow), grow) in gx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                    let (mean, rstd) = moments(xrow, self.eps);
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for j in 0..d {
                        xh[j] = (xrow[j].to_f64() - mean) * rstd;
                        let gv = grow[j].to_f64();
                        gw[j] += gv * xh[j];
                        gb[j] += gv;
                        let gy = gv * w[j].to_f64();
                        s1 += gy;
                        s2 += gy * xh[j];
                    }
                    let (m1, m2) = (s1 / d as f64, s2 / d as f64);
                    // gx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂)), ĝ = g·w.
                    for j in 0..d {
                        let gy = grow[j].to_f64() * w[j].to_f64();
                        gxrow[j] = T::from_f64(rstd * (gy - m1 - xh[j] * m2));
                    }
                }
                (gw, gb)
            })
            .collect();
        let (gw, gb) = params.split_at_mut(d);
        for (pw, pb) in partials {
            for j in 0..d {
                gw[j] += T::from_f64(pw[j]);
                gb[j] += T::from_f64(pb[j]);
            }
        }
        out
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "rdrop-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        x_layout: &Layout,
        ws: &CpuStorage,
        w_layout: &Layout,
        bs: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(x_layout, w_layout, OP)?;
        row_width(x_layout, b_layout, OP)?;
        let out = float_dispatch!(OP, xs, |T| self.forward::<T>(
            contiguous(xs, x_layout, OP, "x")?,
            contiguous(ws, w_layout, OP, "weight")?,
            contiguous(bs, b_layout, OP, "bias")?,
            d
        ));
        Ok((out, x_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        x_layout: &Layout,
        ws: &candle_core::CudaStorage,
        w_layout: &Layout,
        bs: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{
            DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
        };
        use candle_core::cuda_backend::{kernels, CudaDType, WrapErr};
        use candle_core::CudaStorage;
        use rdrop_kernels::cuda::contiguous_view;

        /// candle-nn's launch of its kernel (`layer_norm`): a warp per row below 1024 columns.
        fn launch<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
            kernel: &str,
            eps: f64,
            (xs, x_layout): (&CudaStorage, &Layout),
            (ws, w_layout): (&CudaStorage, &Layout),
            (bs, b_layout): (&CudaStorage, &Layout),
        ) -> candle_core::Result<CudaStorage> {
            let d = row_width(x_layout, w_layout, OP)?;
            row_width(x_layout, b_layout, OP)?;
            let dev = &xs.device;
            let x = contiguous_view::<T>(xs, x_layout, OP, "x")?;
            let w = contiguous_view::<T>(ws, w_layout, OP, "weight")?;
            let b = contiguous_view::<T>(bs, b_layout, OP, "bias")?;
            let el = x_layout.shape().elem_count();
            let out = dev.alloc_zeros::<T>(el.max(1))?;
            if el > 0 {
                let block = if d < 1024 { 32 } else { 1024 };
                let cfg = LaunchConfig {
                    grid_dim: ((el / d) as u32, 1, 1),
                    block_dim: (block, 1, 1),
                    shared_mem_bytes: 0,
                };
                let func = dev.get_or_load_func(kernel, &kernels::REDUCE)?;
                let mut launch = func.builder();
                launch.arg(&x);
                launch.arg(&out);
                launch.arg(&w);
                launch.arg(&b);
                candle_core::builder_arg!(launch, d as i32, block as i32, eps as f32);
                // SAFETY: the kernel reads `el / d` rows of `d` values and the `[d]` parameters,
                // and writes as many values.
                unsafe { launch.launch(cfg) }.w()?;
            }
            Ok(T::wrap_cuda_slice(out, dev.clone()))
        }

        let args = ((xs, x_layout), (ws, w_layout), (bs, b_layout));
        let out = match xs.dtype() {
            DType::F32 => launch::<f32>("layernorm_f32", self.eps, args.0, args.1, args.2)?,
            DType::BF16 => {
                launch::<half::bf16>("layernorm_bf16", self.eps, args.0, args.1, args.2)?
            }
            dtype => candle_core::bail!("layer norm: no CUDA kernel for {dtype:?}"),
        };
        Ok((out, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, gb) = backward(x, w, grad, self.eps)?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
}

/// The gradients (x, weight, bias) of `layer_norm(x, weight, _, eps)` for the incoming `grad`:
/// the CPU kernel where it takes `x`, else tensor ops (in f32 for half-precision input).
pub(super) fn backward(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    if !available(x) {
        // Half precision: the statistics and sums in f32 (as PyTorch's kernels), the
        // gradients back in the input's dtype.
        let dtype = x.dtype();
        let up = |t: &Tensor| match dtype {
            DType::BF16 | DType::F16 => t.to_dtype(DType::F32),
            _ => Ok(t.clone()),
        };
        let (gx, gw, gb) = backward_composed(&up(x)?, &up(w)?, &up(grad)?, eps)?;
        let down = |t: Tensor| t.to_dtype(dtype);
        return Ok((down(gx)?, down(gw)?, down(gb)?));
    }
    let d = w.dim(0)?;
    let rows = x.elem_count() / d.max(1);
    let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps })?;
    let gx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
    let gw = packed.narrow(0, rows, 1)?.reshape(d)?;
    let gb = packed.narrow(0, rows + 1, 1)?.reshape(d)?;
    Ok((gx, gw, gb))
}

/// The backward of [`LayerNorm`] in tensor ops, for devices without its CPU kernel: the statistics
/// are recomputed from `x` rather than kept from the forward. Returns (gx, gw, gb).
fn backward_composed(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let d = w.dim(0)?;
    let rows = x.elem_count() / d.max(1);
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let rstd = (centred.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let xh = centred.broadcast_mul(&rstd)?;
    // Sums over the rows as one matrix product each: a leading-dimension reduction is slow.
    let ones = Tensor::ones((1, rows), g.dtype(), g.device())?;
    let g2 = g.reshape((rows, d))?;
    let gw = ones.matmul(&(&g2 * xh.reshape((rows, d))?)?)?.reshape(d)?;
    let gb = ones.matmul(&g2)?.reshape(d)?;
    // gx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ·x̂)), ĝ = g·w.
    let gy = g.broadcast_mul(w)?;
    let m1 = gy.mean_keepdim(D::Minus1)?;
    let m2 = (&gy * &xh)?.mean_keepdim(D::Minus1)?;
    let gx = gy
        .broadcast_sub(&m1)?
        .sub(&xh.broadcast_mul(&m2)?)?
        .broadcast_mul(&rstd)?;
    Ok((gx, gw, gb))
}

/// Backward of [`LayerNorm`]: (x, weight, grad) -> `[rows + 2, D]` = gx, then gw, then gb.
struct LayerNormGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "rdrop-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        x_layout: &Layout,
        ws: &CpuStorage,
        w_layout: &Layout,
        gs: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(x_layout, w_layout, OP)?;
        if g_layout.shape() != x_layout.shape() {
            candle_core::bail!(
                "layer norm grad: {:?} vs {:?}",
                g_layout.shape(),
                x_layout.shape()
            )
        }
        let rows = x_layout.shape().elem_count() / d.max(1);
        let ln = LayerNorm { eps: self.eps };
        let out = float_dispatch!(OP, xs, |T| ln.backward::<T>(
            contiguous(xs, x_layout, OP, "x")?,
            contiguous(ws, w_layout, OP, "weight")?,
            contiguous(gs, g_layout, OP, "gradient")?,
            d
        ));
        Ok((out, Shape::from((rows + 2, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::{close, grads, random};

    #[test]
    fn layer_norm_matches_composed_ops() {
        let (x, w, b) = (random(&[3, 5, 16], 1), random(&[16], 2), random(&[16], 3));
        let fused = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let composed = layer_norm_composed(&x, &w, &b, 1e-5).unwrap();
        close("value", &fused, &composed);
        for (name, (a, c)) in ["x", "weight", "bias"].iter().zip(
            grads(&fused, &[&x, &w, &b])
                .iter()
                .zip(&grads(&composed, &[&x, &w, &b])),
        ) {
            close(&format!("grad {name}"), a, c);
        }
    }

    /// The backward CUDA bf16 takes (statistics in f32, gradients back in bf16), run here on CPU
    /// bf16 tensors: within bf16's rounding (1e-2 of the largest value) of the f64 gradients.
    #[test]
    fn half_precision_backward_stays_within_bf16_rounding() {
        let (x, w, b) = (random(&[3, 5, 64], 7), random(&[64], 8), random(&[64], 9));
        let y = layer_norm_composed(&x, &w, &b, 1e-5).unwrap();
        let want = grads(&y, &[&x, &w, &b]);
        let g = random(y.dims(), 99);
        let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let (gx, gw, gb) = LayerNorm { eps: 1e-5 }
            .bwd(&half(&x), &half(&w), &half(&b), &half(&y), &half(&g))
            .unwrap();
        for (name, (got, want)) in ["x", "weight", "bias"]
            .iter()
            .zip([gx, gw, gb].iter().zip(&want))
        {
            let got = got.as_ref().unwrap();
            assert_eq!(got.dtype(), DType::BF16, "{name}");
            let got = got.to_dtype(DType::F64).unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let err = (&got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(
                err <= 1e-2 * scale,
                "grad {name}: error {err} for values up to {scale}"
            );
        }
    }

    #[test]
    fn tensor_op_backward_matches_the_kernel() {
        let (x, w, b) = (random(&[2, 7, 24], 4), random(&[24], 5), random(&[24], 6));
        let y = layer_norm_composed(&x, &w, &b, 1e-5).unwrap();
        let want = grads(&y, &[&x, &w, &b]);
        // The incoming gradient `grads` uses: its fixed random weights.
        let g = random(y.dims(), 99);
        let (gx, gw, gb) = backward_composed(&x, &w, &g, 1e-5).unwrap();
        for (name, (got, want)) in ["x", "weight", "bias"]
            .iter()
            .zip([gx, gw, gb].iter().zip(&want))
        {
            close(&format!("grad {name}"), got, want);
        }
    }
}
