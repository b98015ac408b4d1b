//! The blocks of transformers' modeling_marian.py: `MarianAttention`, the feed-forward block,
//! `MarianEncoderLayer` and `MarianDecoderLayer`, with the layer norm and dense layers they use.
//!
//! Every block reads its weights from a `VarBuilder` under the Hugging Face names and runs in
//! [`Mode::Eval`] or [`Mode::Train`]; `frozen` gives the detached copy the inference model runs on.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::cache::DecoderCache;
use crate::config::{Activation, Config};
use crate::dropout::Mode;
use crate::error::{Error, Result};
use crate::host::transpose;
use crate::ops;

/// transformers' `nn.LayerNorm` default.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Additive mask value for excluded attention positions: exp() of it underflows to exactly 0.
pub(crate) fn mask_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -6.0e4,
        _ => -1.0e9,
    }
}

/// The blocks' layer norm, applied to the residual sum (candle_nn's `LayerNorm` takes a fused
/// kernel on contiguous input that passes no gradient to its weights).
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(d: usize, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn frozen(&self) -> Self {
        LayerNorm {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
        }
    }

    /// The post-norm residual `LayerNorm(x + h)`, fused (see [`ops::residual_layer_norm`]).
    fn forward_residual(&self, x: &Tensor, h: &Tensor) -> Result<Tensor> {
        Ok(ops::residual_layer_norm(
            x,
            h,
            &self.weight,
            &self.bias,
            LAYER_NORM_EPS,
        )?)
    }
}

/// A dense layer `x·Wᵀ + b` with HF's `weight` `[out, in]` and `bias` `[out]`, initialised like
/// candle_nn's `linear`. The product runs on `x` flattened to rows, and the bias add's backward
/// is a matrix product (see [`ops::add_bias`]).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Tensor,
}

/// How a [`Linear`] holds its weight.
#[derive(Debug, Clone)]
enum Weight {
    /// `[out, in]`, as transformers stores it: what [`Linear::new`] reads and training updates.
    Rows(Tensor),
    /// `[in, out]`, contiguous: only in [`Linear::frozen`] copies on the CPU, where the matrix
    /// product packs a `[out, in]` right-hand side into column panels on every call, which costs
    /// more than the product itself for decoding's few rows (1.3-5x on 32 rows,
    /// `examples/matmul_layouts.rs`).
    Columns(Tensor),
}

impl Linear {
    fn new(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        let l = candle_nn::linear(d_in, d_out, vb)?;
        let bias = l
            .bias()
            .cloned()
            .ok_or_else(|| Error::Input("linear layer without a bias".into()))?;
        Ok(Linear {
            weight: Weight::Rows(l.weight().clone()),
            bias,
        })
    }

    /// A copy on the weights' current values that nothing trains, laid out for decoding.
    fn frozen(&self) -> Result<Self> {
        let weight = match &self.weight {
            Weight::Rows(w) if w.device().is_cpu() => Weight::Columns(transpose(&w.detach())?),
            Weight::Rows(w) => Weight::Rows(w.detach()),
            Weight::Columns(w) => Weight::Columns(w.clone()),
        };
        Ok(Linear {
            weight,
            bias: self.bias.detach(),
        })
    }

    fn d_out(&self) -> Result<usize> {
        Ok(match &self.weight {
            Weight::Rows(w) => w.dim(0)?,
            Weight::Columns(w) => w.dim(1)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, None)
    }

    /// `act(x·Wᵀ + b)`, the bias and activation in one fused op.
    fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.forward_then(x, Some(act))
    }

    fn forward_then(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = dims.last().copied().unwrap_or(1);
        let rows = x.elem_count() / d_in.max(1);
        let x = x.reshape((rows, d_in))?;
        let y = match &self.weight {
            Weight::Rows(w) => x.matmul(&w.t()?)?,
            Weight::Columns(w) => x.matmul(w)?,
        };
        let y = match act {
            Some(act) => ops::add_bias_act(&y, &self.bias, act)?,
            None => ops::add_bias(&y, &self.bias)?,
        };
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.d_out()?;
        }
        Ok(y.reshape(out)?)
    }
}

