//! Reduction of [`LossParts`] over batches, updates or a validation set into per-token means,
//! as fairseq's criteria reduce their logging outputs: sums are added, divided once at the end.

use crate::loss::LossParts;
use crate::Result;
use candle_core::{DType, Tensor};

/// Sums of a criterion's logging parts over any number of batches, read to the host once per
/// batch. `ce` and `nll` are the mean over copies (R-Drop's two, plain CE's one), so the sums of
/// a baseline and an R-Drop run are comparable token for token.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSums {
    /// `Σ loss_sum`: what was optimised, before normalisation.
    pub loss: f64,
    /// `Σ` label-smoothed CE, averaged over copies.
    pub ce: f64,
    /// `Σ` plain NLL of the gold tokens, averaged over copies.
    pub nll: f64,
    /// `Σ` symmetric KL (before α); `None` until a batch with a KL term is added.
    pub kl: Option<f64>,
    /// Non-pad target tokens of the original (un-duplicated) batches.
    pub ntokens: u64,
    /// Batches added.
    pub batches: u64,
}

/// [`LossSums`] divided by their token count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossMeans {
    /// Loss per token.
    pub loss: f64,
    /// Label-smoothed CE per token and copy.
    pub ce: f64,
    /// Plain NLL per token and copy (perplexity = exp of it).
    pub nll: f64,
    /// Symmetric KL per token (before α), if any batch had one.
    pub kl: Option<f64>,
    /// The token count the means divide by.
    pub ntokens: u64,
}

fn read(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn mean_of(ts: &[Tensor]) -> Result<f64> {
    let mut s = 0.0;
    for t in ts {
        s += read(t)?;
    }
    Ok(s / ts.len().max(1) as f64)
}

impl LossSums {
    /// The sums of one batch (reads its parts back from the device).
    pub fn of(parts: &LossParts) -> Result<Self> {
        Ok(Self {
            loss: read(&parts.loss_sum)?,
            ce: mean_of(&parts.ce_sum)?,
            nll: mean_of(&parts.nll_sum)?,
            kl: parts.kl_sum.as_ref().map(read).transpose()?,
            ntokens: parts.ntokens as u64,
            batches: 1,
        })
    }

    /// Adds another set of sums (a batch, an update, a window).
    pub fn add(&mut self, other: &LossSums) {
        self.loss += other.loss;
        self.ce += other.ce;
        self.nll += other.nll;
        self.kl = match (self.kl, other.kl) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.ntokens += other.ntokens;
        self.batches += other.batches;
    }

    /// Whether what was optimised is a finite number (a NaN/inf batch must not be stepped on).
    pub fn is_finite(&self) -> bool {
        self.loss.is_finite()
    }

    /// Per-token means (a zero count divides by one, giving zeros).
    pub fn means(&self) -> LossMeans {
        let n = self.ntokens.max(1) as f64;
        LossMeans {
            loss: self.loss / n,
            ce: self.ce / n,
            nll: self.nll / n,
            kl: self.kl.map(|k| k / n),
            ntokens: self.ntokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn parts(loss: f32, ce: &[f32], nll: &[f32], kl: Option<f32>, ntokens: usize) -> LossParts {
        let t = |x: f32| Tensor::new(x, &Device::Cpu).unwrap();
        LossParts {
            loss: t(loss / ntokens as f32),
            loss_sum: t(loss),
            ce_sum: ce.iter().map(|&x| t(x)).collect(),
            nll_sum: nll.iter().map(|&x| t(x)).collect(),
            kl_sum: kl.map(t),
            ntokens,
        }
    }

    #[test]
    fn sums_average_copies_and_divide_once() {
        // R-Drop batch: CE copies 3 and 5 (mean 4), NLL 2 and 4 (mean 3), KL 1, loss 3+5+α·1 = 10
        // at α 2, over 4 tokens; then a plain-CE batch (no KL) of CE 6, NLL 5, 2 tokens.
        let mut s = LossSums::of(&parts(10.0, &[3.0, 5.0], &[2.0, 4.0], Some(1.0), 4)).unwrap();
        s.add(&LossSums::of(&parts(6.0, &[6.0], &[5.0], None, 2)).unwrap());
        assert_eq!((s.ntokens, s.batches), (6, 2));
        let m = s.means();
        // loss (10+6)/6, ce (4+6)/6, nll (3+5)/6, kl 1/6.
        assert_eq!(m.loss, 16.0 / 6.0);
        assert_eq!(m.ce, 10.0 / 6.0);
        assert_eq!(m.nll, 8.0 / 6.0);
        assert_eq!(m.kl, Some(1.0 / 6.0));
    }

    #[test]
    fn empty_sums_are_zero_and_nan_is_caught() {
        let m = LossSums::default().means();
        assert_eq!((m.loss, m.ce, m.kl), (0.0, 0.0, None));
        let nan = LossSums::of(&parts(f32::NAN, &[1.0], &[1.0], None, 1)).unwrap();
        assert!(!nan.is_finite());
    }
}
