//! What BLEU and chrF share: per-segment sufficient statistics, signatures and printable scores.

use crate::Error;

/// The sacreBLEU version whose scores this crate reproduces; it is the `version:` field of every
/// signature, so a signature printed here names the sacreBLEU release that gives the same numbers.
pub const SACREBLEU_VERSION: &str = "2.6.0";

/// Per-segment sufficient statistics: one row of `width` integers per segment. Corpus scores are
/// computed from column sums, which is what makes resampling tests cheap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentStats {
    /// Integers per segment.
    pub width: usize,
    /// Row-major `segments x width`.
    pub data: Vec<u64>,
}

impl SegmentStats {
    /// Number of segments.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.width).unwrap_or(0)
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Statistics of segment `i`.
    pub fn row(&self, i: usize) -> &[u64] {
        &self.data[i * self.width..(i + 1) * self.width]
    }

    /// Column sums over all segments.
    pub fn sum(&self) -> Vec<u64> {
        let mut s = vec![0u64; self.width];
        for row in self.data.chunks_exact(self.width.max(1)) {
            for (a, b) in s.iter_mut().zip(row) {
                *a += b;
            }
        }
        s
    }

    /// Column sums over the segments listed in `idx` (repetitions count).
    pub fn sum_indexed(&self, idx: &[u32]) -> Vec<u64> {
        let mut s = vec![0u64; self.width];
        for &i in idx {
            for (a, b) in s.iter_mut().zip(self.row(i as usize)) {
                *a += b;
            }
        }
        s
    }
}

/// A sacreBLEU reproducibility signature: ordered `key:value` pairs, `version` always last.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    /// `(long name, short name, value)` in sacreBLEU's order.
    pub fields: Vec<(&'static str, &'static str, String)>,
}

impl Signature {
    /// The shared leading part: `nrefs`.
    pub(crate) fn new(nrefs: usize) -> Self {
        Signature {
            fields: vec![("nrefs", "#", nrefs.to_string())],
        }
    }

    pub(crate) fn push(
        &mut self,
        long: &'static str,
        short: &'static str,
        value: impl Into<String>,
    ) {
        self.fields.push((long, short, value.into()));
    }

    /// Adds resampling information the way sacreBLEU's paired tests do: `bs`/`ar` then `seed`,
    /// right after `nrefs`.
    pub fn with_resampling(mut self, bs: Option<usize>, ar: Option<usize>, seed: &str) -> Self {
        let mut extra = Vec::new();
        if let Some(n) = bs {
            extra.push(("bs", "bs", n.to_string()));
        }
        if let Some(n) = ar {
            extra.push(("ar", "ar", n.to_string()));
        }
        extra.push(("seed", "rs", seed.to_owned()));
        let at = 1.min(self.fields.len());
        self.fields.splice(at..at, extra);
        self
    }

    /// `nrefs:1|case:mixed|...|version:2.6.0`, or the abbreviated form (`#:1|c:mixed|...|v:2.6.0`).
    pub fn format(&self, short: bool) -> String {
        let mut parts: Vec<String> = self
            .fields
            .iter()
            .map(|(l, s, v)| format!("{}:{v}", if short { s } else { l }))
            .collect();
        parts.push(format!(
            "{}:{SACREBLEU_VERSION}",
            if short { "v" } else { "version" }
        ));
        parts.join("|")
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.format(false))
    }
}

/// A computed corpus or sentence score, ready to print.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// `BLEU`, `chrF2`, `chrF2++`.
    pub name: String,
    /// The score in 0..=100.
    pub score: f64,
    /// The part after the score in sacreBLEU's text output (BLEU only), e.g.
    /// `60.2/34.1/21.3/13.8 (BP = 1.000 ratio = 1.006 hyp_len = 62688 ref_len = 62314)`.
    pub verbose: Option<String>,
    /// Metric-specific details for JSON output (`counts`, `totals`, ...), in order.
    pub details: Vec<(&'static str, serde_json::Value)>,
}

/// A metric with cached references: sufficient statistics for a system, and scores from them.
pub trait Metric: Sync {
    /// The metric's display name (`BLEU`, `chrF2`, `chrF2++`).
    fn name(&self) -> String;
    /// Number of integers per segment.
    fn width(&self) -> usize;
    /// Number of segments (reference lines).
    fn segments(&self) -> usize;
    /// Per-segment statistics of `hyps` against the cached references.
    fn stats(&self, hyps: &[String]) -> Result<SegmentStats, Error>;
    /// The score of summed statistics.
    fn score(&self, sums: &[u64]) -> f64;
    /// The full printable result of summed statistics.
    fn report(&self, sums: &[u64]) -> Report;
    /// The reproducibility signature.
    fn signature(&self) -> Signature;
}

/// Checks that reference streams are non-empty and equally long; returns `(segments, nrefs)`.
pub(crate) fn check_refs(refs: &[Vec<String>]) -> Result<(usize, usize), Error> {
    let first = refs.first().ok_or(Error::NoReferences)?;
    for (i, r) in refs.iter().enumerate() {
        if r.len() != first.len() {
            return Err(Error::RefLengths {
                first: first.len(),
                index: i + 1,
                len: r.len(),
            });
        }
    }
    Ok((first.len(), refs.len()))
}

pub(crate) fn check_hyps(hyps: &[String], segments: usize) -> Result<(), Error> {
    if hyps.len() != segments {
        return Err(Error::HypLengths {
            hyps: hyps.len(),
            refs: segments,
        });
    }
    Ok(())
}