/// Multi-head attention (`self_attn` / `encoder_attn`): q, k, v and out projections with biases.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) out_proj: Linear,
    /// q (pre-scaled), k and v side by side, `[3D, D]`: only in a [`Attention::frozen`] copy of
    /// a self-attention, for decoding's one product per step instead of three.
    pub(crate) qkv: Option<Linear>,
    heads: usize,
    head_dim: usize,
    /// Probability of `attention_dropout` on the attention weights.
    dropout: f64,
}

impl Attention {
    fn new(d: usize, heads: usize, dropout: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Attention {
            q_proj: Linear::new(d, d, vb.pp("q_proj"))?,
            k_proj: Linear::new(d, d, vb.pp("k_proj"))?,
            v_proj: Linear::new(d, d, vb.pp("v_proj"))?,
            out_proj: Linear::new(d, d, vb.pp("out_proj"))?,
            qkv: None,
            heads,
            head_dim: d / heads,
            dropout,
        })
    }

    /// `fuse_qkv` for self-attention, whose q, k and v all project the same input.
    fn frozen(&self, fuse_qkv: bool) -> Result<Self> {
        let qkv = match fuse_qkv {
            true => Some(self.fused_qkv()?.frozen()?),
            false => None,
        };
        Ok(Attention {
            q_proj: self.q_proj.frozen()?,
            k_proj: self.k_proj.frozen()?,
            v_proj: self.v_proj.frozen()?,
            out_proj: self.out_proj.frozen()?,
            qkv,
            ..self.clone()
        })
    }

    /// The q, k and v projections as one `[3D, D]` layer, q's rows scaled by `head_dim^-0.5`
    /// (exact for head sizes that are powers of 4, as 64 is): differentiable in the three
    /// layers' weights, so training runs one product where it ran three.
    pub(crate) fn fused_qkv(&self) -> Result<Linear> {
        if let Some(qkv) = &self.qkv {
            return Ok(qkv.clone());
        }
        let scale = (self.head_dim as f64).powf(-0.5);
        let rows = |l: &Linear| match &l.weight {
            Weight::Rows(w) => Ok(w.clone()),
            Weight::Columns(_) => Err(Error::Input("fusing frozen projections".into())),
        };
        let weight = Tensor::cat(
            &[
                &(rows(&self.q_proj)? * scale)?,
                &rows(&self.k_proj)?,
                &rows(&self.v_proj)?,
            ],
            0,
        )?;
        let bias = Tensor::cat(
            &[
                &(&self.q_proj.bias * scale)?,
                &self.k_proj.bias,
                &self.v_proj.bias,
            ],
            0,
        )?;
        Ok(Linear {
            weight: Weight::Rows(weight),
            bias,
        })
    }

    /// Self-attention's scaled queries, keys and values for `x` `[B, L, D]`, each `[B, H, L, dh]`
    /// and contiguous: one product, then one copy into head-major order.
    fn self_qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let y = self
            .fused_qkv()?
            .forward(x)?
            .reshape((b, l, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        Ok((y.get(0)?, y.get(1)?, y.get(2)?))
    }

    /// `[B, L, D]` -> `[B, H, L, dh]`, contiguous so the batched matmuls run without further copies.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        Ok(x.reshape((b, l, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values for `x` `[B, S, D]`, each `[B, H, S, dh]`.
    pub(crate) fn key_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split_heads(&self.k_proj.forward(x)?)?,
            self.split_heads(&self.v_proj.forward(x)?)?,
        ))
    }

    /// Scaled query for `x` `[B, T, D]`: `[B, H, T, dh]`.
    fn query(&self, x: &Tensor) -> Result<Tensor> {
        // Scaling q before the product (T·dh values) rather than the scores (T·S) is cheaper.
        let q = (self.q_proj.forward(x)? * (self.head_dim as f64).powf(-0.5))?;
        self.split_heads(&q)
    }

    /// softmax(q·kᵀ + mask)·v, then the output projection: `[B, T, D]`. `mask` broadcasts to
    /// `[B, H, T, S]`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, h, t, dh) = q.dims4()?;
        let probs = ops::attention_probs(&q.matmul(&k.transpose(2, 3)?)?, mask)?;
        let probs = mode.dropout(&probs, self.dropout)?;
        let out = probs.matmul(v)?.transpose(1, 2)?.reshape((b, t, h * dh))?;
        self.out_proj.forward(&out)
    }

    /// Incremental decoding's attention, eval mode: one query position per row, `x` `[B, 1, D]`,
    /// against keys/values `[B, H, T, dh]` -> `[B, 1, D]`.
    fn attend_one(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let scale = (self.head_dim as f64).powf(-0.5);
        self.attend_query(&self.q_proj.forward(x)?, k, v, mask, scale)
    }

    /// [`Attention::attend_one`] from the queries `q` `[B, 1, D]`, scaled here by `scale`.
    fn attend_query(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        let h = ops::single_query_attention(q, k, v, mask, scale)?;
        self.out_proj.forward(&h)
    }

    /// Self-attention's scaled query `[B, 1, D]` and new key and value `[B, H, 1, dh]` for one
    /// position per row, `x` `[B, 1, D]`.
    fn qkv_one(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let b = x.dim(0)?;
        let d = self.heads * self.head_dim;
        let y = self.fused_qkv()?.forward(x)?;
        let shape = (b, self.heads, 1, self.head_dim);
        Ok((
            y.narrow(2, 0, d)?.contiguous()?,
            y.narrow(2, d, d)?.reshape(shape)?,
            y.narrow(2, 2 * d, d)?.reshape(shape)?,
        ))
    }

    /// Self-attention over `x` `[B, L, D]`; `mask` as in [`Attention::attend`].
    fn self_forward(&self, x: &Tensor, mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let (q, k, v) = self.self_qkv(x)?;
        self.attend(&q, &k, &v, mask, mode)
    }
}

