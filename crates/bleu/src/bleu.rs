//! Corpus and sentence BLEU (Papineni et al. 2002) as sacreBLEU 2.6.0 computes it.

use std::str::FromStr;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::metric::{check_hyps, check_refs, Metric, Report, SegmentStats, Signature};
use crate::ngram::{bits_for, ngram_matches, windows};
use crate::text::{py_lower, py_rstrip, py_split};
use crate::{Error, Tokenizer};

/// sacreBLEU's smoothing methods (Chen & Cherry 2014).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Smoothing {
    /// `none`: zero precisions give a zero score.
    None,
    /// `floor`: zero match counts replaced by a small value (default 0.1).
    Floor,
    /// `add-k`: k (default 1) added to matches and totals for orders above 1.
    AddK,
    /// `exp`: mteval-v13a's exponential decay, the default.
    #[default]
    Exp,
}

impl Smoothing {
    /// Name as in sacreBLEU's `--smooth-method`.
    pub fn name(self) -> &'static str {
        match self {
            Smoothing::None => "none",
            Smoothing::Floor => "floor",
            Smoothing::AddK => "add-k",
            Smoothing::Exp => "exp",
        }
    }

    /// sacreBLEU's `SMOOTH_DEFAULTS`: the value used when none is given.
    pub fn default_value(self) -> Option<f64> {
        match self {
            Smoothing::Floor => Some(0.1),
            Smoothing::AddK => Some(1.0),
            Smoothing::None | Smoothing::Exp => None,
        }
    }
}

impl FromStr for Smoothing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "none" => Smoothing::None,
            "floor" => Smoothing::Floor,
            "add-k" => Smoothing::AddK,
            "exp" => Smoothing::Exp,
            _ => return Err(Error::UnknownSmoothing(s.to_owned())),
        })
    }
}

/// BLEU options, with sacreBLEU's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct BleuConfig {
    /// Lowercase hypotheses and references first (`-lc`).
    pub lowercase: bool,
    /// Tokenizer (`-tok`), `13a` by default.
    pub tokenizer: Tokenizer,
    /// Smoothing (`-s`), `exp` by default.
    pub smooth: Smoothing,
    /// Smoothing value for `floor` and `add-k` (`--smooth-value`); `None` uses the method's default.
    pub smooth_value: Option<f64>,
    /// Highest n-gram order, 4 by default.
    pub max_ngram_order: usize,
    /// Average only over orders with n-grams in the hypothesis (for sentence-level BLEU).
    pub effective_order: bool,
}

impl Default for BleuConfig {
    fn default() -> Self {
        BleuConfig {
            lowercase: false,
            tokenizer: Tokenizer::Thirteen,
            smooth: Smoothing::Exp,
            smooth_value: None,
            max_ngram_order: 4,
            effective_order: false,
        }
    }
}

/// A BLEU score with the statistics it was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct BleuScore {
    /// BLEU in 0..=100.
    pub score: f64,
    /// Clipped n-gram matches per order (before any `add-k` smoothing).
    pub counts: Vec<u64>,
    /// Hypothesis n-grams per order (before any `add-k` smoothing).
    pub totals: Vec<u64>,
    /// Smoothed precisions in percent per order.
    pub precisions: Vec<f64>,
    /// Brevity penalty.
    pub bp: f64,
    /// `sys_len / ref_len` (0 when `ref_len` is 0).
    pub ratio: f64,
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// Effective reference length (closest reference per segment).
    pub ref_len: u64,
}

impl BleuScore {
    /// sacreBLEU's verbose part: `p1/p2/p3/p4 (BP = ... ratio = ... hyp_len = ... ref_len = ...)`.
    pub fn verbose(&self) -> String {
        let prec: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "{} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            prec.join("/"),
            self.bp,
            self.ratio,
            self.sys_len,
            self.ref_len
        )
    }
}

/// sacreBLEU's `my_log`: log with 0 mapped to -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9999999999.0
    } else {
        x.ln()
    }
}

