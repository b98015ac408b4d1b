//! Fused CPU kernels: per-token CE, NLL and KL statistics in one pass over each row of logits,
//! and their exact gradient in one more, as candle custom ops.
//!
//! The composed version (log-softmax, gather, exp, products, masked sums) materialises a dozen
//! tensors the size of the logits on the way forward and as many again on the way back; with a
//! large vocabulary those passes dominate a training step on CPU. Here a row is read once for its
//! statistics and once for its gradient. Every output column has its true gradient, so any way of
//! combining the columns backpropagates correctly.
//!
//! CPU tensors of f32 or f64 take this path, and with the `cuda` feature f32 CUDA tensors too,
//! through the same formulas in `fused.cu` (see [`available`]); everything else uses the composed
//! ops, which also serve as the cross-check in the tests. Which tensors qualify, reading them, the
//! float types and the CUDA launches come from `rdrop-kernels`, shared with the model's kernels.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use rdrop_kernels::{contiguous, float_dispatch, Float};

/// Whether `logits` can take the fused path (on the CPU or, built with `cuda`, on a GPU).
pub(crate) fn available(logits: &Tensor) -> bool {
    rdrop_kernels::available(logits) || rdrop_kernels::available_cuda(logits)
}

const OP: &str = "fused loss";

#[cfg(feature = "cuda")]
use {
    candle_core::cuda_backend::cudarc::driver::PushKernelArg, candle_core::cuda_backend::WrapErr,
    candle_core::CudaStorage, rdrop_kernels::cuda,
};

/// `fused.cu`, compiled to PTX by build.rs.
#[cfg(feature = "cuda")]
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
#[cfg(feature = "cuda")]
const CUDA_MODULE: &str = "rdrop_loss_fused";

/// Columns of the single-copy statistics.
pub(crate) mod single {
    pub const CE: usize = 0;
    pub const NLL: usize = 1;
    pub const WIDTH: usize = 3; // .., log-sum-exp
}

/// Columns of the two-copy (R-Drop) statistics.
pub(crate) mod pair {
    pub const CE1: usize = 0;
    pub const NLL1: usize = 1;
    pub const CE2: usize = 2;
    pub const NLL2: usize = 3;
    /// KL(P1‖P2) and KL(P2‖P1), each summed over the vocabulary.
    pub const KL12: usize = 4;
    pub const KL21: usize = 5;
    pub const WIDTH: usize = 8; // .., log-sum-exp of copy 1, of copy 2
}

/// Per-token statistics of logits `[R, V]` against targets `[N]` (u32).
///
/// Single copy (`pair == false`, `N == R`): columns CE, NLL, log-sum-exp.
/// Pair (`N == R / 2`, row `i` of copy 1 pairs with row `i + N` of copy 2): columns CE1, NLL1, CE2,
/// NLL2, KL12, KL21, lse1, lse2. Rows whose target is `pad` are all zero and never read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenStats {
    pub pad: u32,
    pub eps: f64,
    pub pair: bool,
}

impl TokenStats {
    fn width(&self) -> usize {
        if self.pair {
            pair::WIDTH
        } else {
            single::WIDTH
        }
    }

    /// Label-smoothing weights: gold token `on`, every token `off` (fairseq: `ε/(V−1)`).
    fn smoothing(&self, v: usize) -> (f64, f64) {
        if self.eps == 0.0 {
            return (1.0, 0.0);
        }
        let off = self.eps / (v as f64 - 1.0);
        (1.0 - self.eps - off, off)
    }

    /// `logits` `[R, V]` -> `[N, width]`, attached to the graph.
    pub fn apply(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        logits.contiguous()?.apply_op2(&target.contiguous()?, *self)
    }
}

/// Fills `e` with exp(x − max) and returns (log-sum-exp, Σx, Σ exp(x − max)) of the row, sums in f64.
fn row_exp<T: Float>(row: &[T], e: &mut [T]) -> (f64, f64, f64) {
    let mut max = T::neg_infinity();
    for &x in row {
        // `x > max` is false for NaN: a NaN keeps a finite max and makes the sum below NaN.
        if x > max {
            max = x;
        }
    }
    let (mut sum, mut total) = (0f64, 0f64);
    for (slot, &x) in e.iter_mut().zip(row) {
        *slot = (x - max).exp();
        sum += slot.to_f64();
        total += x.to_f64();
    }
    (max.to_f64() + sum.ln(), total, sum)
}

/// Checks shapes and returns (rows, vocab, targets).
fn dims(stats: &TokenStats, l1: &Layout, l2: &Layout) -> Result<(usize, usize, usize)> {
    let (r, v) = l1.shape().dims2()?;
    let n = l2.shape().dims1()?;
    let want = if stats.pair { r / 2 } else { r };
    if n != want || (stats.pair && r % 2 != 0) {
        candle_core::bail!(
            "fused loss: {r} logit rows for {n} targets (pair: {})",
            stats.pair
        )
    }
    Ok((r, v, n))
}

