//! chrF (Popović 2015) and chrF++ (Popović 2017) as sacreBLEU 2.6.0 computes them.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::metric::{check_hyps, check_refs, Metric, Report, SegmentStats, Signature};
use crate::ngram::{bits_for, ngram_matches, windows};
use crate::text::{is_py_space, py_lower, py_split};
use crate::Error;

/// chrF options, with sacreBLEU's defaults (chrF2: 6 character orders, no word n-grams, beta 2).
#[derive(Clone, Debug, PartialEq)]
pub struct ChrfConfig {
    /// Character n-gram order (`--chrf-char-order`, 6).
    pub char_order: usize,
    /// Word n-gram order (`--chrf-word-order`, 0; 2 gives chrF++).
    pub word_order: usize,
    /// Recall weight (`--chrf-beta`, 2).
    pub beta: u32,
    /// Lowercase first (`--chrf-lowercase`).
    pub lowercase: bool,
    /// Keep whitespace in character n-grams (`--chrf-whitespace`).
    pub whitespace: bool,
    /// chrF++.py-style epsilon smoothing instead of effective-order averaging (`--chrf-eps-smoothing`).
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfConfig {
    /// chrF++ (word order 2), otherwise the defaults.
    pub fn plus_plus() -> Self {
        ChrfConfig {
            word_order: 2,
            ..Self::default()
        }
    }

    fn order(&self) -> usize {
        self.char_order + self.word_order
    }

    /// `chrF2`, `chrF2++`: beta, then one `+` per word order.
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }
}

/// sacreBLEU's `CHRF._compute_f_score` over `[hyp, ref, match]` triples per order.
pub fn chrf_f_score(stats: &[u64], beta: u32, eps_smoothing: bool) -> f64 {
    let order = stats.len() / 3;
    let eps = 1e-16;
    let factor = (beta as f64) * (beta as f64);
    let (mut score, mut avg_prec, mut avg_rec, mut eff) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for t in stats.chunks_exact(3) {
        let (n_hyp, n_ref, n_match) = (t[0], t[1], t[2]);
        let prec = if n_hyp > 0 {
            n_match as f64 / n_hyp as f64
        } else {
            eps
        };
        let rec = if n_ref > 0 {
            n_match as f64 / n_ref as f64
        } else {
            eps
        };
        let denom = factor * prec + rec;
        score += if denom > 0.0 {
            (1.0 + factor) * prec * rec / denom
        } else {
            eps
        };
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += prec;
            avg_rec += rec;
            eff += 1;
        }
    }
    if eps_smoothing {
        return 100.0 * score / order as f64;
    }
    if eff == 0 {
        avg_prec = 0.0;
        avg_rec = 0.0;
    } else {
        avg_prec /= eff as f64;
        avg_rec /= eff as f64;
    }
    if avg_prec + avg_rec != 0.0 {
        let mut s = (1.0 + factor) * avg_prec * avg_rec;
        s /= (factor * avg_prec) + avg_rec;
        100.0 * s
    } else {
        0.0
    }
}

/// chrF with cached references.
pub struct Chrf {
    config: ChrfConfig,
    nrefs: usize,
    segments: usize,
    /// Preprocessed references, segment-major.
    refs: Vec<String>,
}

impl Chrf {
    /// Prepares references given as `nrefs` streams of equal length.
    pub fn new(config: ChrfConfig, refs: &[Vec<String>]) -> Result<Self, Error> {
        if config.order() == 0 {
            return Err(Error::InvalidOption(
                "chrF needs a character or word order above 0".into(),
            ));
        }
        let (segments, nrefs) = check_refs(refs)?;
        let flat = (0..segments * nrefs)
            .into_par_iter()
            .with_min_len(512)
            .map(|k| {
                let s = &refs[k % nrefs][k / nrefs];
                if config.lowercase {
                    py_lower(s).into_owned()
                } else {
                    s.clone()
                }
            })
            .collect();
        Ok(Chrf {
            config,
            nrefs,
            segments,
            refs: flat,
        })
    }

    /// Corpus chrF of `hyps`.
    pub fn corpus_score(&self, hyps: &[String]) -> Result<f64, Error> {
        Ok(self.score(&self.stats(hyps)?.sum()))
    }

    /// sacreBLEU's `CHRF.sentence_score`.
    pub fn sentence_score(config: &ChrfConfig, hyp: &str, refs: &[&str]) -> Result<f64, Error> {
        let streams: Vec<Vec<String>> = refs.iter().map(|r| vec![r.to_string()]).collect();
        Chrf::new(config.clone(), &streams)?.corpus_score(&[hyp.to_owned()])
    }
}

const PUNCTS: &[u8] = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// sacreBLEU's `CHRF._remove_punctuation`: one ASCII punctuation mark split off the end, else the start.
fn remove_punctuation<'a>(sent: &'a str, out: &mut Vec<&'a str>) {
    for w in py_split(sent) {
        let mut it = w.chars();
        let first = it.next();
        if it.next().is_none() {
            out.push(w);
            continue;
        }
        let last = w.as_bytes()[w.len() - 1];
        if PUNCTS.contains(&last) {
            out.push(&w[..w.len() - 1]);
            out.push(&w[w.len() - 1..]);
        } else if first.is_some_and(|c| c.is_ascii() && PUNCTS.contains(&(c as u8))) {
            out.push(&w[..1]);
            out.push(&w[1..]);
        } else {
            out.push(w);
        }
    }
}

