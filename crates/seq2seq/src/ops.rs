//! CPU kernels for the two per-row operations a transformer layer repeats most: adding a bias and
//! layer normalisation, each with its own backward.
//!
//! candle's composed versions reduce the bias and norm-weight gradients over the batch rows, a
//! reduction over a leading dimension that candle's CPU backend does one element at a time with
//! index arithmetic; here those gradients are a matrix product (bias) or per-chunk sums (norm).
//! Other devices and dtypes use the composed ops, which the tests also use as the reference.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Tunes the CPU matrix product for decoding with frozen weights, process-wide (single-threaded
/// products): gemm copies the weight into its panel layout whenever more than 48 rows multiply it,
/// but frozen weights are stored transposed or in panels it reads well as they are. From 192 rows
/// on (the encoder's products) the copy still pays; beam search's steps of 128 rows ran 5% faster
/// without it (`scripts/bench_translate.sh`).
pub fn prefer_unpacked_weights() {
    gemm::set_lhs_packing_threshold_single_thread(32);
}

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

/// Attention weights: softmax over the last dimension of `scores` plus an optional additive
/// `mask` (broadcast). Half-precision scores are normalised in f32, as PyTorch's autocast does.
/// candle's `softmax_last_dim` is one fused kernel but has no backward, so anything a gradient may
/// flow through takes the composed softmax.
pub fn attention_probs(scores: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores.clone(),
    };
    let dtype = scores.dtype();
    let scores = match dtype {
        DType::BF16 | DType::F16 => scores.to_dtype(DType::F32)?,
        _ => scores,
    };
    let probs = if scores.track_op() {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    probs.to_dtype(dtype)
}

/// Attention of one query position per row, incremental decoding's case:
/// `softmax(q·scale·kᵀ + mask)·v` with `q` `[B, 1, H·dh]` (heads side by side, as the projection
/// leaves them), `k`/`v` `[B, H, T, dh]` and an optional additive `mask` `[B, 1, 1, T]`; returns
/// `[B, 1, H·dh]`, the layout the output projection takes.
///
/// On the CPU (f32/f64) one pass per (row, head) computes the scores, their softmax and the
/// weighted sum; candle's batched product would run two tiny matrix products per (row, head), one
/// after the other. No backward: decoding only.
pub fn single_query_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, t, dh) = k.dims4()?;
    if q.dims() != [b, 1, h * dh] || v.dims() != [b, h, t, dh] {
        candle_core::bail!(
            "single-query attention: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if let Some(m) = mask {
        if m.dims() != [b, 1, 1, t] {
            candle_core::bail!(
                "single-query attention: mask {:?} for keys {:?}",
                m.dims(),
                k.dims()
            )
        }
    }
    if fused(q) && q.dtype() == k.dtype() && q.dtype() == v.dtype() && !q.track_op() {
        let mask = match mask {
            Some(m) => Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &SingleQueryAttention {
                heads: h,
                scale,
                mask,
            },
        )
    } else {
        single_query_attention_composed(q, k, v, mask, scale)
    }
}

/// [`single_query_attention`] from candle's ops: the reference, and the path on other devices.
pub fn single_query_attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, _, dh) = k.dims4()?;
    let q = (q * scale)?.reshape((b, h, 1, dh))?;
    let probs = attention_probs(&q.matmul(&k.transpose(2, 3)?)?, mask)?;
    probs.matmul(v)?.reshape((b, 1, h * dh))
}

/// The float types the attention kernel runs in.
pub(crate) trait Float: WithDType {
    fn exp(self) -> Self;
    /// [`attend_head`]; f32 overrides it with copies for wider vector instructions.
    fn attend_head(
        qs: &[Self],
        k: &[Self],
        v: &[Self],
        offsets: &[usize],
        mask: Option<&[Self]>,
        scores: &mut [Self],
        o: &mut [Self],
    ) {
        attend_head(qs, k, v, offsets, mask, scores, o)
    }
}

impl Float for f32 {
    #[inline(always)]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn attend_head(
        qs: &[f32],
        k: &[f32],
        v: &[f32],
        offsets: &[usize],
        mask: Option<&[f32]>,
        scores: &mut [f32],
        o: &mut [f32],
    ) {
        attend_head_f32(qs, k, v, offsets, mask, scores, o)
    }
}

impl Float for f64 {
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

struct SingleQueryAttention {
    heads: usize,
    scale: f64,
    /// Additive mask `[B, T]`.
    mask: Option<Vec<f32>>,
}

/// Defines `fn $name(args) -> R` that runs `$imp` compiled for the widest vector instructions this
/// CPU has (AVX-512, AVX2, else the build's baseline). `$imp` and what its hot loops call must be
/// `#[inline(always)]` (closures are not inlined into the wide copies). Loops written with
/// independent lanes, as [`dot`], then use the wide registers; the results are the same on every
/// path, since only the register width changes, not the order of operations.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $imp:path, ($($a:ident : $t:ty),* $(,)?) -> $r:ty) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($a: $t),*) -> $r {
                    $imp($($a),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($a: $t),*) -> $r {
                    $imp($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has just been found to support the instructions.
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($a),*) };
                }
            }
            $imp($($a),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// `Σ a_i·b_i` with independent partial sums, so the compiler can keep them in vector registers.
#[inline(always)]
fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 16;
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    let mut total = T::zero();
    for (x, y) in ra.iter().zip(rb) {
        total += *x * *y;
    }
    for a in acc {
        total += a;
    }
    total
}

