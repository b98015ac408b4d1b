//! Greedy and beam search, token-for-token the same as transformers' `generate` for Marian, over
//! any [`StepDecoder`] (the inference model's, in [`generate`]); force-decoding scores (`score`).
//!
//! Layout: `settings` (what to search for), `logits` (transformers' logits processors on one
//! row), `greedy` and `beam` (the two searches, which see the model only as a [`StepDecoder`]),
//! and here the entry points.
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
//! from the decoder's cache), and the length limit may differ per sentence (`max_len_a·src_len +
//! max_len_b`); with one `max_new_tokens` for all the results are the same.
//!
//! [`generate`] and [`score`] take a [`MarianModel`](crate::MarianModel) (frozen for the call) or
//! an [`InferenceModel`](crate::InferenceModel) (frozen once, for many calls).
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

mod beam;
mod greedy;
mod logits;
mod profile;
mod settings;
mod top_k;

use candle_core::{DType, Device, Tensor, D};

use crate::config::Config;
use crate::inference::AsInference;

pub use profile::DecodeProfile;
pub use settings::{EarlyStopping, GenerateConfig};
pub use top_k::{masked_top_k, TopRequest};

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

/// One output of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated token ids, without the decoder start token, with the final `</s>` when it was emitted.
    pub tokens: Vec<u32>,
    /// `sum log p / len^lenpen` over `tokens` (transformers' `sequences_scores`); log-probabilities
    /// are those the search ranked by (after masking and re-normalisation).
    pub score: f32,
}

/// The special token ids the search needs from the model's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `</s>`: a hypothesis that emits it is finished.
    pub eos: u32,
    /// `<pad>`, banned when [`GenerateConfig::ban_pad`] is set.
    pub pad: u32,
    /// The decoder start token every hypothesis begins with (not part of [`Hypothesis::tokens`]).
    pub start: u32,
}

impl SpecialTokens {
    /// The ids of a model configuration.
    pub fn of(cfg: &Config) -> Self {
        SpecialTokens {
            eos: cfg.eos_token_id,
            pad: cfg.pad_token_id,
            start: cfg.decoder_start_token_id,
        }
    }
}

/// What the search needs from a decoder: one step for every live row, and a way to keep, repeat
/// or reorder rows. The inference model implements it with its KV cache; tests plug in scripted
/// decoders.
pub trait StepDecoder {
    /// Feeds one token per row and returns the next-token logits, row-major `[rows, vocab]`, and
    /// `vocab`.
    fn step(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, usize)>;
    /// Like [`step`](Self::step), but returns per row only what the search needs of the logits
    /// (`req.width()` floats: the log-normaliser after the step's bans and the `k` best tokens;
    /// see [`masked_top_k`]), computed where the logits are. The default computes them on the host
    /// from [`step`](Self::step).
    fn step_top(&mut self, tokens: &[u32], req: &TopRequest) -> Result<Vec<f32>> {
        let (mut logits, v) = self.step(tokens)?;
        if req.k > v {
            return Err(GenerateError::Config(format!(
                "{} candidates per row from a vocabulary of {v}",
                req.k
            )));
        }
        Ok(top_k::rows_top_k(&mut logits, v, req))
    }
    /// Whether searches should ask for [`step_top`](Self::step_top) rather than whole logits
    /// (when [`GenerateConfig::device_search`] leaves it to the decoder): a GPU decoder saves the
    /// copy of `[rows, vocab]` logits and the host's pass over them.
    fn prefers_top(&self) -> bool {
        false
    }
    /// Keeps rows `rows` (indices into the current rows, repeats allowed) in that order.
    /// `same_sources`: every new row comes from a row of the same source sentence as the row it
    /// replaces (beam reordering with no sentence leaving), so per-source state can stay as it is.
    fn select(&mut self, rows: &[u32], same_sources: bool) -> Result<()>;
}

/// Greedy (`cfg.beam == 1`) or beam search over `dec`, which starts with one row per sentence, in
/// order; `max_new[i]` is sentence `i`'s length limit in new tokens (including `</s>`).
///
/// Returns, per sentence, up to `cfg.nbest` hypotheses, best first. A finished sentence's rows
/// leave the decoder (through [`StepDecoder::select`]) at once.
pub fn search(
    dec: &mut dyn StepDecoder,
    max_new: &[usize],
    cfg: &GenerateConfig,
    special: SpecialTokens,
) -> Result<Vec<Vec<Hypothesis>>> {
    cfg.validate()?;
    if max_new.contains(&0) {
        return Err(GenerateError::Config(
            "every length limit must be at least 1".into(),
        ));
    }
    // Beams above MAX_K / 2 need more candidates per row than the device kernel keeps.
    let per_row = if cfg.beam == 1 { 1 } else { 2 * cfg.beam };
    let top = cfg.no_repeat_ngram == 0
        && per_row <= top_k::MAX_K
        && cfg.device_search.unwrap_or_else(|| dec.prefers_top());
    if cfg.beam == 1 {
        greedy::greedy(dec, max_new, cfg, special, top)
    } else {
        beam::beam_search(dec, max_new, cfg, special, top)
    }
}

