//! `MarianModel`: the post-norm encoder-decoder of transformers' `MarianMTModel`, built for training
//! (dropout where transformers applies it, padding masks, a backward pass through every parameter)
//! and for incremental decoding.
//!
//! Parameter names passed to the `VarBuilder` are exactly the Hugging Face state-dict keys.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::cache::{host_vec, with_host_f32, DecoderCache, HostKv, Kv};
use crate::config::{Activation, Config};
use crate::dropout::Mode;
use crate::error::{Error, Result};
use crate::ops;

/// transformers' `nn.LayerNorm` default.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Additive mask value for excluded attention positions: exp() of it underflows to exactly 0.
fn mask_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -6.0e4,
        _ => -1.0e9,
    }
}

/// Layer norm composed of ops with a backward pass. candle_nn's `LayerNorm` takes a fused kernel on
/// contiguous input that passes no gradient to its weights.
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

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm(
            x,
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
struct Linear {
    /// `[out, in]`, or `[in, out]` when `transposed`.
    weight: Tensor,
    /// Frozen CPU weights are stored transposed: the CPU matrix product packs a `[out, in]`
    /// right-hand side into column panels on every call, which costs more than the product itself
    /// for decoding's few rows (1.3-5x on 32 rows, `examples/matmul_layouts.rs`).
    transposed: bool,
    bias: Tensor,
}

/// `w` `[r, c]` transposed into a contiguous `[c, r]`. f32 goes through a tiled copy: candle's
/// strided copy computes every element's source index on its own, which made it most of the
/// start-up time of `rdrop translate`.
fn transpose(w: &Tensor) -> Result<Tensor> {
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

/// Whether a weight is better kept transposed: on the CPU, and when nothing trains it (a weight
/// that trains changes under any copy of it).
fn keep_transposed(w: &Tensor) -> bool {
    w.device().is_cpu() && !w.track_op()
}

impl Linear {
    fn new(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        let l = candle_nn::linear(d_in, d_out, vb)?;
        let bias = l
            .bias()
            .cloned()
            .ok_or_else(|| Error::Input("linear layer without a bias".into()))?;
        let transposed = keep_transposed(l.weight());
        let weight = if transposed {
            transpose(l.weight())?
        } else {
            l.weight().clone()
        };
        Ok(Linear {
            weight,
            transposed,
            bias,
        })
    }

    fn d_out(&self) -> Result<usize> {
        Ok(self.weight.dim(if self.transposed { 1 } else { 0 })?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = dims.last().copied().unwrap_or(1);
        let rows = x.elem_count() / d_in.max(1);
        let x = x.reshape((rows, d_in))?;
        let y = if self.transposed {
            x.matmul(&self.weight)?
        } else {
            x.matmul(&self.weight.t()?)?
        };
        let y = ops::add_bias(&y, &self.bias)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.d_out()?;
        }
        Ok(y.reshape(out)?)
    }
}

fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// Output columns per panel of [`FrozenHead::Panels`].
const PANEL: usize = 64;

/// The output layer's weights, `[V, D]`, laid out for the CPU when nothing trains them.
#[derive(Debug, Clone)]
enum FrozenHead {
    /// f32: `[P, D, PANEL]`, panel `p` holding the transposed rows `p·PANEL..` (zero past `V`), and
    /// `final_logits_bias` on the host. The product reads one `[D, V]` transpose with a stride of
    /// `4·V` bytes between its rows, a panel with `4·PANEL`: 1.6x faster for 32 rows and a
    /// vocabulary of 8000 (2.1 vs 1.3 ms on one core), the same for 128 rows.
    Panels { panels: Tensor, bias: Vec<f32> },
    /// Other dtypes: `[D, V]`.
    Transposed(Tensor),
}

impl FrozenHead {
    fn new(lm_head: &Tensor, bias: &Tensor) -> Result<Self> {
        if lm_head.dtype() != DType::F32 {
            return Ok(FrozenHead::Transposed(lm_head.t()?.contiguous()?));
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
        Ok(FrozenHead::Panels {
            panels,
            bias: host_vec(&bias.to_dtype(DType::F32)?.flatten_all()?)?,
        })
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

/// `dims` with the last one replaced by `last`.
fn dims_with_last(dims: &[usize], last: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    if let Some(l) = out.last_mut() {
        *l = last;
    }
    out
}

/// Multi-head attention (`self_attn` / `encoder_attn`): q, k, v and out projections with biases.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
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
            heads,
            head_dim: d / heads,
            dropout,
        })
    }

    /// `[B, L, D]` -> `[B, H, L, dh]`, contiguous so the batched matmuls run without further copies.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        Ok(x.reshape((b, l, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values for `x` `[B, S, D]`, each `[B, H, S, dh]`.
    fn key_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
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
        let q = self.q_proj.forward(x)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let h = ops::single_query_attention(&q, k, v, mask, scale)?;
        self.out_proj.forward(&h)
    }

    /// Keys and values of one new position per row, `x` `[B, 1, D]`: `[B, H, 1, dh]` each (the
    /// projection's rows already hold the heads side by side, so no copy is needed).
    fn key_values_one(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = x.dim(0)?;
        let shape = (b, self.heads, 1, self.head_dim);
        Ok((
            self.k_proj.forward(x)?.reshape(shape)?,
            self.v_proj.forward(x)?.reshape(shape)?,
        ))
    }

    fn forward(
        &self,
        x: &Tensor,
        kv_source: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let q = self.query(x)?;
        let (k, v) = self.key_values(kv_source)?;
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

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = activate(self.act, &self.fc1.forward(x)?)?;
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

    /// `x` `[B, S, D]`, `mask` additive `[B, 1, 1, S]`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.self_attn.forward(x, x, Some(mask), mode)?;
        let h = mode.dropout(&h, self.dropout)?;
        let x = self.self_attn_layer_norm.forward(&(x + h)?)?;
        let h = self.ffn.forward(&x, mode)?;
        let h = mode.dropout(&h, self.dropout)?;
        self.final_layer_norm.forward(&(x + h)?)
    }
}