/// BLEU from summed statistics, a line-by-line port of sacreBLEU's `BLEU.compute_bleu`
/// (floating-point operations in the same order).
pub fn compute_bleu(
    counts: &[u64],
    totals: &[u64],
    sys_len: u64,
    ref_len: u64,
    smooth: Smoothing,
    smooth_value: Option<f64>,
    effective_order: bool,
) -> BleuScore {
    let max_order = counts.len().min(totals.len());
    let sv = smooth_value.or(smooth.default_value()).unwrap_or(0.0);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = vec![0.0f64; max_order];
    let ratio = if ref_len > 0 {
        sys_len as f64 / ref_len as f64
    } else {
        0.0
    };
    let mut out = BleuScore {
        score: 0.0,
        counts: counts[..max_order].to_vec(),
        totals: totals[..max_order].to_vec(),
        precisions: precisions.clone(),
        bp,
        ratio,
        sys_len,
        ref_len,
    };
    if counts[..max_order].iter().all(|&c| c == 0) {
        return out;
    }
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = max_order;
    for n in 1..=max_order {
        let (mut correct, mut total) = (counts[n - 1] as f64, totals[n - 1] as f64);
        if smooth == Smoothing::AddK && n > 1 {
            correct += sv;
            total += sv;
        }
        if total == 0.0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if correct == 0.0 {
            match smooth {
                Smoothing::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total);
                }
                Smoothing::Floor => precisions[n - 1] = 100.0 * sv / total,
                Smoothing::None | Smoothing::AddK => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct / total;
        }
    }
    let log_sum = precisions[..eff_order]
        .iter()
        .fold(0.0, |acc, &p| acc + my_log(p));
    out.score = bp * (log_sum / eff_order as f64).exp();
    out.precisions = precisions;
    out
}

/// BLEU with cached, preprocessed references.
pub struct Bleu {
    config: BleuConfig,
    nrefs: usize,
    segments: usize,
    /// Tokenized references, segment-major: `refs[seg * nrefs + r]`.
    refs: Vec<String>,
}