/// Position-wise feed-forward block: fc1, activation, activation dropout, fc2.
#[derive(Debug, Clone)]
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    activation_dropout: f64,
}

impl FeedForward {
    fn new(cfg: &Config, ffn_dim: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(FeedForward {
            fc1: Linear::new(cfg.d_model, ffn_dim, vb.pp("fc1"))?,
            fc2: Linear::new(ffn_dim, cfg.d_model, vb.pp("fc2"))?,
            act: cfg.activation(),
            activation_dropout: cfg.activation_dropout,
        })
    }

    fn frozen(&self) -> Result<Self> {
        Ok(FeedForward {
            fc1: self.fc1.frozen()?,
            fc2: self.fc2.frozen()?,
            ..self.clone()
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.fc1.forward_activated(x, self.act)?;
        let h = mode.dropout(&h, self.activation_dropout)?;
        self.fc2.forward(&h)
    }
}

/// One encoder layer (`model.encoder.layers.N`), post-norm as in transformers' `MarianEncoderLayer`.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: f64,
}

impl EncoderLayer {
    /// Builds the layer from `vb` = `model.encoder.layers.N`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(EncoderLayer {
            self_attn: Attention::new(
                cfg.d_model,
                cfg.encoder_attention_heads,
                cfg.attention_dropout,
                vb.pp("self_attn"),
            )?,
            self_attn_layer_norm: LayerNorm::new(cfg.d_model, vb.pp("self_attn_layer_norm"))?,
            ffn: FeedForward::new(cfg, cfg.encoder_ffn_dim, &vb)?,
            final_layer_norm: LayerNorm::new(cfg.d_model, vb.pp("final_layer_norm"))?,
            dropout: cfg.dropout,
        })
    }

    pub(crate) fn frozen(&self) -> Result<Self> {
        Ok(EncoderLayer {
            self_attn: self.self_attn.frozen(true)?,
            self_attn_layer_norm: self.self_attn_layer_norm.frozen(),
            ffn: self.ffn.frozen()?,
            final_layer_norm: self.final_layer_norm.frozen(),
            dropout: self.dropout,
        })
    }

    /// `x` `[B, S, D]`, `mask` additive `[B, 1, 1, S]`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.self_attn.self_forward(x, Some(mask), mode)?;
        let h = mode.dropout(&h, self.dropout)?;
        let x = self.self_attn_layer_norm.forward_residual(x, &h)?;
        let h = self.ffn.forward(&x, mode)?;
        let h = mode.dropout(&h, self.dropout)?;
        self.final_layer_norm.forward_residual(&x, &h)
    }
}