/// One decoder layer (`model.decoder.layers.N`): causal self-attention, cross-attention, feed-forward.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
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

    /// The two blocks after self-attention, shared by the full and the incremental passes;
    /// `cross` maps the normalised `x` to the cross-attention block's output.
    fn cross_and_ffn(
        &self,
        x: &Tensor,
        self_out: &Tensor,
        cross: impl FnOnce(&Tensor) -> Result<Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = mode.dropout(self_out, self.dropout)?;
        let x = self.self_attn_layer_norm.forward(&(x + h)?)?;
        let h = cross(&x)?;
        let h = mode.dropout(&h, self.dropout)?;
        let x = self.encoder_attn_layer_norm.forward(&(x + h)?)?;
        let h = self.ffn.forward(&x, mode)?;
        let h = mode.dropout(&h, self.dropout)?;
        self.final_layer_norm.forward(&(x + h)?)
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
        let h = self.self_attn.forward(x, x, Some(causal), mode)?;
        let (k, v) = self.encoder_attn.key_values(enc)?;
        let cross = |x: &Tensor| {
            let q = self.encoder_attn.query(x)?;
            self.encoder_attn.attend(&q, &k, &v, Some(cross_mask), mode)
        };
        self.cross_and_ffn(x, &h, cross, mode)
    }
}

/// Sinusoidal positions as transformers' `MarianSinusoidalPositionalEmbedding` computes them: sin in
/// the first ceil(d/2) columns, cos in the rest, computed in f64 like its numpy code.
fn sinusoids(n_pos: usize, dim: usize) -> Vec<f32> {
    let sentinel = dim.div_ceil(2);
    let mut out = vec![0f32; n_pos * dim];
    for pos in 0..n_pos {
        let row = &mut out[pos * dim..(pos + 1) * dim];
        for (j, slot) in row.iter_mut().enumerate() {
            // Column j < sentinel holds feature 2j (sin), column sentinel + i holds feature 2i + 1 (cos);
            // feature f has frequency 10000^(-2·(f/2)/dim).
            let (i, use_sin) = if j < sentinel {
                (j, true)
            } else {
                (j - sentinel, false)
            };
            let angle = pos as f64 / 10000f64.powf((2 * i) as f64 / dim as f64);
            *slot = if use_sin { angle.sin() } else { angle.cos() } as f32;
        }
    }
    out
}