/// The attention kernel behind [`single_query_attention`] and the host decoding cache. For every
/// row `r` and head `h`: the softmax over positions `t < len` of `q[r, h]·scale · k[at(r, h, t)]
/// + mask(r, t)`, then the sum of `v[at(r, h, t)]` weighted by it. `q` and the result are
/// `[rows, heads·dh]`; every key and value is a run of `dh` elements at offset `at(r, h, t)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_rows<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    heads: usize,
    dh: usize,
    len: usize,
    scale: f64,
    at: impl Fn(usize, usize, usize) -> usize + Sync,
    mask: Option<&(dyn Fn(usize, usize) -> f32 + Sync)>,
) -> Vec<T> {
    let scale = T::from_f64(scale);
    let mut out = vec![T::zero(); q.len()];
    out.par_chunks_mut(dh)
        .with_min_len(4)
        .enumerate()
        .for_each(|(rh, o)| {
            let (r, h) = (rh / heads, rh % heads);
            let qs: Vec<T> = q[rh * dh..(rh + 1) * dh]
                .iter()
                .map(|&x| x * scale)
                .collect();
            let offsets: Vec<usize> = (0..len).map(|t| at(r, h, t)).collect();
            let mask: Option<Vec<T>> =
                mask.map(|m| (0..len).map(|t| T::from_f64(m(r, t) as f64)).collect());
            let mut scores = vec![T::zero(); len];
            T::attend_head(&qs, k, v, &offsets, mask.as_deref(), &mut scores, o);
        });
    out
}

/// One (row, head) of [`attend_rows`]: `qs` the scaled query, `offsets` where each position's key
/// and value start, `scores` scratch of one per position, `o` the output (zeroed).
#[inline(always)]
fn attend_head<T: Float>(
    qs: &[T],
    k: &[T],
    v: &[T],
    offsets: &[usize],
    mask: Option<&[T]>,
    scores: &mut [T],
    o: &mut [T],
) {
    let dh = qs.len();
    for (s, &at) in scores.iter_mut().zip(offsets) {
        *s = dot(qs, &k[at..at + dh]);
    }
    if let Some(mask) = mask {
        for (s, &m) in scores.iter_mut().zip(mask) {
            *s += m;
        }
    }
    let mut max = T::from_f64(f64::NEG_INFINITY);
    for &s in scores.iter() {
        if s > max {
            max = s;
        }
    }
    let mut sum = T::zero();
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for (&p, &at) in scores.iter().zip(offsets) {
        let p = p / sum;
        for (o, &x) in o.iter_mut().zip(&v[at..at + dh]) {
            *o += p * x;
        }
    }
}

simd_dispatch! {
    fn attend_head_f32 => attend_head::<f32>, (
        qs: &[f32],
        k: &[f32],
        v: &[f32],
        offsets: &[usize],
        mask: Option<&[f32]>,
        scores: &mut [f32],
        o: &mut [f32],
    ) -> ()
}

impl SingleQueryAttention {
    /// `q` `[B·H, dh]`, `k`/`v` `[B·H, t, dh]` -> `[B·H, dh]`.
    fn run<T: Float>(&self, q: &[T], k: &[T], v: &[T], t: usize, dh: usize) -> Vec<T> {
        let heads = self.heads;
        let mask = self.mask.as_deref();
        let mask_at = |r: usize, s: usize| mask.map_or(0.0, |m| m[r * t + s]);
        attend_rows(
            q,
            k,
            v,
            heads,
            dh,
            t,
            self.scale,
            |r, h, s| ((r * heads + h) * t + s) * dh,
            mask.map(|_| &mask_at as &(dyn Fn(usize, usize) -> f32 + Sync)),
        )
    }
}

impl CustomOp3 for SingleQueryAttention {
    fn name(&self) -> &'static str {
        "rdrop-single-query-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, _, t, dh) = lk.shape().dims4()?;
        let out = match sq {
            CpuStorage::F32(_) => CpuStorage::F32(self.run(
                contiguous::<f32>(sq, lq)?,
                contiguous(sk, lk)?,
                contiguous(sv, lv)?,
                t,
                dh,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(self.run(
                contiguous::<f64>(sq, lq)?,
                contiguous(sk, lk)?,
                contiguous(sv, lv)?,
                t,
                dh,
            )),
            other => candle_core::bail!(
                "single-query attention: no CPU kernel for {:?}",
                other.dtype()
            ),
        };
        Ok((out, lq.shape().clone()))
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

    #[test]
    fn single_query_attention_matches_composed_ops() {
        // 3 rows, 2 heads of width 20 (not a multiple of the dot product's 16 lanes), 5 keys.
        let t = |v: Var| v.as_tensor().detach();
        let (q, k, v) = (
            t(random(&[3, 1, 40], 6)),
            t(random(&[3, 2, 5, 20], 7)),
            t(random(&[3, 2, 5, 20], 8)),
        );
        // Row 1 sees only its first 2 keys, as a padded source would leave it.
        let mut m = vec![0f64; 15];
        m[7..10].fill(-1e9);
        let mask = Tensor::from_vec(m, (3, 1, 1, 5), &Device::Cpu).unwrap();
        for mask in [None, Some(&mask)] {
            let fused = single_query_attention(&q, &k, &v, mask, 0.3).unwrap();
            let composed = single_query_attention_composed(&q, &k, &v, mask, 0.3).unwrap();
            close("value", &fused, &composed);
        }
        // The masked keys have no influence at all.
        let fused = single_query_attention(&q, &k, &v, Some(&mask), 0.3).unwrap();
        let first_two = single_query_attention(
            &q.narrow(0, 1, 1).unwrap(),
            &k.narrow(0, 1, 1).unwrap().narrow(2, 0, 2).unwrap(),
            &v.narrow(0, 1, 1).unwrap().narrow(2, 0, 2).unwrap(),
            None,
            0.3,
        )
        .unwrap();
        close("mask", &fused.narrow(0, 1, 1).unwrap(), &first_two);
    }
}
