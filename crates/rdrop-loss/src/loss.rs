use candle_core::{DType, Tensor, D};

use crate::error::{LossError, Result};
use crate::fused;

/// Summed label-smoothed cross entropy of one batch, as returned by [`label_smoothed_nll_loss`].
#[derive(Debug, Clone)]
pub struct SmoothedNll {
    /// Label-smoothed CE summed over the non-pad tokens (scalar, f32 or f64).
    pub loss_sum: Tensor,
    /// Plain negative log-likelihood of the gold tokens, summed over the non-pad tokens (scalar).
    pub nll_sum: Tensor,
    /// Number of non-pad target tokens: the denominator for a per-token loss.
    pub ntokens: usize,
}

/// Every part of a criterion's loss. Sums are scalar tensors still attached to the graph;
/// [`LossParts::values`] reads them as per-token numbers for logging. To accumulate gradients
/// over several micro-batches, backpropagate each `loss_sum`, add up their `ntokens`, and divide
/// the gradients by that total once, which is what `loss` does for a single batch.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// `loss_sum / max(ntokens, 1)`: the scalar to call `backward` on. Already normalised.
    pub loss: Tensor,
    /// The loss before normalisation: `Σ ce_sum + α · kl_sum` (α term only for R-Drop).
    pub loss_sum: Tensor,
    /// Label-smoothed CE summed over non-pad tokens, one entry per copy (one for plain CE,
    /// two for R-Drop: rows `0..B`, then rows `B..2B`).
    pub ce_sum: Vec<Tensor>,
    /// Plain NLL of the gold tokens summed over non-pad tokens, one entry per copy.
    pub nll_sum: Vec<Tensor>,
    /// R-Drop only: `Σ_tokens (KL(P1‖P2) + KL(P2‖P1)) / 2`, not yet weighted by α.
    pub kl_sum: Option<Tensor>,
    /// Non-pad target tokens of the original (un-duplicated) batch.
    pub ntokens: usize,
}

/// [`LossParts`] read back as plain numbers, each divided by the token count.
#[derive(Debug, Clone, PartialEq)]
pub struct LossValues {
    /// The normalised loss (same as `LossParts::loss`).
    pub loss: f64,
    /// Label-smoothed CE per token, per copy: comparable with a baseline's training loss.
    pub ce: Vec<f64>,
    /// Plain NLL per token, per copy (perplexity = exp of it).
    pub nll: Vec<f64>,
    /// Symmetric KL per token (before α), R-Drop only.
    pub kl: Option<f64>,
    /// Non-pad target tokens of the original batch.
    pub ntokens: usize,
}

impl LossParts {
    /// Reads every part back to the host and divides the sums by `max(ntokens, 1)`.
    pub fn values(&self) -> Result<LossValues> {
        let n = self.ntokens.max(1) as f64;
        let read = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        Ok(LossValues {
            loss: read(&self.loss)?,
            ce: self
                .ce_sum
                .iter()
                .map(|t| Ok(read(t)? / n))
                .collect::<Result<_>>()?,
            nll: self
                .nll_sum
                .iter()
                .map(|t| Ok(read(t)? / n))
                .collect::<Result<_>>()?,
            kl: self
                .kl_sum
                .as_ref()
                .map(|t| read(t).map(|x| x / n))
                .transpose()?,
            ntokens: self.ntokens,
        })
    }
}

/// Validated inputs: logits in the compute dtype and u32 targets whose non-pad ids are in range.
struct Prepared {
    logits: Tensor,
    /// The target as u32, pads included (the fused kernels skip them themselves).
    raw_target: Tensor,
    /// The target with pads replaced by 0, safe to gather with.
    target: Tensor,
    /// 1 where the target is not padding (u8, `[rows, T]`).
    mask: Tensor,
    ntokens: usize,
}