/// What a step asks of [`StepDecoder::step_top`]: the tokens `process_row` would ban in every
/// row (`<pad>`, and `</s>` before `min_new_tokens`; n-gram bans never take this path) and `k`.
fn top_request(cfg: &GenerateConfig, sp: SpecialTokens, generated: usize, k: usize) -> TopRequest {
    let mut banned = Vec::with_capacity(2);
    if cfg.ban_pad && sp.pad != sp.eos {
        banned.push(sp.pad);
    }
    if generated < cfg.min_new_tokens {
        banned.push(sp.eos);
    }
    TopRequest {
        banned,
        k,
        renormalize: cfg.renormalize,
    }
}

/// Whether a row at `generated` tokens with limit `max_new` may only emit `</s>` (transformers'
/// `forced_eos_token_id` at the last allowed step), as `process_row` decides it.
fn forced_eos(cfg: &GenerateConfig, generated: usize, max_new: usize) -> bool {
    cfg.forced_eos && generated + 1 == max_new
}

/// `len^lenpen` as transformers computes it (a Python float, applied to an f32 tensor).
fn length_norm(len: usize, lenpen: f32) -> f32 {
    (len as f64).powf(lenpen as f64) as f32
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

fn check_sources(srcs: &[Vec<u32>], max_pos: usize) -> Result<()> {
    for (index, s) in srcs.iter().enumerate() {
        if s.is_empty() {
            return Err(GenerateError::EmptySource { index });
        }
        check_length("source sentence", index, s, max_pos)?;
    }
    Ok(())
}

/// Sentence `index` (`what`) must fit in the model's `max_pos` positions.
fn check_length(what: &'static str, index: usize, s: &[u32], max_pos: usize) -> Result<()> {
    if s.len() > max_pos {
        return Err(GenerateError::TooLong {
            what,
            index,
            len: s.len(),
            max: max_pos,
        });
    }
    Ok(())
}

/// Translates a batch of sources (token ids, each ending in `</s>`) in one padded batch.
///
/// Returns, per source, up to `cfg.nbest` hypotheses, best first. For many sentences, sort them by
/// length and cut them into batches first ([`batches_by_tokens`]).
pub fn generate<M: AsInference + ?Sized>(
    model: &M,
    srcs: &[Vec<u32>],
    cfg: &GenerateConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    generate_inner(model, srcs, cfg, None)
}

/// [`generate`], timing its phases into `profile` (added to what it holds). Every phase waits for
/// the device before its clock stops, which costs a GPU some of its overlap: for finding where the
/// time goes, not for measuring throughput.
pub fn generate_profiled<M: AsInference + ?Sized>(
    model: &M,
    srcs: &[Vec<u32>],
    cfg: &GenerateConfig,
    profile: &mut DecodeProfile,
) -> Result<Vec<Vec<Hypothesis>>> {
    generate_inner(model, srcs, cfg, Some(profile))
}

fn generate_inner<M: AsInference + ?Sized>(
    model: &M,
    srcs: &[Vec<u32>],
    cfg: &GenerateConfig,
    profile: Option<&mut DecodeProfile>,
) -> Result<Vec<Vec<Hypothesis>>> {
    cfg.validate()?;
    if srcs.is_empty() {
        return Ok(Vec::new());
    }
    let sp = SpecialTokens::of(model.config());
    let max_pos = model.config().max_position_embeddings;
    check_sources(srcs, max_pos)?;
    let model = model.as_inference()?;
    let refs: Vec<&[u32]> = srcs.iter().map(|s| s.as_slice()).collect();
    let max_new: Vec<usize> = srcs
        .iter()
        .map(|s| cfg.max_new_for(s.len(), max_pos))
        .collect();
    let Some(profile) = profile else {
        let (ids, mask) = pad_batch(&refs, sp.pad, model.device())?;
        let mut decoder = model.start_decoding(&ids, &mask)?;
        return search(&mut decoder, &max_new, cfg, sp);
    };
    let device = model.device().clone();
    let mut t = std::time::Instant::now();
    let (ids, mask) = pad_batch(&refs, sp.pad, &device)?;
    let dec = model.start_decoding(&ids, &mask)?;
    profile.encode_s += profile::lap(&device, &mut t)?;
    let before = *profile;
    let mut timed = profile::Profiled {
        dec,
        profile,
        device: device.clone(),
    };
    let out = search(&mut timed, &max_new, cfg, sp)?;
    let searched = profile::lap(&device, &mut t)?;
    let p = timed.profile;
    let in_decoder = (p.step_s - before.step_s)
        + (p.download_s - before.download_s)
        + (p.select_s - before.select_s);
    p.search_s += (searched - in_decoder).max(0.0);
    p.batches += 1;
    Ok(out)
}

/// Force-decodes `tgts` given `srcs` (both token ids ending in `</s>`) and returns, per pair, the
/// natural-log probability of every target token (including `</s>`) under the model, unmasked.
/// Their sum is the sentence score of fairseq's `--score-reference`.
pub fn score<M: AsInference + ?Sized>(
    model: &M,
    srcs: &[Vec<u32>],
    tgts: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    if srcs.len() != tgts.len() {
        return Err(GenerateError::PairCount {
            sources: srcs.len(),
            targets: tgts.len(),
        });
    }
    if srcs.is_empty() {
        return Ok(Vec::new());
    }
    let sp = SpecialTokens::of(model.config());
    let max_pos = model.config().max_position_embeddings;
    check_sources(srcs, max_pos)?;
    for (index, t) in tgts.iter().enumerate() {
        check_length("target sentence", index, t, max_pos)?;
    }
    let model = model.as_inference()?;
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
    let enc = model.encode(&ids, &mask)?;
    let logits = model.decode(&tin, &enc, &mask)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
