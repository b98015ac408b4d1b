use std::fmt;

use candle_core::Tensor;

use crate::error::Result;
use crate::loss::{check_alpha, label_smoothed_ce, rdrop_loss, LossParts};

/// A training criterion: turns a forward pass's logits into a loss and its parts.
pub trait Criterion: fmt::Debug + Send + Sync {
    /// Whether the forward pass must run on the doubled batch `[x; x]` (see
    /// [`crate::duplicate_all`]) so that `loss` receives `[2B, T, V]` logits.
    fn needs_doubled_batch(&self) -> bool;

    /// Loss for `logits` (`[B, T, V]`, or `[2B, T, V]` when [`Self::needs_doubled_batch`]) and
    /// the ORIGINAL batch's `[B, T]` target in both cases.
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Result<LossParts>;
}

/// Label-smoothed cross entropy over one normal forward pass (the baseline criterion).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelSmoothedCe {
    /// Label smoothing ε in [0, 1): gold gets `1 − ε`, every other class `ε / (V − 1)`.
    pub eps: f64,
    /// Target id that marks padding.
    pub pad_id: u32,
}

impl Criterion for LabelSmoothedCe {
    fn needs_doubled_batch(&self) -> bool {
        false
    }

    fn loss(&self, logits: &Tensor, target: &Tensor) -> Result<LossParts> {
        label_smoothed_ce(logits, target, self.pad_id, self.eps)
    }
}

/// R-Drop: label-smoothed CE on both copies of a doubled batch plus α times the symmetric KL
/// between them (see [`crate::rdrop_loss`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RDrop {
    /// Label smoothing ε in [0, 1).
    pub eps: f64,
    /// Weight α of the symmetric KL term (5 for MT from scratch, ~0.7 for fine-tuning).
    pub alpha: f64,
    /// Target id that marks padding.
    pub pad_id: u32,
}

impl Criterion for RDrop {
    fn needs_doubled_batch(&self) -> bool {
        true
    }

    fn loss(&self, logits: &Tensor, target: &Tensor) -> Result<LossParts> {
        rdrop_loss(logits, target, self.pad_id, self.eps, self.alpha)
    }
}

/// Which criterion a training recipe asks for; [`CriterionConfig::build`] makes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CriterionConfig {
    /// Plain label-smoothed cross entropy.
    LabelSmoothedCe {
        /// Label smoothing ε.
        eps: f64,
    },
    /// R-Drop on a doubled batch.
    RDrop {
        /// Label smoothing ε.
        eps: f64,
        /// Weight of the symmetric KL term.
        alpha: f64,
    },
}

impl CriterionConfig {
    /// Validates ε (and α) and returns the criterion for targets padded with `pad_id`.
    pub fn build(self, pad_id: u32) -> Result<Box<dyn Criterion>> {
        // The vocabulary is unknown here; V ≥ 2 is checked again on the first batch.
        let check_eps = |eps: f64| {
            if (0.0..1.0).contains(&eps) {
                Ok(())
            } else {
                Err(crate::LossError::BadEpsilon { eps, vocab: 0 })
            }
        };
        Ok(match self {
            CriterionConfig::LabelSmoothedCe { eps } => {
                check_eps(eps)?;
                Box::new(LabelSmoothedCe { eps, pad_id })
            }
            CriterionConfig::RDrop { eps, alpha } => {
                check_eps(eps)?;
                check_alpha(alpha)?;
                Box::new(RDrop { eps, alpha, pad_id })
            }
        })
    }
}

impl fmt::Display for CriterionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CriterionConfig::LabelSmoothedCe { eps } => {
                write!(f, "label-smoothed cross entropy (eps {eps})")
            }
            CriterionConfig::RDrop { eps, alpha } => {
                write!(f, "R-Drop (eps {eps}, alpha {alpha})")
            }
        }
    }
}