impl Bleu {
    /// Prepares references given as `nrefs` streams of equal length (sacreBLEU's `[[ref1 lines], [ref2 lines]]`).
    pub fn new(config: BleuConfig, refs: &[Vec<String>]) -> Result<Self, Error> {
        if config.max_ngram_order == 0 {
            return Err(Error::InvalidOption(
                "max n-gram order must be at least 1".into(),
            ));
        }
        let (segments, nrefs) = check_refs(refs)?;
        let flat: Vec<String> = (0..segments * nrefs)
            .into_par_iter()
            .with_min_len(512)
            .map(|k| preprocess(&config, &refs[k % nrefs][k / nrefs]))
            .collect();
        Ok(Bleu {
            config,
            nrefs,
            segments,
            refs: flat,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BleuConfig {
        &self.config
    }

    /// Full BLEU result from summed statistics (`[sys_len, ref_len, counts.., totals..]`).
    pub fn score_from_stats(&self, s: &[u64]) -> BleuScore {
        let n = self.config.max_ngram_order;
        compute_bleu(
            &s[2..2 + n],
            &s[2 + n..2 + 2 * n],
            s[0],
            s[1],
            self.config.smooth,
            self.config.smooth_value,
            self.config.effective_order,
        )
    }

    /// Corpus BLEU of `hyps`.
    pub fn corpus_score(&self, hyps: &[String]) -> Result<BleuScore, Error> {
        Ok(self.score_from_stats(&self.stats(hyps)?.sum()))
    }

    /// sacreBLEU's `BLEU.sentence_score`: one hypothesis against its references.
    pub fn sentence_score(
        config: &BleuConfig,
        hyp: &str,
        refs: &[&str],
    ) -> Result<BleuScore, Error> {
        let streams: Vec<Vec<String>> = refs.iter().map(|r| vec![r.to_string()]).collect();
        Bleu::new(config.clone(), &streams)?.corpus_score(&[hyp.to_owned()])
    }
}

fn preprocess(config: &BleuConfig, s: &str) -> String {
    let s = if config.lowercase {
        py_lower(s)
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    config.tokenizer.tokenize(py_rstrip(&s))
}

impl Metric for Bleu {
    fn name(&self) -> String {
        "BLEU".into()
    }

    fn width(&self) -> usize {
        2 + 2 * self.config.max_ngram_order
    }

    fn segments(&self) -> usize {
        self.segments
    }

    fn stats(&self, hyps: &[String]) -> Result<SegmentStats, Error> {
        check_hyps(hyps, self.segments)?;
        let width = self.width();
        let mut data = vec![0u64; self.segments * width];
        data.par_chunks_mut(width)
            .with_min_len(256)
            .enumerate()
            .for_each_init(
                || (String::new(), Vec::new()),
                |(tok, ids), (i, row)| {
                    let hyp = &hyps[i];
                    let lowered = if self.config.lowercase {
                        py_lower(hyp)
                    } else {
                        std::borrow::Cow::Borrowed(&**hyp)
                    };
                    self.config
                        .tokenizer
                        .tokenize_into(py_rstrip(&lowered), tok);
                    let refs = &self.refs[i * self.nrefs..(i + 1) * self.nrefs];
                    segment_stats(
                        tok,
                        refs,
                        self.config.max_ngram_order,
                        self.config.tokenizer,
                        ids,
                        row,
                    );
                },
            );
        Ok(SegmentStats { width, data })
    }

    fn score(&self, sums: &[u64]) -> f64 {
        self.score_from_stats(sums).score
    }

    fn report(&self, sums: &[u64]) -> Report {
        let b = self.score_from_stats(sums);
        Report {
            name: self.name(),
            score: b.score,
            verbose: Some(b.verbose()),
            details: vec![
                ("counts", b.counts.clone().into()),
                ("totals", b.totals.clone().into()),
                ("precisions", b.precisions.clone().into()),
                ("bp", b.bp.into()),
                ("ratio", b.ratio.into()),
                ("sys_len", b.sys_len.into()),
                ("ref_len", b.ref_len.into()),
            ],
        }
    }

    fn signature(&self) -> Signature {
        let c = &self.config;
        let mut sig = Signature::new(self.nrefs);
        sig.push("case", "c", if c.lowercase { "lc" } else { "mixed" });
        sig.push("eff", "e", if c.effective_order { "yes" } else { "no" });
        sig.push("tok", "tok", c.tokenizer.name());
        let mut smooth = c.smooth.name().to_owned();
        if let Some(def) = c.smooth.default_value() {
            smooth.push_str(&format!("[{:.2}]", c.smooth_value.unwrap_or(def)));
        }
        sig.push("smooth", "s", smooth);
        sig
    }
}

/// sacreBLEU's `_get_closest_ref_len`: the closest length, the shorter one on ties.
fn closest_ref_len(hyp_len: u64, ref_lens: impl Iterator<Item = u64>) -> u64 {
    let mut best: Option<(u64, u64)> = None;
    for r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, l)) if diff < d || (diff == d && r < l) => Some((diff, r)),
            keep => keep,
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Fills `row = [hyp_len, ref_len, correct.., total..]` for one segment of tokenized text.
fn segment_stats(
    hyp: &str,
    refs: &[String],
    max_n: usize,
    tokenizer: Tokenizer,
    ids: &mut Vec<u32>,
    row: &mut [u64],
) {
    // Token ids local to the segment keep n-gram keys small and exact.
    let bytes = hyp.len() + refs.iter().map(String::len).sum::<usize>();
    let mut vocab: FxHashMap<&str, u32> =
        FxHashMap::with_capacity_and_hasher(bytes / 4 + 8, Default::default());
    ids.clear();
    let mut bounds = Vec::with_capacity(refs.len() + 2);
    bounds.push(0usize);
    for text in std::iter::once(hyp).chain(refs.iter().map(|s| s.as_str())) {
        // Tokenizer output is tokens joined by single spaces: no need to classify characters.
        let tokens: Box<dyn Iterator<Item = &str>> = if tokenizer == Tokenizer::None {
            Box::new(py_split(text))
        } else {
            Box::new(text.split(' ').filter(|t| !t.is_empty()))
        };
        for t in tokens {
            let next = vocab.len() as u32;
            ids.push(*vocab.entry(t).or_insert(next));
        }
        bounds.push(ids.len());
    }
    let hyp_ids = &ids[bounds[0]..bounds[1]];
    let ref_ids: Vec<&[u32]> = bounds[1..].windows(2).map(|w| &ids[w[0]..w[1]]).collect();
    row[0] = hyp_ids.len() as u64;
    row[1] = closest_ref_len(hyp_ids.len() as u64, ref_ids.iter().map(|r| r.len() as u64));
    let (correct, total) = row[2..].split_at_mut(max_n);
    let (mut per_ref, mut merged) = (Vec::new(), Vec::new());
    ngram_matches(
        hyp_ids,
        &ref_ids,
        max_n,
        bits_for(vocab.len()),
        &mut per_ref,
        Some(&mut merged),
    );
    for n in 1..=max_n {
        total[n - 1] = windows(hyp_ids.len(), n);
        correct[n - 1] = merged[n - 1];
    }
}