/// Checks ranks, dtypes and shapes; `target_rows` is the row count the target must have.
/// `expected` explains that row count in the error message.
fn prepare(
    logits: &Tensor,
    target: &Tensor,
    pad_id: u32,
    target_rows: usize,
    expected: &str,
) -> Result<Prepared> {
    if logits.rank() != 3 {
        return Err(LossError::LogitsRank {
            shape: logits.shape().clone(),
        });
    }
    // Half-precision logits are upcast: log-softmax and the KL lose too much in 16 bits.
    // f64 stays f64 so that finite-difference checks are meaningful.
    let compute = match logits.dtype() {
        DType::F16 | DType::BF16 | DType::F32 => DType::F32,
        DType::F64 => DType::F64,
        dtype => {
            return Err(LossError::LogitsDType {
                dtype,
                shape: logits.shape().clone(),
            })
        }
    };
    let (_, t, v) = logits.dims3()?;
    if target.dims() != [target_rows, t] {
        return Err(LossError::ShapeMismatch {
            logits: logits.shape().clone(),
            target: target.shape().clone(),
            expected: format!("[{target_rows}, {t}] ({expected})"),
        });
    }
    let out_of_range = |id: i64| LossError::TargetOutOfRange {
        id,
        vocab: v,
        logits: logits.shape().clone(),
        target: target.shape().clone(),
    };
    let target_u32 = match target.dtype() {
        DType::U32 => target.clone(),
        DType::U8 => target.to_dtype(DType::U32)?,
        DType::I64 => {
            if target.elem_count() > 0 {
                let min = target.flatten_all()?.min(0)?.to_scalar::<i64>()?;
                if min < 0 {
                    return Err(out_of_range(min));
                }
            }
            target.to_dtype(DType::U32)?
        }
        dtype => {
            return Err(LossError::TargetDType {
                dtype,
                shape: target.shape().clone(),
            })
        }
    };
    let mask = target_u32.ne(pad_id)?;
    let raw_target = target_u32.clone();
    // Pad positions gather index 0 instead of the pad id, which need not be a vocabulary entry.
    let safe_target = mask.where_cond(&target_u32, &target_u32.zeros_like()?)?;
    let (ntokens, max_id) = if target.elem_count() > 0 {
        let ntokens = mask.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
        let max_id = safe_target.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        (ntokens, max_id)
    } else {
        (0, 0)
    };
    if max_id as usize >= v {
        return Err(out_of_range(max_id as i64));
    }
    Ok(Prepared {
        logits: logits.to_dtype(compute)?,
        raw_target,
        target: safe_target,
        mask,
        ntokens,
    })
}

fn check_eps(eps: f64, vocab: usize) -> Result<()> {
    if !(0.0..1.0).contains(&eps) || (eps > 0.0 && vocab < 2) {
        return Err(LossError::BadEpsilon { eps, vocab });
    }
    Ok(())
}

pub(crate) fn check_alpha(alpha: f64) -> Result<()> {
    if !alpha.is_finite() || alpha < 0.0 {
        return Err(LossError::BadAlpha(alpha));
    }
    Ok(())
}

/// Log-softmax over the vocabulary. The row maximum is detached: it only shifts the exponent
/// for stability and its gradient cancels exactly, so tracking it would only cost time.
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Per-token label-smoothed loss and NLL, `[rows, T]` each, unmasked.
///
/// fairseq's convention: the gold class gets probability `1 − ε` and every other class
/// `ε / (V − 1)`, so the loss is `(1 − ε − ε/(V−1)) · nll + ε/(V−1) · Σ_v −log p_v`.
fn token_losses(lprobs: &Tensor, target: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let v = lprobs.dim(D::Minus1)?;
    let nll = lprobs
        .gather(&target.unsqueeze(2)?.contiguous()?, 2)?
        .squeeze(2)?
        .neg()?;
    if eps == 0.0 {
        return Ok((nll.clone(), nll));
    }
    let eps_i = eps / (v as f64 - 1.0);
    let smooth = lprobs.sum(D::Minus1)?.neg()?;
    let loss = ((&nll * (1.0 - eps - eps_i))? + (smooth * eps_i)?)?;
    Ok((loss, nll))
}

/// Sum of `x` over the positions where `mask` is set. `where_cond` rather than a multiply, so a
/// non-finite value at a padding position cannot turn the sum into NaN.
fn masked_sum(x: &Tensor, mask: &Tensor, zeros: &Tensor) -> Result<Tensor> {
    Ok(mask.where_cond(x, zeros)?.sum_all()?)
}

