//! The inference model's output layer: `lm_head` and `final_logits_bias` laid out for the CPU's
//! matrix product (column panels in f32, one transpose otherwise), or the model's own elsewhere.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::host::{host_vec, with_host_f32};
use crate::model::{dims_with_last, MarianModel};
use crate::ops;

/// Output columns per panel of [`OutputHead::Panels`].
const PANEL: usize = 64;

/// The output layer's weights, `[V, D]`, in the layout its product runs fastest with. The
/// embedding lookups need the `[V, D]` original, so tied weights are held twice on the CPU.
#[derive(Debug, Clone)]
pub(super) enum OutputHead {
    /// CPU f32: `[P, D, PANEL]`, panel `p` holding the transposed rows `p·PANEL..` (zero past `V`), and
    /// `final_logits_bias` on the host. The product reads one `[D, V]` transpose with a stride of
    /// `4·V` bytes between its rows, a panel with `4·PANEL`: 1.6x faster for 32 rows and a
    /// vocabulary of 8000 (2.1 vs 1.3 ms on one core), the same for 128 rows.
    Panels { panels: Tensor, bias: Vec<f32> },
    /// Other dtypes on the CPU: `[D, V]` and the bias `[V]`.
    Transposed { weight: Tensor, bias: Tensor },
    /// Other devices: the model's own output layer.
    Model,
}

impl OutputHead {
    /// The head for `model`'s (frozen) output weights.
    pub(super) fn new(model: &MarianModel) -> Result<Self> {
        let (lm_head, bias) = model.output_weights();
        if !lm_head.device().is_cpu() {
            return Ok(OutputHead::Model);
        }
        if lm_head.dtype() != DType::F32 {
            return Ok(OutputHead::Transposed {
                weight: lm_head.t()?.contiguous()?,
                bias: bias.flatten_all()?,
            });
        }
        let (v, d) = lm_head.dims2()?;
        let p = v.div_ceil(PANEL);
        // panels[p, k, j] = lm_head[p·PANEL + j, k], zero past the vocabulary.
        let mut panels = vec![0f32; p * d * PANEL];
        with_host_f32(&lm_head.contiguous()?, |w| {
            for (row, src) in w.chunks_exact(d).enumerate() {
                let (pi, j) = (row / PANEL, row % PANEL);
                let panel = &mut panels[pi * d * PANEL..(pi + 1) * d * PANEL];
                for (k, &x) in src.iter().enumerate() {
                    panel[k * PANEL + j] = x;
                }
            }
        })?;
        let panels = Tensor::from_vec(panels, (p, d, PANEL), lm_head.device())?;
        Ok(OutputHead::Panels {
            panels,
            bias: host_vec(&bias.to_dtype(DType::F32)?.flatten_all()?)?,
        })
    }

    /// Hidden states `[..., D]` -> logits `[..., V]`.
    pub(super) fn logits(&self, model: &MarianModel, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let d = model.config().d_model;
        let rows = hidden.elem_count() / d;
        let (flat, v) = match self {
            OutputHead::Panels { panels, bias } => (
                panel_logits(&hidden.reshape((rows, d))?, panels, bias)?,
                bias.len(),
            ),
            OutputHead::Transposed { weight, bias } => {
                let flat = hidden.reshape((rows, d))?.matmul(weight)?;
                (ops::add_bias(&flat, bias)?, bias.dim(0)?)
            }
            OutputHead::Model => return model.logits(hidden),
        };
        Ok(flat.reshape(dims_with_last(&dims, v))?)
    }
}

/// `x` `[rows, D]` times the panels, plus the bias: logits `[rows, V]`.
fn panel_logits(x: &Tensor, panels: &Tensor, bias: &[f32]) -> Result<Tensor> {
    let (rows, d) = x.dims2()?;
    let p = panels.dim(0)?;
    let v = bias.len();
    let y = x
        .contiguous()?
        .unsqueeze(0)?
        .broadcast_as((p, rows, d))?
        .matmul(panels)?;
    let mut out = vec![0f32; rows * v];
    with_host_f32(&y, |y| {
        for pi in 0..p {
            let c0 = pi * PANEL;
            let w = PANEL.min(v - c0);
            let b = &bias[c0..c0 + w];
            for r in 0..rows {
                let src = &y[(pi * rows + r) * PANEL..][..w];
                let dst = &mut out[r * v + c0..][..w];
                for ((o, &s), &bv) in dst.iter_mut().zip(src).zip(b) {
                    *o = s + bv;
                }
            }
        }
    })?;
    Ok(Tensor::from_vec(out, (rows, v), x.device())?)
}
