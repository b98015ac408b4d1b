//! BLEU, chrF and chrF++ computed exactly as sacreBLEU 2.6.0 computes them, only much faster.
//! Also paired significance tests (bootstrap resampling, approximate randomization) between systems.
//!
//! Scores come from per-segment sufficient statistics ([`SegmentStats`]): BLEU's clipped n-gram
//! matches, n-gram totals and lengths, chrF's character/word n-gram counts. Tokenizers (`13a`, `intl`,
//! `char`, `zh`, `none`), smoothing (`exp`, `floor`, `add-k`, `none`), effective order, multiple
//! references and chrF's whitespace handling follow sacreBLEU line by line, so every score carries
//! a sacreBLEU signature whose `version:2.6.0` names the release that gives the same numbers.
//! Segments are scored in parallel; n-grams are counted over per-segment token ids.
//! [`evaluation`] computes what sacreBLEU's command line prints (one system, several, paired
//! tests) and [`report`] prints it; [`text`] reads files by sacreBLEU's rules.
//!
//! ```
//! use rdrop_bleu::{Bleu, BleuConfig, Metric};
//! let refs = vec![vec!["The cat sat on the mat.".to_string(), "A dog barked.".to_string()]];
//! let hyps = vec!["The cat sat on a mat.".to_string(), "A dog barked.".to_string()];
//! let bleu = Bleu::new(BleuConfig::default(), &refs)?;
//! let score = bleu.corpus_score(&hyps)?;
//! assert_eq!(score.totals, vec![11, 9, 7, 5]);
//! assert!(score.score > 0.0 && score.score < 100.0);
//! assert_eq!(bleu.signature().to_string(), "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
//! # Ok::<(), rdrop_bleu::Error>(())
//! ```

#![deny(missing_docs)]

mod bleu;
mod chrf;
pub mod evaluation;
mod metric;
mod ngram;
pub mod report;
pub mod significance;
pub mod text;
mod tokenize;

pub use bleu::{compute_bleu, Bleu, BleuConfig, BleuScore, Smoothing};
pub use chrf::{chrf_f_score, Chrf, ChrfConfig};
pub use metric::{Metric, Report, SegmentStats, Signature, SACREBLEU_VERSION};
pub use tokenize::{is_zh_char, Tokenizer};

/// Errors from reading text and configuring metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file (or standard input) could not be read, or a line of it is not UTF-8.
    #[error(transparent)]
    Text(#[from] rdrop_text::Error),
    /// A system has no hypotheses.
    #[error("{0} contains no lines: nothing to score")]
    EmptySystem(String),
    /// A system and a reference stream differ in length.
    #[error("{system} has {system_lines} lines but {reference} has {reference_lines}: hypotheses and references must be aligned line by line")]
    Misaligned {
        /// Where the hypotheses came from.
        system: String,
        /// How many there are.
        system_lines: usize,
        /// The reference stream.
        reference: String,
        /// Its length.
        reference_lines: usize,
    },
    /// A line has the wrong number of tab-separated fields.
    #[error("{path}:{line}: expected {expected} tab-separated fields, found {found}")]
    FieldCount {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Fields required.
        expected: usize,
        /// Fields present.
        found: usize,
    },
    /// No reference stream was given.
    #[error("no references given")]
    NoReferences,
    /// Reference streams differ in length.
    #[error("reference stream {index} has {len} lines but the first has {first}")]
    RefLengths {
        /// Lines in the first stream.
        first: usize,
        /// 1-based index of the offending stream.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// Hypotheses and references differ in length.
    #[error("{hyps} hypotheses for {refs} reference lines")]
    HypLengths {
        /// Hypothesis count.
        hyps: usize,
        /// Reference count.
        refs: usize,
    },
    /// A tokenizer name sacreBLEU does not know (or this crate does not support).
    #[error("unknown tokenizer {0:?} (supported: 13a, intl, char, zh, none)")]
    UnknownTokenizer(String),
    /// A smoothing method name sacreBLEU does not know.
    #[error("unknown smoothing method {0:?} (supported: exp, floor, add-k, none)")]
    UnknownSmoothing(String),
    /// An option value that cannot work.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl From<rdrop_text::InvalidUtf8> for Error {
    fn from(e: rdrop_text::InvalidUtf8) -> Self {
        Error::Text(e.into())
    }
}
