//! transformers' logits processors applied to one row of next-token logits (n-gram bans, `<pad>`
//! ban, `min_new_tokens`, forced `</s>`, renormalisation) and the vectorised row maths they run on.

use super::{GenerateConfig, SpecialTokens};

/// The tokens transformers' `NoRepeatNGramLogitsProcessor` bans after `seq` (which starts with the
/// decoder start token, as transformers' `input_ids` do).
fn banned_ngram_tokens(seq: &[u32], n: usize, out: &mut Vec<u32>) {
    out.clear();
    let len = seq.len();
    if n == 0 || len < n {
        return;
    }
    let prefix = &seq[len + 1 - n..];
    for start in 0..=len - n {
        if &seq[start..start + n - 1] == prefix {
            out.push(seq[start + n - 1]);
        }
    }
}

/// What a step may generate for one row.
pub(super) struct RowRules<'a> {
    /// `[start] + generated`, for n-gram bans.
    pub seq: &'a [u32],
    /// Tokens generated so far.
    pub generated: usize,
    /// This row's length limit in new tokens.
    pub max_new: usize,
}

/// Scratch space reused across rows and steps.
#[derive(Default)]
pub(super) struct RowScratch {
    banned: Vec<u32>,
}

/// The result of processing one row: its log-normaliser and the forced token, if any.
pub(super) struct RowLogProbs {
    /// `log p(v) = logits[v] - norm` for every token not banned (banned ones are `-inf`).
    pub norm: f32,
    /// When only one token is allowed (forced `</s>`), that token with log-probability 0.
    pub forced: Option<u32>,
}

/// Applies transformers' logits processors to `logits` in place (banned tokens become `-inf`) and
/// returns how to turn the result into log-probabilities.
pub(super) fn process_row(
    logits: &mut [f32],
    rules: &RowRules,
    cfg: &GenerateConfig,
    sp: SpecialTokens,
    scratch: &mut RowScratch,
) -> RowLogProbs {
    if super::forced_eos(cfg, rules.generated, rules.max_new) {
        return RowLogProbs {
            norm: 0.0,
            forced: Some(sp.eos),
        };
    }
    // Without renormalisation, transformers normalises before masking.
    let pre_norm = if cfg.renormalize {
        0.0
    } else {
        log_norm(logits)
    };
    let neg = f32::NEG_INFINITY;
    banned_ngram_tokens(rules.seq, cfg.no_repeat_ngram, &mut scratch.banned);
    for &t in &scratch.banned {
        if let Some(x) = logits.get_mut(t as usize) {
            *x = neg;
        }
    }
    if cfg.ban_pad && sp.pad != sp.eos {
        if let Some(x) = logits.get_mut(sp.pad as usize) {
            *x = neg;
        }
    }
    if rules.generated < cfg.min_new_tokens {
        if let Some(x) = logits.get_mut(sp.eos as usize) {
            *x = neg;
        }
    }
    let norm = if cfg.renormalize {
        log_norm(logits)
    } else {
        pre_norm
    };
    RowLogProbs { norm, forced: None }
}

/// `max + log(sum(exp(x - max)))`, the way torch's `log_softmax` subtracts it (`x - max - log_sum`
/// is returned as `x - norm`, whose rounding differs from torch's only in the last bit).
pub(super) fn log_norm(x: &[f32]) -> f32 {
    let max = fastmath::max_best(x);
    if max == f32::NEG_INFINITY {
        return f32::INFINITY;
    }
    let sum = fastmath::sum_exp_shifted_best(x, max);
    max + sum.ln()
}

/// `log p = x - norm`, computed as torch does (`(x - max) - log_sum`) when `norm` came from
/// [`log_norm`]; the difference is below 1 ulp of the score in practice.
#[inline]
pub(super) fn logp(x: f32, norm: f32) -> f32 {
    x - norm
}

/// First index of the maximum (torch's `argmax` tie rule).
pub(super) fn argmax(x: &[f32]) -> (u32, f32) {
    let m = fastmath::max_best(x);
    let best = x.iter().position(|&v| v == m).unwrap_or(0);
    (best as u32, m)
}

fn push_top(top: &mut Vec<(f32, u32)>, k: usize, v: f32, i: u32) {
    if top.len() == k {
        match top.last() {
            Some(&(lv, _)) if v > lv => {
                top.pop();
            }
            _ => return,
        }
    }
    let pos = top.partition_point(|&(tv, _)| tv >= v);
    top.insert(pos, (v, i));
}

/// Row reductions for log-softmax, written so the compiler vectorises them: a beam step normalises
/// `rows × vocab` logits, which would otherwise cost as much as the decoder itself on small models.
pub(super) mod fastmath {
    use rdrop_kernels::simd_dispatch;

    const LANES: usize = 16;

    simd_dispatch! {
        /// [`max`] with the fastest instructions the CPU has.
        pub fn max_best => max, (x: &[f32]) -> f32
    }

