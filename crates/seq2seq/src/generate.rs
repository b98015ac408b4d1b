//! Greedy and beam search over a [`MarianModel`], token-for-token the same as transformers'
//! `generate` for Marian, plus force-decoding scores (`score`).
//!
//! The search reproduces transformers 5.x `GenerationMixin._sample` (greedy) and `_beam_search`:
//! - per step the logits pass, in transformers' order, through `no_repeat_ngram_size`,
//!   `bad_words_ids = [[pad]]`, `min_new_tokens` (EOS banned), `forced_eos_token_id` at the last
//!   allowed step and `renormalize_logits`; beam search works on log-probabilities, greedy takes
//!   the arg-max;
//! - beam search keeps `2 × beam` candidates per step, finishes a hypothesis when it emits EOS
//!   (only among the best `beam` candidates) or reaches the length limit, scores a finished
//!   hypothesis as `sum log p / len^lenpen` with `len` the generated tokens including `</s>`
//!   (the decoder start token not counted), and stops a sentence with transformers'
//!   `early_stopping` heuristics (`false` by default, `true`, `never`).
//!
//! Unlike transformers, a sentence leaves the batch as soon as it is done (its rows are dropped
//! from the [`DecoderCache`]), and the length limit may differ per sentence (`max_len_a·src_len +
//! max_len_b`); with one `max_new_tokens` for all the results are the same.
//!
//! ```no_run
//! use rdrop_seq2seq::generate::{generate, GenerateConfig};
//! # fn demo(model: &rdrop_seq2seq::model::MarianModel) -> Result<(), rdrop_seq2seq::generate::GenerateError> {
//! let cfg = GenerateConfig { beam: 4, nbest: 2, max_new_tokens: Some(64), ..GenerateConfig::default() };
//! let out = generate(model, &[vec![37, 12, 0], vec![5, 0]], &cfg)?;
//! for hyp in &out[0] {
//!     println!("{:?} {}", hyp.tokens, hyp.score);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::cache::DecoderCache;
use crate::dropout::Mode;
use crate::model::MarianModel;

/// Why decoding or scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Model(#[from] crate::error::Error),
    /// A tensor operation of the search itself failed (candle's error is the `source`).
    #[error("decoding failed")]
    Candle(#[from] candle_core::Error),
    /// The search settings are inconsistent (e.g. `nbest` larger than `beam`).
    #[error("invalid decoding settings: {0}")]
    Config(String),
    /// A source sentence has no tokens at all (not even `</s>`).
    #[error("source sentence {index} is empty (it should at least hold `</s>`)")]
    EmptySource {
        /// Position of the sentence in the batch.
        index: usize,
    },
    /// A source (or, for `score`, target) is longer than the model's positional table.
    #[error(
        "{what} {index} has {len} tokens; the model takes at most {max} (max_position_embeddings)"
    )]
    TooLong {
        /// `source sentence` or `target sentence`.
        what: &'static str,
        /// Position of the sentence in the batch.
        index: usize,
        /// Its length in tokens.
        len: usize,
        /// The model's `max_position_embeddings`.
        max: usize,
    },
    /// `score` got a different number of sources and targets.
    #[error("score: {sources} sources but {targets} targets")]
    PairCount {
        /// Number of sources.
        sources: usize,
        /// Number of targets.
        targets: usize,
    },
    /// A `generation_config.json` could not be read or parsed.
    #[error("{path}: {message}")]
    GenerationConfig {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, GenerateError>;

/// When beam search may stop a sentence before its length limit (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop once `beam` hypotheses are finished and the best running beam, length-normalised at its
    /// current length, cannot beat the worst of them (transformers' default, `false`).
    #[default]
    Heuristic,
    /// Stop as soon as `beam` hypotheses are finished (`true`).
    Eager,
    /// As `Heuristic`, but a positive length penalty is assumed to reach the length limit
    /// (`"never"`: the canonical beam search).
    Never,
}