impl TokenStats {
    fn forward<T: Float>(&self, logits: &[T], target: &[u32], v: usize, n: usize) -> Vec<T> {
        let w = self.width();
        let (on, off) = self.smoothing(v);
        let mut out = vec![T::zero(); n * w];
        let scratch = || (vec![T::zero(); v], vec![T::zero(); v]);
        out.par_chunks_mut(w)
            .enumerate()
            .for_each_init(scratch, |(e1, e2), (i, o)| {
                let t = target[i];
                if t == self.pad {
                    return;
                }
                let t = t as usize;
                let x1 = &logits[i * v..(i + 1) * v];
                let (lse1, sum1, z1) = row_exp(x1, e1);
                let nll1 = lse1 - x1[t].to_f64();
                // Σ_v −log p_v = V·lse − Σ_v x_v.
                let ce1 = on * nll1 + off * (v as f64 * lse1 - sum1);
                if !self.pair {
                    for (slot, val) in o.iter_mut().zip([ce1, nll1, lse1]) {
                        *slot = T::from_f64(val);
                    }
                    return;
                }
                let x2 = &logits[(i + n) * v..(i + n + 1) * v];
                let (lse2, sum2, z2) = row_exp(x2, e2);
                let nll2 = lse2 - x2[t].to_f64();
                let ce2 = on * nll2 + off * (v as f64 * lse2 - sum2);
                // d = log p1 − log p2 = (x1 − x2) − (lse1 − lse2); p = e / z.
                let shift = T::from_f64(lse1 - lse2);
                let (mut kl12, mut kl21) = (0f64, 0f64);
                for j in 0..v {
                    let d = (x1[j] - x2[j] - shift).to_f64();
                    kl12 += e1[j].to_f64() * d;
                    kl21 -= e2[j].to_f64() * d;
                }
                let (kl12, kl21) = (kl12 / z1, kl21 / z2);
                for (slot, val) in o
                    .iter_mut()
                    .zip([ce1, nll1, ce2, nll2, kl12, kl21, lse1, lse2])
                {
                    *slot = T::from_f64(val);
                }
            });
        out
    }

    /// Gradient of Σ_columns grad·stat with respect to the logits, from the forward's own
    /// statistics (`stats`) and the incoming gradient (`grad`), both `[N, width]`.
    fn backward<T: Float>(
        &self,
        logits: &[T],
        target: &[u32],
        stats: &[T],
        grad: &[T],
        v: usize,
        n: usize,
    ) -> Vec<T> {
        let w = self.width();
        let (on, off) = self.smoothing(v);
        let rows = if self.pair { 2 * n } else { n };
        let mut out = vec![T::zero(); rows * v];
        let (first, second) = out.split_at_mut(n * v);
        let g = |i: usize, c: usize| grad[i * w + c].to_f64();
        let s = |i: usize, c: usize| stats[i * w + c].to_f64();
        if !self.pair {
            first.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
                let t = target[i];
                if t == self.pad {
                    return;
                }
                let (g_ce, g_nll, g_lse) = (g(i, 0), g(i, 1), g(i, 2));
                let lse = s(i, 2);
                // ∂CE/∂x = p − (on·e_t + off), ∂NLL/∂x = p − e_t, ∂lse/∂x = p.
                let (gp, c) = (T::from_f64(g_ce + g_nll + g_lse), T::from_f64(g_ce * off));
                let lse = T::from_f64(lse);
                let x = &logits[i * v..(i + 1) * v];
                for (slot, &xv) in o.iter_mut().zip(x) {
                    *slot = gp * (xv - lse).exp() - c;
                }
                let t = t as usize;
                o[t] = T::from_f64(o[t].to_f64() - g_ce * on - g_nll);
            });
            return out;
        }
        first
            .par_chunks_mut(v)
            .zip(second.par_chunks_mut(v))
            .enumerate()
            .for_each(|(i, (o1, o2))| {
                let t = target[i];
                if t == self.pad {
                    return;
                }
                let gc = [g(i, 0), g(i, 1), g(i, 2), g(i, 3)];
                let (g12, g21) = (g(i, pair::KL12), g(i, pair::KL21));
                let (g_lse1, g_lse2) = (g(i, 6), g(i, 7));
                let (kl12, kl21) = (s(i, pair::KL12), s(i, pair::KL21));
                let (lse1, lse2) = (s(i, 6), s(i, 7));
                let x1 = &logits[i * v..(i + 1) * v];
                let x2 = &logits[(i + n) * v..(i + n + 1) * v];
                let f = T::from_f64;
                let (gp1, gp2) = (f(gc[0] + gc[1] + g_lse1), f(gc[2] + gc[3] + g_lse2));
                let (c1, c2) = (f(gc[0] * off), f(gc[2] * off));
                let (g12, g21, kl12, kl21) = (f(g12), f(g21), f(kl12), f(kl21));
                let (lse1, lse2) = (f(lse1), f(lse2));
                for j in 0..v {
                    let lp1 = x1[j] - lse1;
                    let lp2 = x2[j] - lse2;
                    let (p1, p2) = (lp1.exp(), lp2.exp());
                    let d = lp1 - lp2;
                    // ∂KL12/∂x1 = p1(d − KL12), ∂KL12/∂x2 = p2 − p1;
                    // ∂KL21/∂x1 = p1 − p2,       ∂KL21/∂x2 = p2(−d − KL21).
                    o1[j] = gp1 * p1 - c1 + g12 * p1 * (d - kl12) + g21 * (p1 - p2);
                    o2[j] = gp2 * p2 - c2 + g12 * (p2 - p1) + g21 * p2 * (-d - kl21);
                }
                let t = t as usize;
                o1[t] = T::from_f64(o1[t].to_f64() - gc[0] * on - gc[1]);
                o2[t] = T::from_f64(o2[t].to_f64() - gc[2] * on - gc[3]);
            });
        out
    }
}