fn word_ids<'a>(
    s: &'a str,
    vocab: &mut FxHashMap<&'a str, u32>,
    words: &mut Vec<&'a str>,
) -> Vec<u32> {
    words.clear();
    remove_punctuation(s, words);
    words
        .iter()
        .map(|w| {
            let next = vocab.len() as u32;
            *vocab.entry(w).or_insert(next)
        })
        .collect()
}

/// Appends, per reference, `[hyp, ref, match]` for orders `1..=orders` of one channel (characters or
/// words) to `out[r]`. sacreBLEU counts no hypothesis n-grams when the reference has none of an order.
fn channel(hyp: &[u32], refs: &[&[u32]], orders: usize, bits: u32, out: &mut [Vec<u64>]) {
    let mut per_ref = Vec::new();
    ngram_matches(hyp, refs, orders, bits, &mut per_ref, None);
    for n in 1..=orders {
        let hyp_total = windows(hyp.len(), n);
        for (r, (rf, o)) in refs.iter().zip(out.iter_mut()).enumerate() {
            let ref_total = windows(rf.len(), n);
            o.extend_from_slice(&[
                if ref_total == 0 { 0 } else { hyp_total },
                ref_total,
                per_ref[(n - 1) * refs.len() + r],
            ]);
        }
    }
}

/// Characters as per-segment ids (dense ids keep n-gram keys in one machine word).
fn intern_chars(texts: &[&str], whitespace: bool) -> (Vec<Vec<u32>>, u32) {
    let mut ascii = [u32::MAX; 128];
    let mut other: FxHashMap<char, u32> = FxHashMap::default();
    let mut next = 0u32;
    let seqs = texts
        .iter()
        .map(|t| {
            t.chars()
                .filter(|&c| whitespace || !is_py_space(c))
                .map(|c| {
                    let slot = if c.is_ascii() {
                        &mut ascii[c as usize]
                    } else {
                        other.entry(c).or_insert(u32::MAX)
                    };
                    if *slot == u32::MAX {
                        *slot = next;
                        next += 1;
                    }
                    *slot
                })
                .collect()
        })
        .collect();
    (seqs, bits_for(next as usize))
}

impl Chrf {
    fn segment(&self, hyp: &str, refs: &[String], row: &mut [u64]) {
        let c = &self.config;
        let texts: Vec<&str> = std::iter::once(hyp)
            .chain(refs.iter().map(String::as_str))
            .collect();
        let (chars, bits) = intern_chars(&texts, c.whitespace);
        let ref_slices: Vec<&[u32]> = chars[1..].iter().map(|v| v.as_slice()).collect();
        let mut per_ref: Vec<Vec<u64>> = vec![Vec::with_capacity(3 * c.order()); refs.len()];
        channel(&chars[0], &ref_slices, c.char_order, bits, &mut per_ref);
        if c.word_order > 0 {
            let mut vocab: FxHashMap<&str, u32> = FxHashMap::default();
            let mut words = Vec::new();
            let hyp_w = word_ids(hyp, &mut vocab, &mut words);
            let ref_w: Vec<Vec<u32>> = refs
                .iter()
                .map(|r| word_ids(r, &mut vocab, &mut words))
                .collect();
            let bits = bits_for(vocab.len());
            let ref_ws: Vec<&[u32]> = ref_w.iter().map(|v| v.as_slice()).collect();
            channel(&hyp_w, &ref_ws, c.word_order, bits, &mut per_ref);
        }
        let mut best = -1.0;
        for stats in &per_ref {
            let f = chrf_f_score(stats, c.beta, c.eps_smoothing);
            if f > best {
                best = f;
                row.copy_from_slice(stats);
            }
        }
    }
}

impl Metric for Chrf {
    fn name(&self) -> String {
        self.config.name()
    }

    fn width(&self) -> usize {
        3 * self.config.order()
    }

    fn segments(&self) -> usize {
        self.segments
    }

    fn stats(&self, hyps: &[String]) -> Result<SegmentStats, Error> {
        check_hyps(hyps, self.segments)?;
        let width = self.width();
        let mut data = vec![0u64; self.segments * width];
        data.par_chunks_mut(width)
            .with_min_len(128)
            .enumerate()
            .for_each(|(i, row)| {
                let hyp = if self.config.lowercase {
                    py_lower(&hyps[i])
                } else {
                    std::borrow::Cow::Borrowed(&*hyps[i])
                };
                self.segment(&hyp, &self.refs[i * self.nrefs..(i + 1) * self.nrefs], row);
            });
        Ok(SegmentStats { width, data })
    }

    fn score(&self, sums: &[u64]) -> f64 {
        chrf_f_score(sums, self.config.beta, self.config.eps_smoothing)
    }

    fn report(&self, sums: &[u64]) -> Report {
        let trip: Vec<Vec<u64>> = sums.chunks_exact(3).map(|t| t.to_vec()).collect();
        Report {
            name: self.name(),
            score: self.score(sums),
            verbose: None,
            details: vec![("stats", trip.into())],
        }
    }

    fn signature(&self) -> Signature {
        let c = &self.config;
        let mut sig = Signature::new(self.nrefs);
        sig.push("case", "c", if c.lowercase { "lc" } else { "mixed" });
        sig.push("eff", "e", if c.eps_smoothing { "no" } else { "yes" });
        sig.push("nc", "nc", c.char_order.to_string());
        sig.push("nw", "nw", c.word_order.to_string());
        sig.push("space", "s", if c.whitespace { "yes" } else { "no" });
        sig
    }
}