/// Label-smoothed cross entropy, summed, like fairseq's `label_smoothed_nll_loss(reduce=True)`.
///
/// `logits` are `[N, T, V]` (any float dtype; half precision is computed in f32), `target` is
/// `[N, T]` token ids (u32, u8 or i64); positions equal to `pad_id` contribute nothing.
/// Smoothing gives `1 − eps` to the gold token and `eps / (V − 1)` to each other token.
/// Returns the sums and the non-pad token count; divide by `ntokens` for a per-token loss.
pub fn label_smoothed_nll_loss(
    logits: &Tensor,
    target: &Tensor,
    pad_id: u32,
    eps: f64,
) -> Result<SmoothedNll> {
    let rows = if logits.rank() == 3 {
        logits.dim(0)?
    } else {
        0
    };
    let p = prepare(
        logits,
        target,
        pad_id,
        rows,
        "same rows and length as the logits",
    )?;
    check_eps(eps, p.logits.dim(2)?)?;
    if fused::available(&p.logits) {
        nll_fused(&p, pad_id, eps)
    } else {
        nll_composed(&p, eps)
    }
}

fn nll_fused(p: &Prepared, pad_id: u32, eps: f64) -> Result<SmoothedNll> {
    let stats = fused::TokenStats {
        pad: pad_id,
        eps,
        pair: false,
    }
    .apply(&flat_rows(&p.logits)?, &p.raw_target.flatten_all()?)?;
    Ok(SmoothedNll {
        loss_sum: column_sum(&stats, fused::single::CE)?,
        nll_sum: column_sum(&stats, fused::single::NLL)?,
        ntokens: p.ntokens,
    })
}

/// The same as [`nll_fused`] from differentiable tensor ops, for devices without the kernels.
fn nll_composed(p: &Prepared, eps: f64) -> Result<SmoothedNll> {
    let lprobs = log_softmax(&p.logits)?;
    let (loss, nll) = token_losses(&lprobs, &p.target, eps)?;
    let zeros = loss.zeros_like()?;
    Ok(SmoothedNll {
        loss_sum: masked_sum(&loss, &p.mask, &zeros)?,
        nll_sum: masked_sum(&nll, &p.mask, &zeros)?,
        ntokens: p.ntokens,
    })
}

/// Label-smoothed CE as a [`LossParts`] with a single copy, normalised by its token count.
pub fn label_smoothed_ce(
    logits: &Tensor,
    target: &Tensor,
    pad_id: u32,
    eps: f64,
) -> Result<LossParts> {
    let s = label_smoothed_nll_loss(logits, target, pad_id, eps)?;
    Ok(LossParts {
        loss: (&s.loss_sum / s.ntokens.max(1) as f64)?,
        loss_sum: s.loss_sum.clone(),
        ce_sum: vec![s.loss_sum],
        nll_sum: vec![s.nll_sum],
        kl_sum: None,
        ntokens: s.ntokens,
    })
}

/// The R-Drop loss of one forward pass over a doubled batch.
///
/// `logits` are `[2B, T, V]` for the batch duplicated as blocks `[x; x]` (see
/// [`crate::duplicate`]); `target` is the ORIGINAL `[B, T]` target, not the doubled one.
/// With `P1` = rows `0..B` and `P2` = rows `B..2B`:
///
/// `loss_sum = CE(P1) + CE(P2) + α · Σ_tokens (KL(P1‖P2) + KL(P2‖P1)) / 2`
///
/// with label-smoothed CE as in [`label_smoothed_nll_loss`], the KL summed over the
/// vocabulary at each non-pad position of `target`, nothing detached, and
/// `loss = loss_sum / ntokens` where `ntokens` counts the non-pad tokens of `target` (the
/// original batch, not the doubled one). One log-softmax, in f32 for half-precision logits,
/// feeds both CE and KL. When `alpha == 0` the KL is still reported but computed off the graph.
pub fn rdrop_loss(
    logits: &Tensor,
    target: &Tensor,
    pad_id: u32,
    eps: f64,
    alpha: f64,
) -> Result<LossParts> {
    check_alpha(alpha)?;
    if logits.rank() != 3 {
        return Err(LossError::LogitsRank {
            shape: logits.shape().clone(),
        });
    }
    let rows = logits.dim(0)?;
    if rows % 2 != 0 {
        return Err(LossError::OddRows {
            shape: logits.shape().clone(),
            rows,
        });
    }
    let b = rows / 2;
    let p = prepare(
        logits,
        target,
        pad_id,
        b,
        "the original batch: half the rows of the doubled logits",
    )?;
    check_eps(eps, p.logits.dim(2)?)?;
    if fused::available(&p.logits) {
        rdrop_fused(&p, pad_id, eps, alpha)
    } else {
        rdrop_composed(&p, eps, alpha)
    }
}

