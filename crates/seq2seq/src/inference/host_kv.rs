//! The inference model's KV cache for the CPU in f32: keys and values in host memory behind per-row
//! tables, the decoder layer step that attends over them, and the reordering beam search asks for.

use candle_core::{Device, Tensor};

use crate::cache::{check_rows, DecoderCache};
use crate::dropout::Mode;
use crate::error::Result;
use crate::host::{host_vec, with_host_f32};
use crate::layers::{Attention, DecoderLayer};
use crate::ops;

/// Keys and values in host memory, addressed through per-row tables: when beam search reorders
/// hypotheses or a sentence leaves the batch only the tables change, where tensors `[B, H, L, dh]`
/// would be copied whole at every step.
#[derive(Debug, Clone)]
pub(super) struct HostKv {
    heads: usize,
    head_dim: usize,
    /// Per decoder layer, the self-attention keys of every position any row has decoded,
    /// `[entries, H·dh]`, appended to at each step and never moved.
    self_k: Vec<Vec<f32>>,
    /// The values, laid out as `self_k`.
    self_v: Vec<Vec<f32>>,
    /// Per live row, the entry of each of its positions (the same in every layer).
    entries: Vec<Vec<u32>>,
    /// Entries so far (rows of every `self_k[i]`).
    n_entries: usize,
    /// Per decoder layer, cross-attention keys per source sentence, `[N, H, S, dh]`.
    cross_k: Vec<Vec<f32>>,
    /// The values, laid out as `cross_k`.
    cross_v: Vec<Vec<f32>>,
    /// Additive source padding mask `[N, S]`.
    cross_mask: Vec<f32>,
    /// Source positions `S`.
    src_len: usize,
    /// Per live row, its source sentence (an index into the cross-attention tables).
    source: Vec<u32>,
}

impl HostKv {
    /// The host copy of a fresh tensor cache (cross-attention keys and values only), for a
    /// decoder of `heads` heads of width `head_dim`.
    pub(super) fn from_fresh(cache: &DecoderCache, heads: usize, head_dim: usize) -> Result<Self> {
        let n_layers = cache.layers();
        let (mut cross_k, mut cross_v) = (Vec::new(), Vec::new());
        for i in 0..n_layers {
            let (k, v, _) = cache.cross(i);
            cross_k.push(host_vec(k)?);
            cross_v.push(host_vec(v)?);
        }
        let mask = cache.cross_mask();
        let (b, _, _, s) = mask.dims4()?;
        Ok(HostKv {
            heads,
            head_dim,
            self_k: vec![Vec::new(); n_layers],
            self_v: vec![Vec::new(); n_layers],
            entries: vec![Vec::new(); b],
            n_entries: 0,
            cross_k,
            cross_v,
            cross_mask: host_vec(mask)?,
            src_len: s,
            source: (0..b as u32).collect(),
        })
    }

    /// Rows the cache holds.
    pub(super) fn batch_size(&self) -> usize {
        self.source.len()
    }

    /// Gives every row a new entry for the step about to run.
    pub(super) fn begin_step(&mut self) {
        let base = self.n_entries as u32;
        for (row, e) in self.entries.iter_mut().enumerate() {
            e.push(base + row as u32);
        }
        self.n_entries += self.entries.len();
    }

    /// Keeps the rows `rows` (indices into the current rows, repeats allowed): only the tables
    /// change.
    pub(super) fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        check_rows(rows, self.batch_size())?;
        self.entries = rows
            .iter()
            .map(|&r| self.entries[r as usize].clone())
            .collect();
        self.source = rows.iter().map(|&r| self.source[r as usize]).collect();
        Ok(())
    }

    /// Decoder layer `i` of a step whose entries [`begin_step`](Self::begin_step) has added:
    /// `x` `[B, 1, D]`.
    pub(super) fn layer_step(
        &mut self,
        layer: &DecoderLayer,
        i: usize,
        x: &Tensor,
        device: &Device,
    ) -> Result<Tensor> {
        let attn = &layer.self_attn;
        let d = self.heads * self.head_dim;
        // One product for q (already scaled), k and v, split on the host.
        let mut q = Vec::with_capacity(x.dim(0)? * d);
        with_host_f32(&attn.fused_qkv()?.forward(x)?, |y| {
            for row in y.chunks_exact(3 * d) {
                q.extend_from_slice(&row[..d]);
                self.self_k[i].extend_from_slice(&row[d..2 * d]);
                self.self_v[i].extend_from_slice(&row[2 * d..]);
            }
        })?;
        let host = &*self;
        let (heads, dh) = (host.heads, host.head_dim);
        let entries = &host.entries;
        let len = entries.first().map_or(0, |e| e.len());
        let kv = (&host.self_k[i][..], &host.self_v[i][..]);
        let at = |r: usize, h: usize, t: usize| entries[r][t] as usize * d + h * dh;
        let h = host.attend(attn, &q, 1.0, kv, len, at, None, device)?;
        let cross = |x: &Tensor| {
            let (s, source) = (host.src_len, &host.source);
            let mask = |r: usize, t: usize| host.cross_mask[source[r] as usize * s + t];
            let kv = (&host.cross_k[i][..], &host.cross_v[i][..]);
            let at = |r: usize, h: usize, t: usize| ((source[r] as usize * heads + h) * s + t) * dh;
            let q = host_vec(&layer.encoder_attn.q_proj.forward(x)?)?;
            let scale = (dh as f64).powf(-0.5);
            host.attend(
                &layer.encoder_attn,
                &q,
                scale,
                kv,
                s,
                at,
                Some(&mask),
                device,
            )
        };
        layer.cross_and_ffn(x, &h, cross, Mode::Eval)
    }

    /// `attn` for the queries `q` (`[B, D]` row-major, times `scale`) over `len` positions whose
    /// keys and values start at `at(row, head, position)` in `kv`, through the output projection:
    /// `[B, 1, D]`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        attn: &Attention,
        q: &[f32],
        scale: f64,
        kv: (&[f32], &[f32]),
        len: usize,
        at: impl Fn(usize, usize, usize) -> usize + Sync,
        mask: Option<&(dyn Fn(usize, usize) -> f32 + Sync)>,
        device: &Device,
    ) -> Result<Tensor> {
        let (heads, dh) = (self.heads, self.head_dim);
        let out = ops::attend_rows(q, kv.0, kv.1, heads, dh, len, scale, at, mask);
        let rows = q.len() / (heads * dh).max(1);
        attn.out_proj
            .forward(&Tensor::from_vec(out, (rows, 1, heads * dh), device)?)
    }
}
