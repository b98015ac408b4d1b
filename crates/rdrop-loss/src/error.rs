use candle_core::{DType, Shape};

/// Everything the criteria can reject, each naming the shapes or values involved.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// Logits must be `[rows, T, V]`.
    #[error("logits must have shape [rows, T, V], got {shape:?}")]
    LogitsRank {
        /// Shape of the logits that were passed.
        shape: Shape,
    },
    /// Logits must be a floating-point tensor.
    #[error("logits must be f16, bf16, f32 or f64, got {dtype:?} for logits of shape {shape:?}")]
    LogitsDType {
        /// Dtype of the logits.
        dtype: DType,
        /// Shape of the logits.
        shape: Shape,
    },
    /// Targets must hold integer token ids.
    #[error("target must hold integer token ids (u8, u32 or i64), got {dtype:?} for target of shape {shape:?}")]
    TargetDType {
        /// Dtype of the target.
        dtype: DType,
        /// Shape of the target.
        shape: Shape,
    },
    /// Logits and targets do not describe the same batch.
    #[error(
        "target shape {target:?} does not fit logits shape {logits:?}: expected target {expected}"
    )]
    ShapeMismatch {
        /// Shape of the logits.
        logits: Shape,
        /// Shape of the target.
        target: Shape,
        /// The target shape that would have fitted, with why.
        expected: String,
    },
    /// A doubled batch must have an even number of rows to split into two copies.
    #[error("cannot split a tensor of shape {shape:?} into two copies: {rows} rows is odd")]
    OddRows {
        /// Shape of the tensor to split.
        shape: Shape,
        /// Its row count (first dimension).
        rows: usize,
    },
    /// Duplication and splitting act on the first (batch) axis, which a scalar lacks.
    #[error("tensor of shape {shape:?} has no batch axis to duplicate or split")]
    NoBatchAxis {
        /// Shape of the offending tensor.
        shape: Shape,
    },
    /// A non-pad target id is outside the vocabulary.
    #[error("target id {id} is outside the vocabulary of {vocab} (logits shape {logits:?}, target shape {target:?})")]
    TargetOutOfRange {
        /// The offending id (i64 so negative ids can be reported).
        id: i64,
        /// Vocabulary size, the last dimension of the logits.
        vocab: usize,
        /// Shape of the logits.
        logits: Shape,
        /// Shape of the target.
        target: Shape,
    },
    /// Label smoothing must lie in [0, 1), and needs at least two classes when positive.
    #[error("label smoothing eps must be in [0, 1), with a vocabulary of at least 2 when positive; got eps {eps} (vocabulary {vocab}, 0 = not known yet)")]
    BadEpsilon {
        /// The smoothing value.
        eps: f64,
        /// Vocabulary size, 0 when checked before any logits were seen.
        vocab: usize,
    },
    /// The KL weight must be finite and non-negative.
    #[error("R-Drop alpha must be finite and >= 0, got {0}")]
    BadAlpha(f64),
    /// A tensor operation failed (device, out of memory, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, LossError>;