/// [`rdrop_loss`] from differentiable tensor ops, for devices without the fused kernels.
fn rdrop_composed(p: &Prepared, eps: f64, alpha: f64) -> Result<LossParts> {
    let lprobs = log_softmax(&p.logits)?;
    let (lp1, lp2) = crate::split_halves(&lprobs)?;
    // Both copies share the original target; doubling it would only double the gather index.
    let zeros = p.mask.to_dtype(lprobs.dtype())?.zeros_like()?;
    let mut ce_sum = Vec::with_capacity(2);
    let mut nll_sum = Vec::with_capacity(2);
    for lp in [&lp1, &lp2] {
        let (loss, nll) = token_losses(lp, &p.target, eps)?;
        ce_sum.push(masked_sum(&loss, &p.mask, &zeros)?);
        nll_sum.push(masked_sum(&nll, &p.mask, &zeros)?);
    }

    // KL(P1‖P2) + KL(P2‖P1) = Σ_v (p1 − p2)(log p1 − log p2): one product instead of two.
    let (lp1, lp2) = if alpha == 0.0 {
        (lp1.detach(), lp2.detach())
    } else {
        (lp1, lp2)
    };
    let dp = (lp1.exp()? - lp2.exp()?)?;
    let dlp = (&lp1 - &lp2)?;
    let sym_kl = ((dp * dlp)?.sum(D::Minus1)? * 0.5)?;
    let kl_sum = masked_sum(&sym_kl, &p.mask, &zeros)?;
    rdrop_parts(ce_sum, nll_sum, kl_sum, alpha, p.ntokens)
}

/// Both R-Drop paths' common end: `loss_sum = CE1 + CE2 + α·KL`, normalised by `ntokens`; with
/// `α = 0` the KL is reported off the graph.
fn rdrop_parts(
    ce_sum: Vec<Tensor>,
    nll_sum: Vec<Tensor>,
    kl_sum: Tensor,
    alpha: f64,
    ntokens: usize,
) -> Result<LossParts> {
    let ce_total = (&ce_sum[0] + &ce_sum[1])?;
    let (loss_sum, kl_sum) = if alpha == 0.0 {
        (ce_total, kl_sum.detach())
    } else {
        ((ce_total + (&kl_sum * alpha)?)?, kl_sum)
    };
    Ok(LossParts {
        loss: (&loss_sum / ntokens.max(1) as f64)?,
        loss_sum,
        ce_sum,
        nll_sum,
        kl_sum: Some(kl_sum),
        ntokens,
    })
}

/// `[N, T, V]` -> `[N·T, V]`.
fn flat_rows(logits: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    Ok(logits.reshape(((), v))?)
}

/// Sum of one column of the fused statistics (pad rows are exactly zero there).
fn column_sum(stats: &Tensor, col: usize) -> Result<Tensor> {
    Ok(stats.narrow(1, col, 1)?.sum_all()?)
}

/// [`rdrop_loss`] on the fused kernels: the same quantities in two passes over the logits.
fn rdrop_fused(p: &Prepared, pad_id: u32, eps: f64, alpha: f64) -> Result<LossParts> {
    use fused::pair;
    let stats = fused::TokenStats {
        pad: pad_id,
        eps,
        pair: true,
    }
    .apply(&flat_rows(&p.logits)?, &p.raw_target.flatten_all()?)?;
    let ce_sum = vec![
        column_sum(&stats, pair::CE1)?,
        column_sum(&stats, pair::CE2)?,
    ];
    let nll_sum = vec![
        column_sum(&stats, pair::NLL1)?,
        column_sum(&stats, pair::NLL2)?,
    ];
    let kl = ((column_sum(&stats, pair::KL12)? + column_sum(&stats, pair::KL21)?)? * 0.5)?;
    rdrop_parts(ce_sum, nll_sum, kl, alpha, p.ntokens)
}

