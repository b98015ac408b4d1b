//! CPU kernels for the two per-row operations a transformer layer repeats most: adding a bias and
//! layer normalisation, each with its own backward.
//!
//! candle's composed versions reduce the bias and norm-weight gradients over the batch rows, a
//! reduction over a leading dimension that candle's CPU backend does one element at a time with
//! index arithmetic; here those gradients are a matrix product (bias) or per-chunk sums (norm).
//! Other devices and dtypes use the composed ops, which the tests also use as the reference.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Whether the fused CPU kernels handle `x`.
fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// `x` `[..., D]` plus `bias` `[D]` broadcast over the rows.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if fused(x) && x.dtype() == bias.dtype() {
        x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
    } else {
        x.broadcast_add(bias)
    }
}

/// Layer normalisation over the last dimension, then `weight` and `bias` (`[D]` each).
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    if fused(x) && x.dtype() == weight.dtype() && x.dtype() == bias.dtype() {
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

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused op: input must be contiguous"),
    }
}

/// Width of the last dimension of `l`, checked against a `[D]` vector layout.
fn row_width(l: &Layout, vector: &Layout) -> candle_core::Result<usize> {
    let d = l.shape().dims().last().copied().unwrap_or(1);
    if vector.shape().dims() != [d] {
        candle_core::bail!(
            "fused op: rows of width {d}, parameter of shape {:?}",
            vector.shape()
        )
    }
    Ok(d)
}

/// Rows per parallel task: large enough to amortise the task, small enough to split 2 ways.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1)
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
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(l1, l2)?;
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(Self::run(contiguous(s1, l1)?, contiguous(s2, l2)?, d))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(Self::run(contiguous(s1, l1)?, contiguous(s2, l2)?, d))
            }
            _ => candle_core::bail!("bias add: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
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

struct LayerNorm {
    eps: f64,
}

/// Mean and 1/σ of a row, in f64.
fn moments<T: WithDType>(row: &[T], eps: f64) -> (f64, f64) {
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
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(l1, l2)?;
        row_width(l1, l3)?;
        macro_rules! run {
            ($v:ident) => {
                CpuStorage::$v(self.forward(
                    contiguous(s1, l1)?,
                    contiguous(s2, l2)?,
                    contiguous(s3, l3)?,
                    d,
                ))
            };
        }
        let out = match s1 {
            CpuStorage::F32(_) => run!(F32),
            CpuStorage::F64(_) => run!(F64),
            _ => candle_core::bail!("layer norm: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let rows = x.elem_count() / d.max(1);
        let packed =
            x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let gx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let gw = packed.narrow(0, rows, 1)?.reshape(d)?;
        let gb = packed.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
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
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(l1, l2)?;
        if l3.shape() != l1.shape() {
            candle_core::bail!("layer norm grad: {:?} vs {:?}", l3.shape(), l1.shape())
        }
        let rows = l1.shape().elem_count() / d.max(1);
        let ln = LayerNorm { eps: self.eps };
        macro_rules! run {
            ($v:ident) => {
                CpuStorage::$v(ln.backward(
                    contiguous(s1, l1)?,
                    contiguous(s2, l2)?,
                    contiguous(s3, l3)?,
                    d,
                ))
            };
        }
        let out = match s1 {
            CpuStorage::F32(_) => run!(F32),
            CpuStorage::F64(_) => run!(F64),
            _ => candle_core::bail!("layer norm grad: f32 or f64 only"),
        };
        Ok((out, Shape::from((rows + 2, d))))
    }
}

#[cfg(test)]
mod tests {
    //! The kernels against the composed ops: values and every gradient.
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Var {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
            })
            .collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(what: &str, a: &Tensor, b: &Tensor) {
        let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-10 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Loss = Σ y ⊙ r for a fixed random r, so every output element gets a distinct gradient.
    fn grads(y: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
        let r = random(y.dims(), 99);
        let g = (y * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect()
    }

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
