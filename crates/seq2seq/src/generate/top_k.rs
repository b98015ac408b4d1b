//! A search step's statistics computed where the logits are: per row, the log-normaliser after the
//! step's bans and the `k` best tokens, so a GPU copies `1 + 2k` floats per row to the host instead
//! of the vocabulary (CPU and CUDA; `top_k.cu`).
//!
//! The CPU forward runs the host search's own row code ([`logits`](super::logits)), so on the CPU
//! the two paths give the same bits; the tests compare the CUDA kernel with it.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::logits::{fastmath, log_norm};

const OP: &str = "masked top-k";

/// Most tokens one step may ban on the device (`<pad>`, and `</s>` before `min_new_tokens`).
pub(crate) const MAX_BANNED: usize = 2;
/// Largest `k` (twice the largest beam that searches on the device).
pub(crate) const MAX_K: usize = 16;

/// What a step asks of each row of logits.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRequest {
    /// Tokens set to `-inf` in every row (at most [`MAX_BANNED`]).
    pub banned: Vec<u32>,
    /// Candidates per row: 1 for greedy search, `2 × beam` for beam search.
    pub k: usize,
    /// Normalise after the bans (transformers' `renormalize_logits`), else before them.
    pub renormalize: bool,
}

impl TopRequest {
    /// Floats per row of the result: the normaliser, `k` values, `k` tokens.
    pub fn width(&self) -> usize {
        1 + 2 * self.k
    }
}

/// `logits` `[rows, V]` -> `[rows, 1 + 2k]` f32: per row the log-normaliser (`log p = value -
/// norm`), the `k` best values after the bans (banned tokens are `-inf`; larger first, then lower
/// token) and their tokens, as f32.
pub fn masked_top_k(logits: &Tensor, req: &TopRequest) -> candle_core::Result<Tensor> {
    let (_, v) = logits.dims2()?;
    if req.k == 0 || req.k > MAX_K || req.k > v || req.banned.len() > MAX_BANNED {
        candle_core::bail!(
            "{OP}: k {} (1..={MAX_K}, at most the vocabulary {v}) with {} banned tokens (at most {MAX_BANNED})",
            req.k,
            req.banned.len()
        );
    }
    logits
        .to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(&MaskedTopK(req.clone()))
}

/// [`row_top_k`] of every row of `logits` (`[rows, v]`, banned in place): `[rows, 1 + 2k]`.
pub(super) fn rows_top_k(logits: &mut [f32], v: usize, req: &TopRequest) -> Vec<f32> {
    let w = req.width();
    let mut out = vec![0f32; logits.len() / v * w];
    let mut top = Vec::with_capacity(req.k + 1);
    for (row, o) in logits.chunks_exact_mut(v).zip(out.chunks_exact_mut(w)) {
        row_top_k(row, req, &mut top, o);
    }
    out
}