#[cfg(test)]
mod tests {
    //! The fused kernels against the composed ops: every part's value and its own gradient.
    use super::*;
    use candle_core::{Device, Var};

    /// Random logits `[rows, T, V]` (f64) and a `[rows / copies, T]` target with padding at
    /// different places, plus one NaN logit at a pad position that must not leak.
    fn inputs(rows: usize, copies: usize, t: usize, v: usize, pad: u32) -> (Var, Tensor) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut x: Vec<f64> = (0..rows * t * v).map(|_| 6.0 * next() - 3.0).collect();
        let b = rows / copies;
        let target: Vec<u32> = (0..b * t)
            .map(|i| {
                let (row, pos) = (i / t, i % t);
                if pos + row > t {
                    pad
                } else {
                    (next() * v as f64) as u32 % v as u32
                }
            })
            .collect();
        if let Some(i) = target.iter().position(|&id| id == pad) {
            x[i * v] = f64::NAN;
        }
        let logits = Var::from_vec(x, (rows, t, v), &Device::Cpu).unwrap();
        let target = Tensor::from_vec(target, (b, t), &Device::Cpu).unwrap();
        (logits, target)
    }

    fn close(what: &str, a: &Tensor, b: &Tensor) {
        let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if y.is_nan() {
                // The NaN at a pad position reaches the composed gradient (through the row's
                // softmax); the fused kernels never read pad rows.
                assert_eq!(
                    *x, 0.0,
                    "{what}[{i}]: fused should give 0 where composed is NaN"
                );
                continue;
            }
            assert!(
                (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                "{what}[{i}]: fused {x} vs composed {y}"
            );
        }
    }

    /// Compares value and gradient of each named part.
    fn compare(logits: &Var, fused: Vec<(&str, Tensor)>, composed: Vec<(&str, Tensor)>) {
        for ((name, f), (_, c)) in fused.iter().zip(&composed) {
            close(name, f, c);
            let gf = f.backward().unwrap();
            let gc = c.backward().unwrap();
            match (gf.get(logits.as_tensor()), gc.get(logits.as_tensor())) {
                (Some(a), Some(b)) => close(&format!("grad of {name}"), a, b),
                (None, None) => {}
                _ => panic!("{name}: only one path has a gradient"),
            }
        }
    }

    #[test]
    fn fused_rdrop_matches_composed_part_by_part() {
        let pad = 1;
        for (eps, alpha) in [(0.0, 1.0), (0.1, 5.0), (0.1, 0.0)] {
            let (logits, target) = inputs(6, 2, 5, 11, pad);
            let p = prepare(&logits, &target, pad, 3, "test").unwrap();
            assert!(fused::available(&p.logits));
            let f = rdrop_fused(&p, pad, eps, alpha).unwrap();
            let c = rdrop_composed(&p, eps, alpha).unwrap();
            let parts = |x: &LossParts| {
                vec![
                    ("loss", x.loss.clone()),
                    ("ce1", x.ce_sum[0].clone()),
                    ("ce2", x.ce_sum[1].clone()),
                    ("nll1", x.nll_sum[0].clone()),
                    ("nll2", x.nll_sum[1].clone()),
                    ("kl", x.kl_sum.clone().unwrap()),
                ]
            };
            compare(&logits, parts(&f), parts(&c));
        }
    }

    #[test]
    fn fused_ce_matches_composed_part_by_part() {
        let pad = 0;
        for eps in [0.0, 0.1, 0.3] {
            let (logits, target) = inputs(4, 1, 6, 9, pad);
            let p = prepare(&logits, &target, pad, 4, "test").unwrap();
            let f = nll_fused(&p, pad, eps).unwrap();
            let c = nll_composed(&p, eps).unwrap();
            let parts =
                |x: &SmoothedNll| vec![("ce", x.loss_sum.clone()), ("nll", x.nll_sum.clone())];
            compare(&logits, parts(&f), parts(&c));
        }
    }
}