#[cfg(feature = "cuda")]
impl TokenStats {
    /// Launches `kernel` of `fused.cu`, one block per target row, on logits `[R, V]` and targets
    /// `[n]`, plus `[stats | grad]` for the gradient kernel (`both`). The output, zeroed first (pad
    /// rows stay zero), is `[n, width]` statistics or, with `both`, the `[R, V]` gradient.
    fn launch_cuda(
        &self,
        kernel: &str,
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
        both: Option<(&CudaStorage, &Layout)>,
        v: usize,
        n: usize,
    ) -> Result<CudaStorage> {
        let dev = &s1.device;
        let x = cuda::contiguous_view::<f32>(s1, l1, OP, "logits")?;
        let target = cuda::contiguous_view::<u32>(s2, l2, OP, "target")?;
        let both = both
            .map(|(s, l)| cuda::contiguous_view::<f32>(s, l, OP, "statistics"))
            .transpose()?;
        let len = match both {
            Some(_) => l1.shape().elem_count(),
            None => n * self.width(),
        };
        let out = dev.alloc_zeros::<f32>(len.max(1))?;
        let (on, off) = self.smoothing(v);
        let func = dev.get_or_load_custom_func(kernel, CUDA_MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&target);
        if let Some(both) = &both {
            b.arg(both);
        }
        b.arg(&out);
        candle_core::builder_arg!(b, n as i32, v as i32, self.pair as i32, self.pad, on, off);
        if n > 0 {
            // SAFETY: the kernels read `n` (or `2n`) rows of `v` logits, `n` targets and `n` rows
            // of `2 · width` statistics, the shapes the callers checked, and write within `out`.
            unsafe { b.launch(cuda::per_row(n)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

impl CustomOp2 for TokenStats {
    fn name(&self) -> &'static str {
        "rdrop-token-stats"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v, n) = dims(self, l1, l2)?;
        let target = contiguous::<u32>(s2, l2, OP, "target")?;
        let shape = Shape::from((n, self.width()));
        let out = float_dispatch!(OP, s1, |T| self.forward::<T>(
            contiguous(s1, l1, OP, "logits")?,
            target,
            v,
            n
        ));
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (_, v, n) = dims(self, l1, l2)?;
        let out = self.launch_cuda("rdrop_token_stats_f32", (s1, l1), (s2, l2), None, v, n)?;
        Ok((out, Shape::from((n, self.width()))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = Tensor::cat(&[res, &grad_res.contiguous()?], 1)?;
        let grad = logits.apply_op3_no_bwd(target, &both, &StatsGrad(*self))?;
        Ok((Some(grad), None))
    }
}

/// The gradient op of [`TokenStats`]: (logits, target, [stats | incoming grad]) -> grad logits.
struct StatsGrad(TokenStats);

impl CustomOp3 for StatsGrad {
    fn name(&self) -> &'static str {
        "rdrop-token-stats-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (r, v, n) = dims(&self.0, l1, l2)?;
        let target = contiguous::<u32>(s2, l2, OP, "target")?;
        let w = self.0.width();
        if l3.shape().dims() != [n, 2 * w] {
            candle_core::bail!("fused loss gradient: statistics of shape {:?}", l3.shape())
        }
        let shape = Shape::from((r, v));
        let out = float_dispatch!(OP, s1, |T| {
            let x = contiguous::<T>(s1, l1, OP, "logits")?;
            let both = contiguous::<T>(s3, l3, OP, "statistics")?;
            let (stats, grad): (Vec<T>, Vec<T>) = (0..n)
                .flat_map(|i| (0..w).map(move |c| (both[i * 2 * w + c], both[i * 2 * w + w + c])))
                .unzip();
            self.0.backward(x, target, &stats, &grad, v, n)
        });
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (r, v, n) = dims(&self.0, l1, l2)?;
        let w = self.0.width();
        if l3.shape().dims() != [n, 2 * w] {
            candle_core::bail!("fused loss gradient: statistics of shape {:?}", l3.shape())
        }
        let kernel = "rdrop_token_stats_grad_f32";
        let out = self
            .0
            .launch_cuda(kernel, (s1, l1), (s2, l2), Some((s3, l3)), v, n)?;
        Ok((out, Shape::from((r, v))))
    }
}