/// The host search's statistics of one row: bans `row` in place, then writes the normaliser, the
/// `k` best values and their tokens into `out` (`1 + 2k` floats).
fn row_top_k(row: &mut [f32], req: &TopRequest, top: &mut Vec<(f32, u32)>, out: &mut [f32]) {
    let pre_norm = if req.renormalize { 0.0 } else { log_norm(row) };
    for &t in &req.banned {
        if let Some(x) = row.get_mut(t as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    out[0] = if req.renormalize {
        log_norm(row)
    } else {
        pre_norm
    };
    fill_top_k(row, req.k, top);
    let k = req.k;
    for (q, &(x, t)) in top.iter().enumerate().take(k) {
        out[1 + q] = x;
        out[1 + k + q] = t as f32;
    }
}

/// The `k` best `(value, token)` of a processed row into `top`: larger first, then lower token;
/// when fewer than `k` are above -inf, the lowest -inf ones fill it, as torch.topk takes them.
pub(super) fn fill_top_k(row: &[f32], k: usize, top: &mut Vec<(f32, u32)>) {
    fastmath::top_k_best(row, k, top);
    for (t, &x) in row.iter().enumerate() {
        if top.len() >= k {
            break;
        }
        if x == f32::NEG_INFINITY {
            top.push((x, t as u32));
        }
    }
}

struct MaskedTopK(TopRequest);

impl CustomOp1 for MaskedTopK {
    fn name(&self) -> &'static str {
        "rdrop-masked-top-k"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut x = rdrop_kernels::contiguous::<f32>(s, l, OP, "logits")?.to_vec();
        let (rows, v) = l.shape().dims2()?;
        let out = rows_top_k(&mut x, v, &self.0);
        Ok((CpuStorage::F32(out), Shape::from((rows, self.0.width()))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;
        use rdrop_kernels::cuda;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/top_k.ptx"));
        let (rows, v) = l.shape().dims2()?;
        let w = self.0.width();
        let dev = &s.device;
        let x = cuda::contiguous_view::<f32>(s, l, OP, "logits")?;
        let out = dev.alloc_zeros::<f32>((rows * w).max(1))?;
        let ban = |i: usize| self.0.banned.get(i).copied().unwrap_or(u32::MAX);
        let func =
            dev.get_or_load_custom_func("rdrop_masked_top_k_f32", "rdrop_seq2seq_top_k", PTX)?;
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&out);
        candle_core::builder_arg!(
            b,
            rows as i32,
            v as i32,
            self.0.k as i32,
            ban(0),
            ban(1),
            self.0.banned.len() as i32,
            self.0.renormalize as i32
        );
        if rows > 0 {
            // SAFETY: the kernel reads `rows` rows of `v` logits and writes `rows` rows of
            // `1 + 2k` floats, the shapes allocated here; k <= MAX_K was checked by the caller.
            unsafe { b.launch(cuda::per_row(rows)) }.w()?;
        }
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((rows, w)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The definition, written out: log-sum-exp in f64 over the (banned) row, a stable sort.
    fn reference(row: &[f32], req: &TopRequest) -> (f64, Vec<(f32, u32)>) {
        let banned = |t: usize| req.banned.contains(&(t as u32));
        let vals: Vec<f32> = (0..row.len())
            .map(|t| if banned(t) { f32::NEG_INFINITY } else { row[t] })
            .collect();
        let src = if req.renormalize { &vals } else { row };
        let m = src.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = src.iter().map(|&x| (x as f64 - m).exp()).sum();
        let mut order: Vec<(f32, u32)> = vals
            .iter()
            .enumerate()
            .map(|(t, &x)| (x, t as u32))
            .collect();
        order.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        order.truncate(req.k);
        (m + z.ln(), order)
    }

    #[test]
    fn cpu_matches_the_definition_with_bans_ties_and_too_few_finite() {
        let v = 37;
        let mut x: Vec<f32> = (0..3 * v)
            .map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0)
            .collect();
        x[5] = x[9]; // a tie: the lower token first
                     // Row 2: only three finite tokens, two of them banned: -inf fills, lowest first.
        for (t, e) in x[2 * v..].iter_mut().enumerate() {
            if ![3, 4, 30].contains(&t) {
                *e = f32::NEG_INFINITY;
            }
        }
        let t = Tensor::from_vec(x.clone(), (3, v), &Device::Cpu).unwrap();
        for (k, banned, renormalize) in [
            (1, vec![], true),
            (8, vec![4, 30], true),
            (6, vec![4], false),
        ] {
            let req = TopRequest {
                banned,
                k,
                renormalize,
            };
            let got = masked_top_k(&t, &req).unwrap().to_vec2::<f32>().unwrap();
            for (r, g) in got.iter().enumerate() {
                let (norm, top) = reference(&x[r * v..(r + 1) * v], &req);
                let tol = 1e-5 * (1.0 + norm.abs());
                assert!(
                    (g[0] as f64 - norm).abs() < tol,
                    "row {r} {req:?}: norm {} vs {norm}",
                    g[0]
                );
                let got_top: Vec<(f32, u32)> =
                    (0..k).map(|q| (g[1 + q], g[1 + k + q] as u32)).collect();
                assert_eq!(got_top, top, "row {r} {req:?}");
            }
        }
    }
}