/// Settings of one decoding run. [`Default`] matches an opus-mt `generation_config.json`
/// (beam 4, length penalty 1, up to 511 new tokens, forced `</s>`, `<pad>` banned, renormalised).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Beam size; 1 is greedy search (transformers' `num_beams`).
    pub beam: usize,
    /// Length penalty exponent: finished scores are `sum log p / len^lenpen` (`length_penalty`).
    pub lenpen: f32,
    /// transformers' `early_stopping`.
    pub early_stopping: EarlyStopping,
    /// Length limit per sentence, in new tokens: `floor(max_len_a · src_len + max_len_b)` with
    /// `src_len` the source tokens including `</s>`. Ignored when `max_new_tokens` is set.
    pub max_len_a: f32,
    /// See `max_len_a`.
    pub max_len_b: usize,
    /// One length limit for every sentence, in new tokens including `</s>` (`max_new_tokens`).
    pub max_new_tokens: Option<usize>,
    /// `</s>` is banned until this many tokens have been generated (`min_new_tokens`).
    pub min_new_tokens: usize,
    /// Hypotheses returned per sentence, best first (`num_return_sequences`); at most `beam`.
    pub nbest: usize,
    /// Ban any n-gram of this size from occurring twice (`no_repeat_ngram_size`); 0 = off.
    pub no_repeat_ngram: usize,
    /// Force `</s>` at the last allowed step (`forced_eos_token_id`).
    pub forced_eos: bool,
    /// Never generate `<pad>` (`bad_words_ids = [[pad]]`).
    pub ban_pad: bool,
    /// Re-normalise the log-probabilities after masking (`renormalize_logits`).
    pub renormalize: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            beam: 4,
            lenpen: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            max_len_a: 0.0,
            max_len_b: 511,
            max_new_tokens: None,
            min_new_tokens: 0,
            nbest: 1,
            no_repeat_ngram: 0,
            forced_eos: true,
            ban_pad: true,
            renormalize: true,
        }
    }
}

impl GenerateConfig {
    /// Greedy search with the opus-mt settings otherwise.
    pub fn greedy() -> Self {
        GenerateConfig {
            beam: 1,
            ..Self::default()
        }
    }