/// One decoder layer (`model.decoder.layers.N`): causal self-attention, cross-attention, feed-forward.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub(crate) self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    pub(crate) encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: f64,
}

impl DecoderLayer {
    /// Builds the layer from `vb` = `model.decoder.layers.N`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let heads = cfg.decoder_attention_heads;
        Ok(DecoderLayer {
            self_attn: Attention::new(
                cfg.d_model,
                heads,
                cfg.attention_dropout,
                vb.pp("self_attn"),
            )?,
            self_attn_layer_norm: LayerNorm::new(cfg.d_model, vb.pp("self_attn_layer_norm"))?,
            encoder_attn: Attention::new(
                cfg.d_model,
                heads,
                cfg.attention_dropout,
                vb.pp("encoder_attn"),
            )?,
            encoder_attn_layer_norm: LayerNorm::new(cfg.d_model, vb.pp("encoder_attn_layer_norm"))?,
            ffn: FeedForward::new(cfg, cfg.decoder_ffn_dim, &vb)?,
            final_layer_norm: LayerNorm::new(cfg.d_model, vb.pp("final_layer_norm"))?,
            dropout: cfg.dropout,
        })
    }

    pub(crate) fn frozen(&self) -> Result<Self> {
        Ok(DecoderLayer {
            self_attn: self.self_attn.frozen(true)?,
            self_attn_layer_norm: self.self_attn_layer_norm.frozen(),
            encoder_attn: self.encoder_attn.frozen(false)?,
            encoder_attn_layer_norm: self.encoder_attn_layer_norm.frozen(),
            ffn: self.ffn.frozen()?,
            final_layer_norm: self.final_layer_norm.frozen(),
            dropout: self.dropout,
        })
    }

    /// The two blocks after self-attention, shared by the full and the incremental passes;
    /// `cross` maps the normalised `x` to the cross-attention block's output.
    pub(crate) fn cross_and_ffn(
        &self,
        x: &Tensor,
        self_out: &Tensor,
        cross: impl FnOnce(&Tensor) -> Result<Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = mode.dropout(self_out, self.dropout)?;
        let x = self.self_attn_layer_norm.forward_residual(x, &h)?;
        let h = cross(&x)?;
        let h = mode.dropout(&h, self.dropout)?;
        let x = self.encoder_attn_layer_norm.forward_residual(&x, &h)?;
        let h = self.ffn.forward(&x, mode)?;
        let h = mode.dropout(&h, self.dropout)?;
        self.final_layer_norm.forward_residual(&x, &h)
    }

    /// Teacher-forced pass: `x` `[B, T, D]`, `causal` additive `[T, T]`, `enc` `[B, S, D]`,
    /// `cross_mask` additive `[B, 1, 1, S]`.
    pub fn forward(
        &self,
        x: &Tensor,
        causal: &Tensor,
        enc: &Tensor,
        cross_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = self.self_attn.self_forward(x, Some(causal), mode)?;
        let (k, v) = self.encoder_attn.key_values(enc)?;
        let cross = |x: &Tensor| {
            let q = self.encoder_attn.query(x)?;
            self.encoder_attn.attend(&q, &k, &v, Some(cross_mask), mode)
        };
        self.cross_and_ffn(x, &h, cross, mode)
    }

    /// One incremental step (eval mode) of layer `i`: `x` `[B, 1, D]`, the newest position, whose
    /// keys and values join the ones `cache` holds for this layer.
    pub(crate) fn step(&self, x: &Tensor, i: usize, cache: &mut DecoderCache) -> Result<Tensor> {
        let (q, k_new, v_new) = self.self_attn.qkv_one(x)?;
        let (k, v) = cache.append_self(i, k_new, v_new)?;
        // The newest position sees every cached one: no mask. The query is already scaled.
        let h = self.self_attn.attend_query(&q, &k, &v, None, 1.0)?;
        let (ck, cv, mask) = cache.cross(i);
        let cross = |x: &Tensor| self.encoder_attn.attend_one(x, ck, cv, Some(mask));
        self.cross_and_ffn(x, &h, cross, Mode::Eval)
    }
}
