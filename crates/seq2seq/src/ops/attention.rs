//! `single_query_attention`: one query position per row against cached keys and values, as
//! incremental decoding needs it, on the CPU in one pass per (row, head); no backward (decoding only).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use rdrop_kernels::{available, contiguous, float_dispatch, Float};

use super::attention_probs;

const OP: &str = "single-query attention";

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
    if available(q) && q.dtype() == k.dtype() && q.dtype() == v.dtype() && !q.track_op() {
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

/// One (row, head) of [`attend_rows`], as [`attend_head`] computes it.
type AttendHead<T> = fn(&[T], &[T], &[T], &[usize], Option<&[T]>, &mut [T], &mut [T]);

/// The kernel's float types, each with the [`attend_head`] it runs: f32's is compiled for the
/// widest vector instructions the CPU has.
pub(crate) trait AttendFloat: Float {
    const ATTEND_HEAD: AttendHead<Self>;
}

impl AttendFloat for f32 {
    const ATTEND_HEAD: AttendHead<f32> = attend_head_f32;
}

impl AttendFloat for f64 {
    const ATTEND_HEAD: AttendHead<f64> = attend_head::<f64>;
}

struct SingleQueryAttention {
    heads: usize,
    scale: f64,
    /// Additive mask `[B, T]`.
    mask: Option<Vec<f32>>,
}

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
pub(crate) fn attend_rows<T: AttendFloat>(
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
            (T::ATTEND_HEAD)(&qs, k, v, &offsets, mask.as_deref(), &mut scores, o);
        });
    out
}

/// One (row, head) of [`attend_rows`]: `qs` the scaled query, `offsets` where each position's key
/// and value start, `scores` scratch of one per position, `o` the output (zeroed).
#[inline(always)]
fn attend_head<T: AttendFloat>(
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

rdrop_kernels::simd_dispatch! {
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
    fn run<T: AttendFloat>(&self, q: &[T], k: &[T], v: &[T], t: usize, dh: usize) -> Vec<T> {
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
        let out = float_dispatch!(OP, sq, |T| self.run::<T>(
            contiguous(sq, lq, OP, "q")?,
            contiguous(sk, lk, OP, "keys")?,
            contiguous(sv, lv, OP, "values")?,
            t,
            dh
        ));
        Ok((out, lq.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::{close, random};
    use candle_core::{Device, Var};

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