    /// The settings transformers would use for the model in `dir`: its `generation_config.json`
    /// when there is one, else transformers' own defaults completed from `config.json`
    /// (`forced_eos_token_id`) — with one difference: without a `generation_config.json`
    /// transformers stops after 20 tokens, while this returns `None` so the caller picks a limit.
    ///
    /// The second value is the length limit the file asks for, in new tokens (`max_length - 1`).
    pub fn from_model_dir(dir: &Path) -> Result<(Self, Option<usize>)> {
        let mut cfg = GenerateConfig {
            beam: 1,
            forced_eos: false,
            ban_pad: false,
            renormalize: false,
            ..Self::default()
        };
        let model_cfg = read_json(&dir.join("config.json"))?;
        if let Some(model_cfg) = &model_cfg {
            cfg.forced_eos = model_cfg
                .get("forced_eos_token_id")
                .is_some_and(|v| !v.is_null());
        }
        let Some(gen) = read_json(&dir.join("generation_config.json"))? else {
            return Ok((cfg, None));
        };
        let path = dir.join("generation_config.json");
        let bad = |key: &str, want: &str| GenerateError::GenerationConfig {
            path: path.display().to_string(),
            message: format!("key `{key}` should be {want}"),
        };
        let get_usize = |key: &str| -> Result<Option<usize>> {
            match gen.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(key, "a non-negative integer")),
            }
        };
        if let Some(n) = get_usize("num_beams")? {
            cfg.beam = n.max(1);
        }
        if let Some(n) = get_usize("no_repeat_ngram_size")? {
            cfg.no_repeat_ngram = n;
        }
        if let Some(n) = get_usize("min_length")? {
            // `min_length` counts the decoder start token.
            cfg.min_new_tokens = n.saturating_sub(1);
        }
        if let Some(n) = get_usize("min_new_tokens")? {
            cfg.min_new_tokens = n;
        }
        match gen.get("length_penalty") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                cfg.lenpen = v
                    .as_f64()
                    .ok_or_else(|| bad("length_penalty", "a number"))?
                    as f32
            }
        }
        match gen.get("early_stopping") {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {}
            Some(serde_json::Value::Bool(true)) => cfg.early_stopping = EarlyStopping::Eager,
            Some(serde_json::Value::String(s)) if s == "never" => {
                cfg.early_stopping = EarlyStopping::Never
            }
            Some(_) => return Err(bad("early_stopping", "true, false or \"never\"")),
        }
        match gen.get("forced_eos_token_id") {
            None => {}
            Some(v) => cfg.forced_eos = !v.is_null(),
        }
        match gen.get("renormalize_logits") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                cfg.renormalize = v
                    .as_bool()
                    .ok_or_else(|| bad("renormalize_logits", "true or false"))?
            }
        }
        let pad = model_cfg
            .as_ref()
            .and_then(|c| c.get("pad_token_id"))
            .and_then(|v| v.as_u64());
        if let (Some(serde_json::Value::Array(words)), Some(pad)) = (gen.get("bad_words_ids"), pad)
        {
            // Only the single-token ban of `<pad>` that opus-mt checkpoints carry is supported.
            cfg.ban_pad = words.iter().any(|w| {
                w.as_array()
                    .is_some_and(|w| w.len() == 1 && w[0].as_u64() == Some(pad))
            });
        }
        let max_new =
            get_usize("max_new_tokens")?.or(get_usize("max_length")?.map(|n| n.saturating_sub(1)));
        Ok((cfg, max_new))
    }

    fn validate(&self) -> Result<()> {
        if self.beam == 0 {
            return Err(GenerateError::Config("beam must be at least 1".into()));
        }
        if self.nbest == 0 || self.nbest > self.beam {
            return Err(GenerateError::Config(format!(
                "nbest ({}) must be between 1 and the beam size ({})",
                self.nbest, self.beam
            )));
        }
        if !self.lenpen.is_finite() {
            return Err(GenerateError::Config(format!(
                "length penalty {} is not finite",
                self.lenpen
            )));
        }
        if !(self.max_len_a.is_finite() && self.max_len_a >= 0.0) {
            return Err(GenerateError::Config(format!(
                "max_len_a ({}) must be a non-negative number",
                self.max_len_a
            )));
        }
        if self.max_new_tokens == Some(0) {
            return Err(GenerateError::Config(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The length limit (new tokens, including `</s>`) for a source of `src_len` tokens, capped to the
    /// decoder's `max_pos` positions.
    pub fn max_new_for(&self, src_len: usize, max_pos: usize) -> usize {
        let n = match self.max_new_tokens {
            Some(n) => n,
            None => {
                (self.max_len_a as f64 * src_len as f64 + self.max_len_b as f64).floor() as usize
            }
        };
        n.clamp(1, max_pos.max(1))
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(GenerateError::GenerationConfig {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| GenerateError::GenerationConfig {
            path: path.display().to_string(),
            message: format!("not valid JSON: {e}"),
        })
}

/// One output of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated token ids, without the decoder start token, with the final `</s>` when it was emitted.
    pub tokens: Vec<u32>,
    /// `sum log p / len^lenpen` over `tokens` (transformers' `sequences_scores`); log-probabilities
    /// are those the search ranked by (after masking and re-normalisation).
    pub score: f32,
}

/// The special ids and sizes the search needs from the model.
#[derive(Debug, Clone, Copy)]
struct Specials {
    eos: u32,
    pad: u32,
    start: u32,
    max_pos: usize,
}

/// What the search needs from a decoder: one step for every live row, and a way to keep, repeat
/// or reorder rows. Implemented by the Marian model with its KV cache; tests can plug in others.
trait StepDecoder {
    /// Feeds one token per row and returns the next-token logits, row-major `[rows, vocab]`.
    fn step(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, usize)>;
    /// Keeps rows `rows` (indices into the current rows, repeats allowed) in that order.
    /// `same_sources`: every new row comes from a row of the same source sentence as the row it
    /// replaces (beam reordering with no sentence leaving), so per-source state can stay as it is.
    fn select(&mut self, rows: &[u32], same_sources: bool) -> Result<()>;
}

struct MarianStepper<'a> {
    model: &'a MarianModel,
    cache: DecoderCache,
    device: Device,
}

impl StepDecoder for MarianStepper<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, usize)> {
        let t = Tensor::from_slice(tokens, tokens.len(), &self.device)?;
        let logits = self.model.decode_step(&t, &mut self.cache)?;
        let (_, v) = logits.dims2()?;
        let logits = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((logits, v))
    }

    fn select(&mut self, rows: &[u32], same_sources: bool) -> Result<()> {
        Ok(self.cache.reorder(rows, same_sources)?)
    }
}

/// Pads `seqs` on the right with `pad` into `[B, S]` ids and a `[B, S]` mask (1 = token).
fn pad_batch(seqs: &[&[u32]], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let b = seqs.len();
    let s = seqs.iter().map(|x| x.len()).max().unwrap_or(0);
    let mut ids = vec![pad; b * s];
    let mut mask = vec![0u32; b * s];
    for (i, x) in seqs.iter().enumerate() {
        ids[i * s..i * s + x.len()].copy_from_slice(x);
        mask[i * s..i * s + x.len()].fill(1);
    }
    Ok((
        Tensor::from_vec(ids, (b, s), device)?,
        Tensor::from_vec(mask, (b, s), device)?,
    ))
}

fn specials(model: &MarianModel) -> Specials {
    let c = model.config();
    Specials {
        eos: c.eos_token_id,
        pad: c.pad_token_id,
        start: c.decoder_start_token_id,
        max_pos: c.max_position_embeddings,
    }
}

fn check_sources(srcs: &[Vec<u32>], max_pos: usize) -> Result<()> {
    for (index, s) in srcs.iter().enumerate() {
        if s.is_empty() {
            return Err(GenerateError::EmptySource { index });
        }
        if s.len() > max_pos {
            return Err(GenerateError::TooLong {
                what: "source sentence",
                index,
                len: s.len(),
                max: max_pos,
            });
        }
    }
    Ok(())
}

/// Translates a batch of sources (token ids, each ending in `</s>`) in one padded batch.
///
/// Returns, per source, up to `cfg.nbest` hypotheses, best first. For many sentences, sort them by
/// length and cut them into batches first ([`batches_by_tokens`]).
pub fn generate(
    model: &MarianModel,
    srcs: &[Vec<u32>],
    cfg: &GenerateConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    cfg.validate()?;
    if srcs.is_empty() {
        return Ok(Vec::new());
    }
    let sp = specials(model);
    check_sources(srcs, sp.max_pos)?;
    let device = model.device().clone();
    let refs: Vec<&[u32]> = srcs.iter().map(|s| s.as_slice()).collect();
    let (ids, mask) = pad_batch(&refs, sp.pad, &device)?;
    let enc = model.encode(&ids, &mask, Mode::Eval)?;
    let cache = model.new_cache(&enc, &mask)?;
    let mut stepper = MarianStepper {
        model,
        cache,
        device,
    };
    let max_new: Vec<usize> = srcs
        .iter()
        .map(|s| cfg.max_new_for(s.len(), sp.max_pos))
        .collect();
    if cfg.beam == 1 {
        greedy(&mut stepper, &max_new, cfg, sp)
    } else {
        beam_search(&mut stepper, &max_new, cfg, sp)
    }
}

/// Force-decodes `tgts` given `srcs` (both token ids ending in `</s>`) and returns, per pair, the
/// natural-log probability of every target token (including `</s>`) under the model, unmasked.
/// Their sum is the sentence score of fairseq's `--score-reference`.
pub fn score(model: &MarianModel, srcs: &[Vec<u32>], tgts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    if srcs.len() != tgts.len() {
        return Err(GenerateError::PairCount {
            sources: srcs.len(),
            targets: tgts.len(),
        });
    }
    if srcs.is_empty() {
        return Ok(Vec::new());
    }
    let sp = specials(model);
    check_sources(srcs, sp.max_pos)?;
    for (index, t) in tgts.iter().enumerate() {
        if t.len() > sp.max_pos {
            return Err(GenerateError::TooLong {
                what: "target sentence",
                index,
                len: t.len(),
                max: sp.max_pos,
            });
        }
    }
    let device = model.device().clone();
    let refs: Vec<&[u32]> = srcs.iter().map(|s| s.as_slice()).collect();
    let (ids, mask) = pad_batch(&refs, sp.pad, &device)?;
    // Decoder input: start token + target without its last token; right padding does not change
    // earlier positions under the causal mask.
    let tmax = tgts.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let b = tgts.len();
    let mut tin = vec![sp.pad; b * tmax];
    let mut tout = vec![0u32; b * tmax];
    for (i, t) in tgts.iter().enumerate() {
        tin[i * tmax] = sp.start;
        for (j, &tok) in t.iter().enumerate() {
            if j + 1 < tmax {
                tin[i * tmax + j + 1] = tok;
            }
            tout[i * tmax + j] = tok;
        }
    }
    let tin = Tensor::from_vec(tin, (b, tmax), &device)?;
    let tout = Tensor::from_vec(tout, (b, tmax, 1), &device)?;
    let enc = model.encode(&ids, &mask, Mode::Eval)?;
    let logits = model.decode(&tin, &enc, &mask, Mode::Eval)?;
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&tout, 2)?.squeeze(2)?;
    let picked = picked.to_vec2::<f32>()?;
    Ok(tgts
        .iter()
        .zip(picked)
        .map(|(t, row)| row[..t.len()].to_vec())
        .collect())
}

