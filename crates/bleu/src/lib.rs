//! BLEU, chrF and chrF++ computed exactly as sacreBLEU 2.6.0 computes them, only much faster.
//! Also paired significance tests (bootstrap resampling, approximate randomization) between systems.
//!
//! Scores come from per-segment sufficient statistics ([`SegmentStats`]): BLEU's clipped n-gram
//! matches, n-gram totals and lengths, chrF's character/word n-gram counts. Tokenizers (`13a`, `intl`,
//! `char`, `zh`, `none`), smoothing (`exp`, `floor`, `add-k`, `none`), effective order, multiple
//! references and chrF's whitespace handling follow sacreBLEU line by line, so every score carries
//! a sacreBLEU signature whose `version:2.6.0` names the release that gives the same numbers.
//! Segments are scored in parallel; n-grams are counted over per-segment token ids.
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

mod bleu;
mod chrf;
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
    /// A file (or standard input) could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error: the error's `source`, so printing the chain says it once.
        source: std::io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8 at byte {column} of the line")]
    InvalidUtf8 {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// 1-based byte offset of the first invalid byte within the line.
        column: usize,
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
