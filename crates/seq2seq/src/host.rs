//! Host-memory access for the inference model: a CPU f32 tensor's elements borrowed or copied
//! (through `rdrop-kernels`), and the tiled transpose that lays frozen weights out for the CPU.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// What needs the elements, for the error when a tensor is not contiguous f32 on the CPU.
const WHAT: &str = "host decoding cache";

/// Runs `f` on the elements of a contiguous f32 CPU tensor, without copying them.
pub(crate) fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    Ok(rdrop_kernels::with_host_f32(t, WHAT, f)?)
}

/// The elements of an f32 CPU tensor, in row-major order.
pub(crate) fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(rdrop_kernels::host_vec(t, WHAT)?)
}

/// `w` `[r, c]` transposed into a contiguous `[c, r]`. f32 goes through a tiled copy: candle's
/// strided copy computes every element's source index on its own, which made it most of the
/// start-up time of `rdrop translate`.
pub(crate) fn transpose(w: &Tensor) -> Result<Tensor> {
    const TILE: usize = 16;
    if w.dtype() != DType::F32 || !w.device().is_cpu() {
        return Ok(w.t()?.contiguous()?);
    }
    let (r, c) = w.dims2()?;
    let mut out = vec![0f32; r * c];
    with_host_f32(&w.contiguous()?, |src| {
        for i0 in (0..r).step_by(TILE) {
            for j0 in (0..c).step_by(TILE) {
                for i in i0..(i0 + TILE).min(r) {
                    for j in j0..(j0 + TILE).min(c) {
                        out[j * r + i] = src[i * c + j];
                    }
                }
            }
        }
    })?;
    Ok(Tensor::from_vec(out, (c, r), w.device())?)
}