/// Groups sentence indices into batches: sentences sorted by length (longest first, stable), each
/// batch at most `max_tokens` padded tokens (`rows × longest`) and at most `max_sents` rows.
/// A sentence longer than `max_tokens` gets a batch of its own.
pub fn batches_by_tokens(lens: &[usize], max_tokens: usize, max_sents: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let l = lens[i].max(1);
        let new_longest = longest.max(l);
        if !cur.is_empty()
            && ((cur.len() + 1) * new_longest > max_tokens || cur.len() >= max_sents.max(1))
        {
            out.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(l);
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Per-row logits processing
// ---------------------------------------------------------------------------------------------

/// The tokens transformers' `NoRepeatNGramLogitsProcessor` bans after `seq` (which starts with the
/// decoder start token, as transformers' `input_ids` do).
fn banned_ngram_tokens(seq: &[u32], n: usize, out: &mut Vec<u32>) {
    out.clear();
    let len = seq.len();
    if n == 0 || len < n {
        return;
    }
    let prefix = &seq[len + 1 - n..];
    for start in 0..=len - n {
        if &seq[start..start + n - 1] == prefix {
            out.push(seq[start + n - 1]);
        }
    }
}

/// What a step may generate for one row.
struct RowRules<'a> {
    /// `[start] + generated`, for n-gram bans.
    seq: &'a [u32],
    /// Tokens generated so far.
    generated: usize,
    /// This row's length limit in new tokens.
    max_new: usize,
}

/// Scratch space reused across rows and steps.
#[derive(Default)]
struct RowScratch {
    banned: Vec<u32>,
}

/// The result of processing one row: its log-normaliser and the forced token, if any.
struct RowLogProbs {
    /// `log p(v) = logits[v] - norm` for every token not banned (banned ones are `-inf`).
    norm: f32,
    /// When only one token is allowed (forced `</s>`), that token with log-probability 0.
    forced: Option<u32>,
}

/// Applies transformers' logits processors to `logits` in place (banned tokens become `-inf`) and
/// returns how to turn the result into log-probabilities.
fn process_row(
    logits: &mut [f32],
    rules: &RowRules,
    cfg: &GenerateConfig,
    sp: Specials,
    scratch: &mut RowScratch,
) -> RowLogProbs {
    if cfg.forced_eos && rules.generated + 1 == rules.max_new {
        return RowLogProbs {
            norm: 0.0,
            forced: Some(sp.eos),
        };
    }
    // Without renormalisation, transformers normalises before masking.
    let pre_norm = if cfg.renormalize {
        0.0
    } else {
        log_norm(logits)
    };
    let neg = f32::NEG_INFINITY;
    banned_ngram_tokens(rules.seq, cfg.no_repeat_ngram, &mut scratch.banned);
    for &t in &scratch.banned {
        if let Some(x) = logits.get_mut(t as usize) {
            *x = neg;
        }
    }
    if cfg.ban_pad && sp.pad != sp.eos {
        if let Some(x) = logits.get_mut(sp.pad as usize) {
            *x = neg;
        }
    }
    if rules.generated < cfg.min_new_tokens {
        if let Some(x) = logits.get_mut(sp.eos as usize) {
            *x = neg;
        }
    }
    let norm = if cfg.renormalize {
        log_norm(logits)
    } else {
        pre_norm
    };
    RowLogProbs { norm, forced: None }
}

/// `max + log(sum(exp(x - max)))`, the way torch's `log_softmax` subtracts it (`x - max - log_sum`
/// is returned as `x - norm`, whose rounding differs from torch's only in the last bit).
fn log_norm(x: &[f32]) -> f32 {
    let max = fastmath::max_best(x);
    if max == f32::NEG_INFINITY {
        return f32::INFINITY;
    }
    let sum = fastmath::sum_exp_shifted_best(x, max);
    max + sum.ln()
}

/// `log p = x - norm`, computed as torch does (`(x - max) - log_sum`) when `norm` came from
/// [`log_norm`]; the difference is below 1 ulp of the score in practice.
#[inline]
fn logp(x: f32, norm: f32) -> f32 {
    x - norm
}

/// Row reductions for log-softmax, written so the compiler vectorises them: a beam step normalises
/// `rows × vocab` logits, which would otherwise cost as much as the decoder itself on small models.
mod fastmath {
    use crate::ops::simd_dispatch;

    const LANES: usize = 16;

    simd_dispatch! {
        /// [`max`] with the fastest instructions the CPU has.
        pub fn max_best => max, (x: &[f32]) -> f32
    }

    simd_dispatch! {
        /// [`sum_exp_shifted`] with the fastest instructions the CPU has.
        pub fn sum_exp_shifted_best => sum_exp_shifted, (x: &[f32], max: f32) -> f32
    }

    /// `exp(x)` for `x <= 0` (Cephes' `expf` polynomial, within 2 ulp of the exact value); inputs
    /// below -87.3, `-inf` included, give a value below 2e-38, which no sum of probabilities notices.
    #[inline(always)]
    fn exp_nonpos(x: f32) -> f32 {
        let x = x.max(-87.3);
        // Round x / ln 2 to the nearest integer with the 1.5 · 2^23 trick (no SSE4.1 `round` needed).
        let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5; // Cephes: 5.0000001e-1, which is 0.5 in f32
        let e = p * r * r + r + 1.0;
        e * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    /// The largest element (`-inf` for an empty or all `-inf` slice).
    #[inline(always)]
    pub fn max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for j in 0..LANES {
                acc[j] = acc[j].max(c[j]);
            }
        }
        let mut m = rest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for a in acc {
            m = m.max(a);
        }
        m
    }

    /// `sum(exp(x - max))` with `max` the largest element.
    #[inline(always)]
    pub fn sum_exp_shifted(x: &[f32], max: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for j in 0..LANES {
                acc[j] += exp_nonpos(c[j] - max);
            }
        }
        let mut total: f64 = rest.iter().map(|&v| exp_nonpos(v - max) as f64).sum();
        for a in acc {
            total += a as f64;
        }
        total as f32
    }

    /// The `k` largest elements above `-inf` as `(value, index)`, best first, ties to the lower
    /// index (into `top`, cleared first). Whole blocks whose maximum cannot enter are skipped.
    #[inline(always)]
    pub fn top_k(x: &[f32], k: usize, top: &mut Vec<(f32, u32)>) {
        top.clear();
        let mut threshold = f32::NEG_INFINITY;
        let mut start = 0;
        for c in x.chunks(LANES * 4) {
            if max(c) > threshold {
                for (j, &v) in c.iter().enumerate() {
                    if v > threshold {
                        super::push_top(top, k, v, (start + j) as u32);
                        if top.len() == k {
                            threshold = top[k - 1].0;
                        }
                    }
                }
            }
            start += c.len();
        }
    }

    simd_dispatch! {
        /// [`top_k`] with the fastest instructions the CPU has.
        pub fn top_k_best => top_k, (x: &[f32], k: usize, top: &mut Vec<(f32, u32)>) -> ()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn top_k_equals_a_stable_sort() {
            // 1000 values from a small set (many ties) with some -inf, against sorting by value
            // descending with ties to the lower index.
            let x: Vec<f32> = (0..1000u32)
                .map(|i| {
                    let h = i.wrapping_mul(2_654_435_761) >> 24;
                    if h % 17 == 0 {
                        f32::NEG_INFINITY
                    } else {
                        (h % 23) as f32 * 0.5 - 3.0
                    }
                })
                .collect();
            let mut want: Vec<(f32, u32)> =
                x.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut got = Vec::new();
            for k in [1, 8, 40] {
                super::top_k_best(&x, k, &mut got);
                assert_eq!(got, want[..k].to_vec(), "k = {k}");
                super::top_k(&x, k, &mut got);
                assert_eq!(got, want[..k].to_vec(), "k = {k}, baseline");
            }
            assert_eq!(super::max_best(&x), want[0].0);
        }

        #[test]
        fn exp_is_accurate_on_the_range_that_matters() {
            let mut worst = 0f64;
            let mut x = -87.0f32;
            while x <= 0.0 {
                let want = (x as f64).exp();
                let got = super::exp_nonpos(x) as f64;
                worst = worst.max(((got - want) / want).abs());
                x += 0.001_37;
            }
            assert!(worst < 5e-7, "relative error {worst}");
            assert!(super::exp_nonpos(f32::NEG_INFINITY) < 1e-37);
            let v: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
            let m = super::max(&v);
            let want: f64 = v.iter().map(|&a| ((a - m) as f64).exp()).sum();
            assert!((super::sum_exp_shifted(&v, m) as f64 - want).abs() < 1e-5 * want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Greedy search
// ---------------------------------------------------------------------------------------------

fn greedy(
    dec: &mut dyn StepDecoder,
    max_new: &[usize],
    cfg: &GenerateConfig,
    sp: Specials,
) -> Result<Vec<Vec<Hypothesis>>> {
    let n = max_new.len();
    // seqs[i] = [start] + generated tokens of sentence i.
    let mut seqs: Vec<Vec<u32>> = vec![vec![sp.start]; n];
    let mut sums = vec![0f32; n];
    let mut done: Vec<Option<Hypothesis>> = vec![None; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut scratch = RowScratch::default();
    while !active.is_empty() {
        let tokens: Vec<u32> = active
            .iter()
            .map(|&i| *seqs[i].last().unwrap_or(&sp.start))
            .collect();
        let (mut logits, v) = dec.step(&tokens)?;
        let mut keep: Vec<u32> = Vec::with_capacity(active.len());
        let mut still: Vec<usize> = Vec::with_capacity(active.len());
        for (r, &i) in active.iter().enumerate() {
            let row = &mut logits[r * v..(r + 1) * v];
            let generated = seqs[i].len() - 1;
            let rules = RowRules {
                seq: &seqs[i],
                generated,
                max_new: max_new[i],
            };
            let lp = process_row(row, &rules, cfg, sp, &mut scratch);
            let (tok, tok_lp) = match lp.forced {
                Some(t) => (t, 0.0),
                None => {
                    let (t, x) = argmax(row);
                    (t, logp(x, lp.norm))
                }
            };
            seqs[i].push(tok);
            sums[i] += tok_lp;
            let len = generated + 1;
            if tok == sp.eos || len >= max_new[i] {
                done[i] = Some(Hypothesis {
                    tokens: seqs[i][1..].to_vec(),
                    score: sums[i] / length_norm(len, cfg.lenpen),
                });
            } else {
                keep.push(r as u32);
                still.push(i);
            }
        }
        if !still.is_empty() && still.len() != active.len() {
            dec.select(&keep, false)?;
        }
        active = still;
    }
    Ok(done.into_iter().map(|h| h.into_iter().collect()).collect())
}

/// First index of the maximum (torch's `argmax` tie rule).
fn argmax(x: &[f32]) -> (u32, f32) {
    let m = fastmath::max_best(x);
    let best = x.iter().position(|&v| v == m).unwrap_or(0);
    (best as u32, m)
}

/// `len^lenpen` as transformers computes it (a Python float, applied to an f32 tensor).
fn length_norm(len: usize, lenpen: f32) -> f32 {
    (len as f64).powf(lenpen as f64) as f32
}

// ---------------------------------------------------------------------------------------------
// Beam search
// ---------------------------------------------------------------------------------------------

/// Beam state of one sentence.
struct BeamSentence {
    /// Running beams: `[start] + generated`, all the same length.
    seqs: Vec<Vec<u32>>,
    /// Running beams' summed log-probabilities (`running_beam_scores`).
    scores: Vec<f32>,
    /// Finished hypotheses, best first, at most `beam` (`sequences` with `is_sent_finished`).
    finished: Vec<Hypothesis>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`.
    may_improve: bool,
}

/// A continuation candidate: `acc` = running score + token log-prob.
#[derive(Clone, Copy)]
struct Cand {
    acc: f32,
    beam: u32,
    token: u32,
}

/// Keeps the `k` best `(value, flat index)` pairs of a row, best first; ties go to the lower index.
fn push_top(top: &mut Vec<(f32, u32)>, k: usize, v: f32, i: u32) {
    if top.len() == k {
        match top.last() {
            Some(&(lv, _)) if v > lv => {
                top.pop();
            }
            _ => return,
        }
    }
    let pos = top.partition_point(|&(tv, _)| tv >= v);
    top.insert(pos, (v, i));
}

fn beam_search(
    dec: &mut dyn StepDecoder,
    max_new: &[usize],
    cfg: &GenerateConfig,
    sp: Specials,
) -> Result<Vec<Vec<Hypothesis>>> {
    let k = cfg.beam;
    let n = max_new.len();
    let n_cand = 2 * k;
    // transformers starts every sentence with `k` identical beams, all but the first scored -1e9, so
    // the first step draws every candidate from beam 0 (a vocabulary always has more than `2k`
    // allowed tokens). Running that step on one row per sentence gives the same candidates.
    let mut sents: Vec<BeamSentence> = (0..n)
        .map(|_| BeamSentence {
            seqs: vec![vec![sp.start]],
            scores: vec![0.0],
            finished: Vec::with_capacity(k),
            may_improve: true,
        })
        .collect();
    let mut active: Vec<usize> = (0..n).collect();
    let mut done: Vec<Vec<Hypothesis>> = vec![Vec::new(); n];
    let mut scratch = RowScratch::default();
    let mut row_top: Vec<(f32, u32)> = Vec::with_capacity(n_cand + 1);
    let mut cands: Vec<Cand> = Vec::with_capacity(k * n_cand);
    let mut generated = 0usize;
    while !active.is_empty() {
        let tokens: Vec<u32> = active
            .iter()
            .flat_map(|&i| sents[i].seqs.iter().map(|s| *s.last().unwrap_or(&sp.start)))
            .collect();
        let (mut logits, v) = dec.step(&tokens)?;
        let mut next_rows: Vec<u32> = Vec::with_capacity(active.len() * k);
        let mut still: Vec<usize> = Vec::with_capacity(active.len());
        let mut row0 = 0usize;
        for &i in active.iter() {
            let s = &mut sents[i];
            let rows = s.seqs.len();
            cands.clear();
            for b in 0..rows {
                let r = row0 + b;
                let row = &mut logits[r * v..(r + 1) * v];
                let rules = RowRules {
                    seq: &s.seqs[b],
                    generated,
                    max_new: max_new[i],
                };
                let lp = process_row(row, &rules, cfg, sp, &mut scratch);
                let base = s.scores[b];
                if let Some(t) = lp.forced {
                    // transformers: every other token is -inf; they can never be chosen.
                    cands.push(Cand {
                        acc: base,
                        beam: b as u32,
                        token: t,
                    });
                    continue;
                }
                fastmath::top_k_best(row, n_cand, &mut row_top);

                if row_top.len() < n_cand {
                    // Fewer than 2k tokens above -inf: transformers' top-k then takes -inf ones too.
                    for (t, &x) in row.iter().enumerate() {
                        if x == f32::NEG_INFINITY && row_top.len() < n_cand {
                            row_top.push((x, t as u32));
                        }
                    }
                }
                for &(x, t) in &row_top {
                    cands.push(Cand {
                        acc: logp(x, lp.norm) + base,
                        beam: b as u32,
                        token: t,
                    });
                }
            }
            // torch.topk over the flattened [beam × vocab] scores: best first; ties to the lower
            // flat index.
            cands.sort_by(|x, y| {
                y.acc
                    .partial_cmp(&x.acc)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then((x.beam, x.token).cmp(&(y.beam, y.token)))
            });
            cands.truncate(n_cand);
            let len = generated + 1;
            let at_limit = len >= max_new[i];
            let hits: Vec<bool> = cands
                .iter()
                .map(|c| c.token == sp.eos || at_limit)
                .collect();

            // Finished hypotheses: only among the best `k` candidates, and only while the sentence may
            // still improve (transformers adds -1e9 otherwise).
            let full = s.finished.len() == k;
            let accepting = s.may_improve && !(cfg.early_stopping == EarlyStopping::Eager && full);
            if accepting {
                let norm = length_norm(len, cfg.lenpen);
                for (c, cand) in cands.iter().enumerate().take(k) {
                    if !hits[c] {
                        continue;
                    }
                    let score = cand.acc / norm;
                    // Existing entries win ties (they come first in transformers' concatenation).
                    let pos = s.finished.partition_point(|h| h.score >= score);
                    if pos >= k {
                        continue;
                    }
                    let mut tokens = s.seqs[cand.beam as usize][1..].to_vec();
                    tokens.push(cand.token);
                    s.finished.insert(pos, Hypothesis { tokens, score });
                    s.finished.truncate(k);
                }
            }

            // Next running beams: the best `k` candidates that did not stop (stopped ones are pushed
            // down by -1e9, as in transformers).
            let mut order: Vec<(f32, usize)> = cands
                .iter()
                .enumerate()
                .map(|(c, cand)| (if hits[c] { cand.acc + -1.0e9 } else { cand.acc }, c))
                .collect();
            order.sort_by(|x, y| {
                y.0.partial_cmp(&x.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(x.1.cmp(&y.1))
            });
            let mut new_seqs = Vec::with_capacity(k);
            let mut new_scores = Vec::with_capacity(k);
            let mut src_rows = Vec::with_capacity(k);
            for &(val, c) in order.iter().take(k) {
                let cand = cands[c];
                let mut seq = s.seqs[cand.beam as usize].clone();
                seq.push(cand.token);
                new_seqs.push(seq);
                new_scores.push(val);
                src_rows.push((row0 as u32) + cand.beam);
            }
            s.seqs = new_seqs;
            s.scores = new_scores;
            row0 += rows;

            // transformers' `_check_early_stop_heuristic` (after `cur_len += 1`).
            if s.finished.len() == k {
                let hyp_len = if cfg.early_stopping == EarlyStopping::Never && cfg.lenpen > 0.0 {
                    max_new[i]
                } else {
                    len
                };
                let best_possible = s.scores[0] / length_norm(hyp_len, cfg.lenpen);
                let worst = s
                    .finished
                    .iter()
                    .map(|h| h.score)
                    .fold(f32::INFINITY, f32::min);
                if best_possible <= worst {
                    s.may_improve = false;
                }
            }
            let finished_all = cfg.early_stopping == EarlyStopping::Eager && s.finished.len() == k;
            if !s.may_improve || finished_all || at_limit {
                done[i] = std::mem::take(&mut s.finished);
                done[i].truncate(cfg.nbest);
                s.seqs = Vec::new();
            } else {
                next_rows.extend_from_slice(&src_rows);
                still.push(i);
            }
        }
        // After the first step (one row per sentence) rows are expanded to `k` per sentence.
        let same_sources = generated > 0 && still.len() == active.len();
        generated += 1;
        if !still.is_empty() {
            dec.select(&next_rows, same_sources)?;
        }
        active = still;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_bans_follow_transformers() {
        // transformers' docstring example: (start) 40 2883 2712 4346 ... with n = 2.
        let mut out = Vec::new();
        banned_ngram_tokens(&[9, 1, 2, 3, 1], 2, &mut out);
        assert_eq!(out, vec![2]);
        banned_ngram_tokens(&[9, 1, 2, 1, 2], 3, &mut out);
        assert_eq!(out, vec![1]);
        banned_ngram_tokens(&[9, 1], 2, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn batches_respect_token_budget_and_sort_by_length() {
        let lens = [3, 10, 5, 10, 1];
        let b = batches_by_tokens(&lens, 20, 100);
        assert_eq!(b, vec![vec![1, 3], vec![2, 0, 4]]);
        let b = batches_by_tokens(&lens, 1000, 2);
        assert_eq!(b, vec![vec![1, 3], vec![2, 0], vec![4]]);
        // A sentence over the budget still gets a batch.
        assert_eq!(batches_by_tokens(&[50], 10, 10), vec![vec![0]]);
    }

    #[test]
    fn top_k_keeps_best_and_lowest_index_on_ties() {
        let mut top = Vec::new();
        for (i, v) in [1.0, 3.0, 3.0, 2.0, 5.0].into_iter().enumerate() {
            push_top(&mut top, 3, v, i as u32);
        }
        assert_eq!(top, vec![(5.0, 4), (3.0, 1), (3.0, 2)]);
    }
}
