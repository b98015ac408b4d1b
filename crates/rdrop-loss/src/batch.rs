use candle_core::Tensor;

use crate::error::{LossError, Result};

/// Returns `[t; t]`: the tensor stacked on itself along the batch axis (dim 0), as blocks, so rows
/// `0..B` and `B..2B` are the two copies. The caller's tensor is left untouched.
pub fn duplicate(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 0 {
        return Err(LossError::NoBatchAxis {
            shape: t.shape().clone(),
        });
    }
    Ok(Tensor::cat(&[t, t], 0)?)
}

/// Duplicates every tensor of a batch (source ids, source mask, decoder input, ...) with
/// [`duplicate`], so all inputs of one forward pass agree on which row is which copy.
pub fn duplicate_all(tensors: &[&Tensor]) -> Result<Vec<Tensor>> {
    tensors.iter().map(|t| duplicate(t)).collect()
}

/// Splits a doubled batch (logits `[2B, ...]`) into its two copies `(rows 0..B, rows B..2B)`,
/// the inverse of [`duplicate`]. Both halves are views, no data is copied.
pub fn split_halves(t: &Tensor) -> Result<(Tensor, Tensor)> {
    if t.rank() == 0 {
        return Err(LossError::NoBatchAxis {
            shape: t.shape().clone(),
        });
    }
    let rows = t.dim(0)?;
    if rows % 2 != 0 {
        return Err(LossError::OddRows {
            shape: t.shape().clone(),
            rows,
        });
    }
    let b = rows / 2;
    Ok((t.narrow(0, 0, b)?, t.narrow(0, b, b)?))
}
