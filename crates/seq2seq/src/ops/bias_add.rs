//! `add_bias`: `x` `[..., D]` plus a bias `[D]` on every row; the CPU forward in one parallel pass,
//! the bias gradient as a matrix product (candle's composed one reduces rows element by element).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use rdrop_kernels::{available, contiguous, float_dispatch, row_width, rows_per_task};

const OP: &str = "bias add";

/// `x` `[..., D]` plus `bias` `[D]` broadcast over the rows.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if available(x) && x.dtype() == bias.dtype() {
        x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
    } else {
        x.broadcast_add(bias)
    }
}

struct BiasAdd;

impl BiasAdd {
    fn run<T: WithDType>(x: &[T], b: &[T], d: usize) -> Vec<T> {
        let mut out = x.to_vec();
        out.par_chunks_mut(d * rows_per_task(x.len() / d.max(1)))
            .for_each(|rows| {
                for row in rows.chunks_mut(d) {
                    for (o, &bv) in row.iter_mut().zip(b) {
                        *o += bv;
                    }
                }
            });
        out
    }
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "rdrop-bias-add"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        x_layout: &Layout,
        bs: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(x_layout, b_layout, OP)?;
        let out = float_dispatch!(OP, xs, |T| Self::run::<T>(
            contiguous(xs, x_layout, OP, "x")?,
            contiguous(bs, b_layout, OP, "bias")?,
            d
        ));
        Ok((out, x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = bias.dim(0)?;
        let rows = grad.elem_count() / d.max(1);
        // Σ over rows as ones·G: a matrix product instead of a strided reduction.
        let ones = Tensor::ones((1, rows), grad.dtype(), grad.device())?;
        let gb = ones.matmul(&grad.reshape((rows, d))?)?.reshape(d)?;
        Ok((Some(grad.clone()), Some(gb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::{close, grads, random};

    #[test]
    fn bias_add_matches_broadcast_add() {
        let (x, b) = (random(&[4, 7, 9], 4), random(&[9], 5));
        let fused = add_bias(&x, &b).unwrap();
        let composed = x.broadcast_add(&b).unwrap();
        close("value", &fused, &composed);
        for (a, c) in grads(&fused, &[&x, &b])
            .iter()
            .zip(&grads(&composed, &[&x, &b]))
        {
            close("grad", a, c);
        }
    }
}