    simd_dispatch! {
        /// [`sum_exp_shifted`] with the fastest instructions the CPU has.
        pub fn sum_exp_shifted_best => sum_exp_shifted, (x: &[f32], max: f32) -> f32
    }

    /// `exp(x)` for `x <= 0` (Cephes' `expf` polynomial, within 2 ulp of the exact value); inputs
    /// below -87.3, `-inf` included, give a value below 2e-38, which no sum of probabilities notices.
    #[inline(always)]
    fn exp_nonpos(x: f32) -> f32 {
        let x = x.max(-87.3);
        // Round x / ln 2 to the nearest integer with the 1.5 · 2^23 trick (no SSE4.1 `round` needed).
        let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5; // Cephes: 5.0000001e-1, which is 0.5 in f32
        let e = p * r * r + r + 1.0;
        e * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    /// The largest element (`-inf` for an empty or all `-inf` slice).
    #[inline(always)]
    pub fn max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for j in 0..LANES {
                acc[j] = acc[j].max(c[j]);
            }
        }
        let mut m = rest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for a in acc {
            m = m.max(a);
        }
        m
    }

    /// `sum(exp(x - max))` with `max` the largest element.
    #[inline(always)]
    pub fn sum_exp_shifted(x: &[f32], max: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for j in 0..LANES {
                acc[j] += exp_nonpos(c[j] - max);
            }
        }
        let mut total: f64 = rest.iter().map(|&v| exp_nonpos(v - max) as f64).sum();
        for a in acc {
            total += a as f64;
        }
        total as f32
    }

    /// The `k` largest elements above `-inf` as `(value, index)`, best first, ties to the lower
    /// index (into `top`, cleared first). Whole blocks whose maximum cannot enter are skipped.
    #[inline(always)]
    pub fn top_k(x: &[f32], k: usize, top: &mut Vec<(f32, u32)>) {
        top.clear();
        let mut threshold = f32::NEG_INFINITY;
        let mut start = 0;
        for c in x.chunks(LANES * 4) {
            if max(c) > threshold {
                for (j, &v) in c.iter().enumerate() {
                    if v > threshold {
                        super::push_top(top, k, v, (start + j) as u32);
                        if top.len() == k {
                            threshold = top[k - 1].0;
                        }
                    }
                }
            }
            start += c.len();
        }
    }

    simd_dispatch! {
        /// [`top_k`] with the fastest instructions the CPU has.
        pub fn top_k_best => top_k, (x: &[f32], k: usize, top: &mut Vec<(f32, u32)>) -> ()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn top_k_equals_a_stable_sort() {
            // 1000 values from a small set (many ties) with some -inf, against sorting by value
            // descending with ties to the lower index.
            let x: Vec<f32> = (0..1000u32)
                .map(|i| {
                    let h = i.wrapping_mul(2_654_435_761) >> 24;
                    if h % 17 == 0 {
                        f32::NEG_INFINITY
                    } else {
                        (h % 23) as f32 * 0.5 - 3.0
                    }
                })
                .collect();
            let mut want: Vec<(f32, u32)> =
                x.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut got = Vec::new();
            for k in [1, 8, 40] {
                super::top_k_best(&x, k, &mut got);
                assert_eq!(got, want[..k].to_vec(), "k = {k}");
                super::top_k(&x, k, &mut got);
                assert_eq!(got, want[..k].to_vec(), "k = {k}, baseline");
            }
            assert_eq!(super::max_best(&x), want[0].0);
        }

        #[test]
        fn exp_is_accurate_on_the_range_that_matters() {
            let mut worst = 0f64;
            let mut x = -87.0f32;
            while x <= 0.0 {
                let want = (x as f64).exp();
                let got = super::exp_nonpos(x) as f64;
                worst = worst.max(((got - want) / want).abs());
                x += 0.001_37;
            }
            assert!(worst < 5e-7, "relative error {worst}");
            assert!(super::exp_nonpos(f32::NEG_INFINITY) < 1e-37);
            let v: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
            let m = super::max(&v);
            let want: f64 = v.iter().map(|&a| ((a - m) as f64).exp()).sum();
            assert!((super::sum_exp_shifted(&v, m) as f64 - want).abs() < 1e-5 * want);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_bans_follow_transformers() {
        // transformers' docstring example: (start) 40 2883 2712 4346 ... with n = 2.
        let mut out = Vec::new();
        banned_ngram_tokens(&[9, 1, 2, 3, 1], 2, &mut out);
        assert_eq!(out, vec![2]);
        banned_ngram_tokens(&[9, 1, 2, 1, 2], 3, &mut out);
        assert_eq!(out, vec![1]);
        banned_ngram_tokens(&[9, 1], 2, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn top_k_keeps_best_and_lowest_index_on_ties() {
        let mut top = Vec::new();
        for (i, v) in [1.0, 3.0, 3.0, 2.0, 5.0].into_iter().enumerate() {
            push_top(&mut top, 3, v, i as u32);
        }
        assert_eq!(top, vec![(5.0, 4), (3.0, 1), (3.0, 2)]);
    }
}
