//! The examples a run trains and validates on: both splits read, tokenised with the run's
//! tokenizer and filtered, with every skipped pair counted.

use crate::data::{self, DataStats, Example, RawPair};
use crate::error::{Error, Result};
use crate::recipe::Recipe;
use crate::session::{prepare_examples, Session};

/// Both splits of a run, ready to batch.
pub struct RunData {
    /// The training examples.
    pub train: Vec<Example>,
    /// The validation examples and, in the same order, their reference translations.
    pub valid: Vec<Example>,
    /// Reference translations (untokenised target text) of `valid`, for BLEU and chrF.
    pub valid_refs: Vec<String>,
    /// What happened to every training and validation pair.
    pub train_stats: DataStats,
    /// What happened to every validation pair.
    pub valid_stats: DataStats,
}

/// Reads both splits the recipe names (untokenised: a fresh tokenizer is trained on them).
pub fn read_splits(r: &Recipe) -> Result<(Vec<RawPair>, DataStats, Vec<RawPair>, DataStats)> {
    let (train, ts) = data::read_split(&r.data.train, &r.data, "train")?;
    let (valid, vs) = data::read_split(&r.data.valid, &r.data, "valid")?;
    Ok((train, ts, valid, vs))
}

/// Tokenises and filters both splits. Training pairs obey the data section's length, ratio and
/// count limits and must fit a batch; validation keeps every pair the model can take (no ratio
/// filter), up to `validation.max_sentences`.
pub fn prepare(
    s: &Session,
    (train_pairs, mut train_stats, valid_pairs, mut valid_stats): (
        Vec<RawPair>,
        DataStats,
        Vec<RawPair>,
        DataStats,
    ),
) -> Result<RunData> {
    let r = &s.recipe;
    let max_len = r.data.max_len.min(s.cfg.max_position_embeddings);
    let mut train = prepare_examples(
        s,
        &train_pairs,
        &mut train_stats,
        max_len,
        r.data.max_len_ratio,
        r.data.max_sentences,
    )?;
    drop_oversize(s, &train_pairs, &mut train, &mut train_stats)?;
    let (valid, kept) = data::tokenize_and_filter_kept(
        &valid_pairs,
        &mut valid_stats,
        s.cfg.max_position_embeddings,
        f64::INFINITY,
        r.validation.max_sentences,
        |a, b| Ok((s.tokenizer.encode_source(a)?, s.tokenizer.encode_target(b)?)),
    )?;
    let valid_refs = kept
        .iter()
        .map(|&i| valid_pairs[i].target.clone())
        .collect();
    Ok(RunData {
        train,
        valid,
        valid_refs,
        train_stats,
        valid_stats,
    })
}

/// Leaves out training pairs that alone exceed `batching.max_tokens` (a batch could not hold them
/// without breaking the budget), counted in `stats`, or refuses them with `batching.oversize = "error"`.
fn drop_oversize(
    s: &Session,
    pairs: &[RawPair],
    examples: &mut Vec<Example>,
    stats: &mut DataStats,
) -> Result<()> {
    let cap = s.recipe.batching.max_tokens;
    let fits = |e: &Example| e.source.len().max(e.target.len()) <= cap;
    let before = examples.len();
    examples.retain(fits);
    let dropped = before - examples.len();
    if dropped == 0 {
        return Ok(());
    }
    if s.recipe.batching.oversize == crate::recipe::Oversize::Error {
        let split = &s.recipe.data.train;
        let file = split
            .source
            .as_ref()
            .or(split.file.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "data.train".into());
        // Only in this error path: find the first offending line to name it.
        for p in pairs {
            let src = s.tokenizer.encode_source(&p.source)?;
            let tgt = s.tokenizer.encode_target(&p.target)?;
            let n = src.len().max(tgt.len());
            if n > cap && n <= s.recipe.data.max_len {
                return Err(Error::BadLine {
                    path: file.into(),
                    line: p.line,
                    message: format!(
                        "a pair of {n} tokens exceeds batching.max_tokens = {cap}, and {dropped} pairs do in all (batching.oversize = \"error\"; \"skip\" leaves them out, or raise max_tokens)"
                    ),
                });
            }
        }
    }
    stats.over_max_tokens = dropped;
    stats.kept = examples.len();
    Ok(())
}