/// The Marian encoder-decoder with its output layer (transformers' `MarianMTModel`).
#[derive(Debug, Clone)]
pub struct MarianModel {
    cfg: Config,
    encoder_embed: Tensor,
    decoder_embed: Tensor,
    lm_head: Tensor,
    /// A copy of `lm_head` laid out for the CPU's matrix product, for frozen CPU weights (see
    /// [`Linear`]); the embedding lookups need the `[V, D]` original, so tied weights are then held
    /// twice.
    frozen_head: Option<FrozenHead>,
    final_logits_bias: Tensor,
    encoder_layers: Vec<EncoderLayer>,
    decoder_layers: Vec<DecoderLayer>,
    positions: Tensor,
    embed_scale: f64,
    device: Device,
    dtype: DType,
}

impl MarianModel {
    /// Builds the model; `vb` names are the Hugging Face keys (`model.shared.weight`,
    /// `model.encoder.layers.0.self_attn.q_proj.weight`, `lm_head.weight`, `final_logits_bias`, ...).
    /// Tied weights are fetched once, so a `VarMap` holds one `Var` for them.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(std::path::Path::new("<config>"))?;
        let d = cfg.d_model;
        let target = cfg.target_vocab_size();
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.init_std,
        };
        let (encoder_embed, decoder_embed) =
            if cfg.share_encoder_decoder_embeddings && cfg.tie_word_embeddings {
                let shared = vb.get_with_hints((cfg.vocab_size, d), "model.shared.weight", init)?;
                (shared.clone(), shared)
            } else {
                // transformers 5 unties everything when tie_word_embeddings is false, even with shared
                // encoder/decoder embeddings: each side reads its own matrix.
                (
                    vb.get_with_hints(
                        (cfg.vocab_size, d),
                        "model.encoder.embed_tokens.weight",
                        init,
                    )?,
                    vb.get_with_hints(
                        (cfg.decoder_vocab_size, d),
                        "model.decoder.embed_tokens.weight",
                        init,
                    )?,
                )
            };
        let lm_head = if cfg.tie_word_embeddings {
            decoder_embed.clone()
        } else {
            vb.get_with_hints((target, d), "lm_head.weight", init)?
        };
        let final_logits_bias = vb.get_with_hints(
            (1, target),
            "final_logits_bias",
            candle_nn::Init::Const(0.0),
        )?;
        let encoder_layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(format!("model.encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let decoder_layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp(format!("model.decoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let positions = Tensor::from_vec(
            sinusoids(cfg.max_position_embeddings, d),
            (cfg.max_position_embeddings, d),
            &device,
        )?
        .to_dtype(dtype)?;
        let frozen_head = if keep_transposed(&lm_head) {
            Some(FrozenHead::new(&lm_head, &final_logits_bias)?)
        } else {
            None
        };
        Ok(MarianModel {
            cfg: cfg.clone(),
            encoder_embed,
            decoder_embed,
            lm_head,
            frozen_head,
            final_logits_bias,
            encoder_layers,
            decoder_layers,
            positions,
            embed_scale: if cfg.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
            device,
            dtype,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Token embeddings (scaled) plus positions `start..start + T`, for ids `[B, T]`.
    fn embed(&self, table: &Tensor, ids: &Tensor, start: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if start + t > self.cfg.max_position_embeddings {
            return Err(Error::TooLong {
                len: start + t,
                max: self.cfg.max_position_embeddings,
            });
        }
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let mut x = table.index_select(&ids, 0)?;
        let pad = self.cfg.pad_token_id as usize;
        if table.is_variable() && pad < table.dim(0)? {
            // PyTorch's nn.Embedding(padding_idx=pad) gives the pad row no gradient from lookups (it is
            // also Marian's decoder start token): take those rows from a detached copy.
            let is_pad = ids
                .eq(self.cfg.pad_token_id)?
                .unsqueeze(1)?
                .broadcast_as(x.shape())?;
            let frozen = table.narrow(0, pad, 1)?.detach().broadcast_as(x.shape())?;
            x = is_pad.where_cond(&frozen, &x)?;
        }
        let x = x.reshape((b, t, self.cfg.d_model))?;
        let x = if self.embed_scale != 1.0 {
            (x * self.embed_scale)?
        } else {
            x
        };
        Ok(x.broadcast_add(&self.positions.narrow(0, start, t)?)?)
    }

    /// Source padding mask `[B, S]` (1 = token, 0 = pad, any dtype) as an additive `[B, 1, 1, S]` mask.
    fn padding_mask(&self, src_mask: &Tensor, batch: usize, len: usize) -> Result<Tensor> {
        let dims = src_mask.dims();
        if dims != [batch, len] {
            return Err(Error::Input(format!(
                "source mask has shape {dims:?}, the source ids [{batch}, {len}]"
            )));
        }
        let neg = mask_value(self.dtype);
        // mask·(-neg) + neg: 0 where mask is 1, neg where it is 0.
        let m = src_mask
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .affine(-neg, neg)?;
        Ok(m.reshape((batch, 1, 1, len))?)
    }

    /// Additive causal mask `[T, T]`: position t sees positions 0..=t.
    fn causal_mask(&self, t: usize) -> Result<Tensor> {
        let neg = mask_value(self.dtype) as f32;
        let values: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { neg } else { 0.0 }))
            .collect();
        Ok(Tensor::from_vec(values, (t, t), &self.device)?.to_dtype(self.dtype)?)
    }

    fn check_ids(&self, ids: &Tensor, what: &str) -> Result<(usize, usize)> {
        let (b, t) = ids.dims2().map_err(|_| {
            Error::Input(format!(
                "{what} must be [batch, length], got {:?}",
                ids.dims()
            ))
        })?;
        if b == 0 || t == 0 {
            return Err(Error::Input(format!(
                "{what} is empty: shape {:?}",
                ids.dims()
            )));
        }
        if !matches!(ids.dtype(), DType::U32 | DType::U8 | DType::I64) {
            return Err(Error::Input(format!(
                "{what} must hold integer ids, got {:?}",
                ids.dtype()
            )));
        }
        Ok((b, t))
    }

    /// Whether layer drop skips a layer now (train mode only, as in transformers).
    fn skip_layer(mode: Mode, p: f64) -> bool {
        match mode {
            Mode::Train(rng) if p > 0.0 => rng.uniform() < p,
            _ => false,
        }
    }

    /// Encoder: `src_ids` `[B, S]` (u32), `src_mask` `[B, S]` (1 = token, 0 = pad) -> `[B, S, D]`.
    pub fn encode(&self, src_ids: &Tensor, src_mask: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, s) = self.check_ids(src_ids, "source ids")?;
        let mask = self.padding_mask(src_mask, b, s)?;
        let x = self.embed(&self.encoder_embed, &src_ids.to_device(&self.device)?, 0)?;
        let mut x = mode.dropout(&x, self.cfg.dropout)?;
        for layer in &self.encoder_layers {
            if Self::skip_layer(mode, self.cfg.encoder_layerdrop) {
                continue;
            }
            x = layer.forward(&x, &mask, mode)?;
        }
        Ok(x)
    }

    /// Decoder final hidden states for teacher forcing: `tgt_in` `[B, T]` -> `[B, T, D]`.
    pub fn decode_hidden(
        &self,
        tgt_in: &Tensor,
        enc: &Tensor,
        src_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t) = self.check_ids(tgt_in, "decoder inputs")?;
        let (eb, s, _) = enc.dims3()?;
        if eb != b {
            return Err(Error::Input(format!(
                "decoder inputs have {b} rows, the encoder output {eb}"
            )));
        }
        let cross_mask = self.padding_mask(src_mask, b, s)?;
        let causal = self.causal_mask(t)?;
        let x = self.embed(&self.decoder_embed, &tgt_in.to_device(&self.device)?, 0)?;
        let mut x = mode.dropout(&x, self.cfg.dropout)?;
        for layer in &self.decoder_layers {
            if Self::skip_layer(mode, self.cfg.decoder_layerdrop) {
                continue;
            }
            x = layer.forward(&x, &causal, enc, &cross_mask, mode)?;
        }
        Ok(x)
    }

    /// Output layer: hidden `[..., D]` -> logits `[..., V]` (tied or own `lm_head`, plus
    /// `final_logits_bias`).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let d = self.cfg.d_model;
        let rows = hidden.elem_count() / d;
        let flat = match &self.frozen_head {
            Some(FrozenHead::Panels { panels, bias }) => {
                let flat = panel_logits(&hidden.reshape((rows, d))?, panels, bias)?;
                return Ok(flat.reshape(dims_with_last(&dims, self.lm_head.dim(0)?))?);
            }
            Some(FrozenHead::Transposed(t)) => hidden.reshape((rows, d))?.matmul(t)?,
            None => hidden.reshape((rows, d))?.matmul(&self.lm_head.t()?)?,
        };
        // A buffer in transformers, never trained: detached, so no gradient is summed for it.
        let bias = self.final_logits_bias.detach().flatten_all()?;
        let flat = ops::add_bias(&flat, &bias)?;
        Ok(flat.reshape(dims_with_last(&dims, self.lm_head.dim(0)?))?)
    }

    /// Teacher forcing: `tgt_in` `[B, T]` (decoder start + target[..-1]) -> logits `[B, T, V]`.
    /// Target padding needs no mask: with right padding, causal attention keeps pads out of every
    /// real position (as in transformers when no decoder mask is passed).
    pub fn decode(
        &self,
        tgt_in: &Tensor,
        enc: &Tensor,
        src_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        self.logits(&self.decode_hidden(tgt_in, enc, src_mask, mode)?)
    }

    /// Encoder and decoder in one call: logits `[B, T, V]`.
    pub fn forward(
        &self,
        src_ids: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let enc = self.encode(src_ids, src_mask, mode)?;
        self.decode(tgt_in, &enc, src_mask, mode)
    }

    /// Starts incremental decoding (eval mode) for the encoder output `enc` `[B, S, D]`: the
    /// cross-attention keys and values of every layer are computed here, once.
    pub fn new_cache(&self, enc: &Tensor, src_mask: &Tensor) -> Result<DecoderCache> {
        let (b, s, _) = enc.dims3()?;
        let cross_mask = self.padding_mask(src_mask, b, s)?;
        let cross_kv = self
            .decoder_layers
            .iter()
            .map(|l| l.encoder_attn.key_values(enc))
            .collect::<Result<Vec<_>>>()?;
        if !(self.device.is_cpu() && self.dtype == DType::F32) {
            return Ok(DecoderCache {
                kv: Kv::Tensors {
                    self_kv: vec![None; self.decoder_layers.len()],
                    cross_kv,
                    cross_mask,
                },
                len: 0,
            });
        }
        let n_layers = self.decoder_layers.len();
        let (mut cross_k, mut cross_v) = (Vec::new(), Vec::new());
        for (k, v) in &cross_kv {
            cross_k.push(host_vec(k)?);
            cross_v.push(host_vec(v)?);
        }
        Ok(DecoderCache {
            kv: Kv::Host(HostKv {
                heads: self.cfg.decoder_attention_heads,
                head_dim: self.cfg.d_model / self.cfg.decoder_attention_heads,
                self_k: vec![Vec::new(); n_layers],
                self_v: vec![Vec::new(); n_layers],
                entries: vec![Vec::new(); b],
                n_entries: 0,
                cross_k,
                cross_v,
                cross_mask: host_vec(&cross_mask)?,
                src_len: s,
                source: (0..b as u32).collect(),
            }),
            len: 0,
        })
    }

    /// One decoding step (eval mode): `tokens` `[B]` (the last token of each row; the decoder start
    /// token first) -> logits `[B, V]` for the next position. Appends this step's keys/values to `cache`.
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let b = tokens.dims1().map_err(|_| {
            Error::Input(format!(
                "step tokens must be [batch], got {:?}",
                tokens.dims()
            ))
        })?;
        if b != cache.batch_size() {
            return Err(Error::Input(format!(
                "{b} step tokens for a cache of {} rows",
                cache.batch_size()
            )));
        }
        let mut x = self.embed(
            &self.decoder_embed,
            &tokens.to_device(&self.device)?.unsqueeze(1)?,
            cache.len,
        )?;
        match &mut cache.kv {
            Kv::Tensors {
                self_kv,
                cross_kv,
                cross_mask,
            } => {
                for (i, layer) in self.decoder_layers.iter().enumerate() {
                    let (k_new, v_new) = layer.self_attn.key_values_one(&x)?;
                    let (k, v) = match &self_kv[i] {
                        Some((k, v)) => {
                            (Tensor::cat(&[k, &k_new], 2)?, Tensor::cat(&[v, &v_new], 2)?)
                        }
                        None => (k_new, v_new),
                    };
                    // The newest position sees every cached one: no mask.
                    let h = layer.self_attn.attend_one(&x, &k, &v, None)?;
                    self_kv[i] = Some((k, v));
                    let (ck, cv) = &cross_kv[i];
                    let cross =
                        |x: &Tensor| layer.encoder_attn.attend_one(x, ck, cv, Some(&*cross_mask));
                    x = layer.cross_and_ffn(&x, &h, cross, Mode::Eval)?;
                }
            }
            Kv::Host(host) => {
                let base = host.n_entries as u32;
                for (row, e) in host.entries.iter_mut().enumerate() {
                    e.push(base + row as u32);
                }
                host.n_entries += b;
                for (i, layer) in self.decoder_layers.iter().enumerate() {
                    x = self.host_layer_step(layer, i, &x, host)?;
                }
            }
        }
        cache.len += 1;
        self.logits(&x.squeeze(1)?)
    }

    /// One decoder layer of a step on the host cache, whose tables already hold this step's
    /// entries: `x` `[B, 1, D]`.
    fn host_layer_step(
        &self,
        layer: &DecoderLayer,
        i: usize,
        x: &Tensor,
        host: &mut HostKv,
    ) -> Result<Tensor> {
        let (heads, dh) = (host.heads, host.head_dim);
        let d = heads * dh;
        let rows = x.dim(0)?;
        let scale = (dh as f64).powf(-0.5);
        let attn = &layer.self_attn;
        with_host_f32(&attn.k_proj.forward(x)?, |k| {
            host.self_k[i].extend_from_slice(k)
        })?;
        with_host_f32(&attn.v_proj.forward(x)?, |v| {
            host.self_v[i].extend_from_slice(v)
        })?;
        let q = attn.q_proj.forward(x)?;
        let entries = &host.entries;
        let len = entries.first().map_or(0, |e| e.len());
        let out = with_host_f32(&q, |q| {
            ops::attend_rows(
                q,
                &host.self_k[i],
                &host.self_v[i],
                heads,
                dh,
                len,
                scale,
                |r, h, t| entries[r][t] as usize * d + h * dh,
                None,
            )
        })?;
        let h = attn
            .out_proj
            .forward(&Tensor::from_vec(out, (rows, 1, d), &self.device)?)?;
        let host = &*host;
        let cross = |x: &Tensor| {
            let attn = &layer.encoder_attn;
            let q = attn.q_proj.forward(x)?;
            let s = host.src_len;
            let source = &host.source;
            let mask = |r: usize, t: usize| host.cross_mask[source[r] as usize * s + t];
            let out = with_host_f32(&q, |q| {
                ops::attend_rows(
                    q,
                    &host.cross_k[i],
                    &host.cross_v[i],
                    heads,
                    dh,
                    s,
                    scale,
                    |r, h, t| ((source[r] as usize * heads + h) * s + t) * dh,
                    Some(&mask),
                )
            })?;
            attn.out_proj
                .forward(&Tensor::from_vec(out, (rows, 1, d), &self.device)?)
        };
        layer.cross_and_ffn(x, &h, cross, Mode::Eval)
    }
}
