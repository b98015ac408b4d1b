//! `rdrop bleu`: corpus BLEU and chrF identical to sacreBLEU 2.6.0, with paired significance tests.
//!
//! The command line mirrors sacreBLEU's (`rdrop bleu REF [REF ...] -i HYP [HYP ...]`, `-tok`, `-lc`,
//! `-m bleu chrf`, `--paired-bs`, ...), and so does the output; the default format is text.
//! This file turns flags into an [`rdrop_bleu::evaluation`] request, reads the files and prints.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context};
use rdrop_bleu::evaluation::{
    check_aligned, evaluate, looks_tokenized, Format, Mode, PairedMethod, Resampling, Style, System,
};
use rdrop_bleu::significance::DEFAULT_SEED;
use rdrop_bleu::text::{read_lines, read_systems_from, split_tabbed_refs};
use rdrop_bleu::{Bleu, BleuConfig, Chrf, ChrfConfig, Metric, Smoothing, Tokenizer};

#[derive(clap::Args, Debug)]
#[command(
    about = "Corpus BLEU and chrF identical to sacreBLEU 2.6.0, with paired significance tests",
    after_help = "sacreBLEU's multi-letter short flags work too: -tok, -lc, -nr, -sl, -sv, -cc, -cw, -ci, -cin, \
-par, -pbs, -parn, -pbsn, -sh, -nc.\nSignatures end in version:2.6.0: the sacreBLEU release whose scores these are."
)]
pub struct Args {
    /// Reference files (aligned line by line with the hypotheses); several files give several references.
    #[arg(value_name = "REF", required = true)]
    pub refs: Vec<PathBuf>,
    /// Hypothesis files, one per system; without it, standard input (tab-separated systems).
    #[arg(short = 'i', long = "input", value_name = "HYP", num_args = 0.., help_heading = "Input")]
    pub input: Option<Vec<PathBuf>>,
    /// Split each reference line on tabs into this many references (one reference file only).
    #[arg(
        long = "num-refs",
        default_value_t = 1,
        value_name = "N",
        help_heading = "Input"
    )]
    pub num_refs: usize,
    /// Input encoding; only UTF-8 is supported.
    #[arg(
        short = 'e',
        long = "encoding",
        default_value = "utf-8",
        help_heading = "Input"
    )]
    pub encoding: String,
    /// Metrics to compute.
    #[arg(short = 'm', long = "metrics", num_args = 1.., default_values_t = vec!["bleu".to_string()],
          value_parser = ["bleu", "chrf"], help_heading = "Metrics")]
    pub metrics: Vec<String>,
    /// One score per line (a single metric and system).
    #[arg(long = "sentence-level", help_heading = "Metrics")]
    pub sentence_level: bool,

    /// BLEU smoothing: exp, floor, add-k or none.
    #[arg(short = 's', long = "smooth-method", default_value = "exp",
          value_parser = ["exp", "floor", "add-k", "none"], help_heading = "BLEU")]
    pub smooth_method: String,
    /// Smoothing value for floor (default 0.1) and add-k (default 1).
    #[arg(long = "smooth-value", value_name = "V", help_heading = "BLEU")]
    pub smooth_value: Option<f64>,
    /// BLEU tokenizer.
    #[arg(long = "tokenize", default_value = "13a", value_parser = ["13a", "intl", "char", "zh", "none"], help_heading = "BLEU")]
    pub tokenize: String,
    /// Case-insensitive BLEU.
    #[arg(long = "lowercase", help_heading = "BLEU")]
    pub lowercase: bool,
    /// Accepted for compatibility: silences the tokenized-input warning.
    #[arg(long = "force", help_heading = "BLEU")]
    pub force: bool,
    /// Highest BLEU n-gram order (an rdrop addition; sacreBLEU's signature does not record it).
    #[arg(
        long = "max-ngram-order",
        default_value_t = 4,
        value_name = "N",
        help_heading = "BLEU"
    )]
    pub max_ngram_order: usize,

    /// chrF character n-gram order.
    #[arg(
        long = "chrf-char-order",
        default_value_t = 6,
        value_name = "N",
        help_heading = "chrF"
    )]
    pub chrf_char_order: usize,
    /// chrF word n-gram order (2 gives chrF++).
    #[arg(
        long = "chrf-word-order",
        default_value_t = 0,
        value_name = "N",
        help_heading = "chrF"
    )]
    pub chrf_word_order: usize,
    /// chrF recall weight.
    #[arg(
        long = "chrf-beta",
        default_value_t = 2,
        value_name = "B",
        help_heading = "chrF"
    )]
    pub chrf_beta: u32,
    /// Keep whitespace in chrF character n-grams.
    #[arg(long = "chrf-whitespace", help_heading = "chrF")]
    pub chrf_whitespace: bool,
    /// Case-insensitive chrF.
    #[arg(long = "chrf-lowercase", help_heading = "chrF")]
    pub chrf_lowercase: bool,
    /// chrF++.py-style epsilon smoothing.
    #[arg(long = "chrf-eps-smoothing", help_heading = "chrF")]
    pub chrf_eps_smoothing: bool,

    /// Bootstrap confidence interval for a single system.
    #[arg(long = "confidence", help_heading = "Significance")]
    pub confidence: bool,
    /// Bootstrap resamples for --confidence.
    #[arg(
        long = "confidence-n",
        default_value_t = 1000,
        value_name = "N",
        help_heading = "Significance"
    )]
    pub confidence_n: usize,
    /// Paired approximate randomization test against the first system.
    #[arg(
        long = "paired-ar",
        conflicts_with = "paired_bs",
        help_heading = "Significance"
    )]
    pub paired_ar: bool,
    /// Paired bootstrap resampling test against the first system.
    #[arg(long = "paired-bs", help_heading = "Significance")]
    pub paired_bs: bool,
    /// Approximate randomization trials.
    #[arg(
        long = "paired-ar-n",
        default_value_t = 10000,
        value_name = "N",
        help_heading = "Significance"
    )]
    pub paired_ar_n: usize,
    /// Bootstrap resamples for --paired-bs.
    #[arg(
        long = "paired-bs-n",
        default_value_t = 1000,
        value_name = "N",
        help_heading = "Significance"
    )]
    pub paired_bs_n: usize,
    /// Accepted for compatibility; tests run in parallel threads regardless.
    #[arg(
        short = 'j',
        long = "paired-jobs",
        default_value_t = 1,
        value_name = "N",
        help_heading = "Significance"
    )]
    pub paired_jobs: usize,
    /// Resampling seed (default: $SACREBLEU_SEED, else 12345; `none` draws one).
    #[arg(long = "seed", value_name = "SEED", help_heading = "Significance")]
    pub seed: Option<String>,

    /// Accepted for compatibility (rdrop prints no progress messages).
    #[arg(short = 'q', long = "quiet", help_heading = "Output")]
    pub quiet: bool,
    /// Abbreviated signatures.
    #[arg(long = "short", help_heading = "Output")]
    pub short: bool,
    /// Print only the score.
    #[arg(short = 'b', long = "score-only", help_heading = "Output")]
    pub score_only: bool,
    /// Decimal places.
    #[arg(
        short = 'w',
        long = "width",
        default_value_t = 1,
        help_heading = "Output"
    )]
    pub width: usize,
    /// Accepted for compatibility (output is never coloured).
    #[arg(long = "no-color", help_heading = "Output")]
    pub no_color: bool,
    /// Output format (overridden by $SACREBLEU_FORMAT when that is text or json).
    #[arg(short = 'f', long = "format", default_value = "text", value_parser = ["text", "json"], help_heading = "Output")]
    pub format: String,
}

/// sacreBLEU's multi-letter single-dash flags, rewritten to their long forms before clap parses.
const SACREBLEU_SHORT: &[(&str, &str)] = &[
    ("-tok", "--tokenize"),
    ("-lc", "--lowercase"),
    ("-nr", "--num-refs"),
    ("-sl", "--sentence-level"),
    ("-sv", "--smooth-value"),
    ("-cc", "--chrf-char-order"),
    ("-cw", "--chrf-word-order"),
    ("-ci", "--confidence"),
    ("-cin", "--confidence-n"),
    ("-par", "--paired-ar"),
    ("-pbs", "--paired-bs"),
    ("-parn", "--paired-ar-n"),
    ("-pbsn", "--paired-bs-n"),
    ("-sh", "--short"),
    ("-nc", "--no-color"),
];

/// Rewrites `rdrop bleu` arguments so that sacreBLEU's `-tok 13a`, `-lc`, ... parse; other
/// subcommands' arguments pass through untouched.
pub fn sacrebleu_aliases(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut v: Vec<OsString> = args.into_iter().collect();
    if v.get(1).is_some_and(|a| a == "bleu") {
        for a in v.iter_mut().skip(2) {
            if let Some((_, long)) = SACREBLEU_SHORT.iter().find(|(s, _)| a == s) {
                *a = OsString::from(long);
            }
        }
    }
    v
}

/// `--seed`, else `$SACREBLEU_SEED`, else sacreBLEU's default; `none` draws one.
fn resolve_seed(flag: Option<&str>) -> anyhow::Result<(u64, String)> {
    let raw = match flag {
        Some(s) => s.to_owned(),
        None => std::env::var("SACREBLEU_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_string()),
    };
    if raw.eq_ignore_ascii_case("none") {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return Ok((nanos as u64 ^ std::process::id() as u64, "none".into()));
    }
    let seed: u64 = raw
        .parse()
        .with_context(|| format!("seed {raw:?} is not a non-negative integer or `none`"))?;
    Ok((seed, raw))
}

fn resampling(a: &Args, samples: usize) -> anyhow::Result<Resampling> {
    let (seed, seed_label) = resolve_seed(a.seed.as_deref())?;
    Ok(Resampling {
        samples,
        seed,
        seed_label,
    })
}

fn read_references(a: &Args) -> anyhow::Result<(Vec<Vec<String>>, Vec<String>)> {
    if a.num_refs == 0 {
        bail!("--num-refs must be at least 1");
    }
    if a.num_refs > 1 && a.refs.len() > 1 {
        bail!(
            "--num-refs splits one reference file on tabs; {} reference files were given",
            a.refs.len()
        );
    }
    let mut streams = Vec::new();
    let mut names = Vec::new();
    for path in &a.refs {
        let lines = read_lines(path)?;
        let name = path.display().to_string();
        if a.num_refs > 1 {
            streams = split_tabbed_refs(&lines, a.num_refs, &name)?;
            names = (1..=a.num_refs)
                .map(|k| format!("{name} (reference {k} of each line)"))
                .collect();
        } else {
            streams.push(lines);
            names.push(name);
        }
    }
    Ok((streams, names))
}

/// The systems of `-i` files, or of standard input's tab-separated fields, named as sacreBLEU
/// names them (the first is the baseline of paired tests).
fn read_systems(a: &Args, paired: bool) -> anyhow::Result<Vec<System>> {
    let mut systems: Vec<System> = Vec::new();
    match &a.input {
        None => {
            let stdin = std::io::stdin();
            let streams = read_systems_from(stdin.lock(), "<stdin>")?;
            let k = streams.len();
            for (i, lines) in streams.into_iter().enumerate() {
                let name = if paired && i == 0 {
                    "Baseline".to_owned()
                } else {
                    format!("System {}", i + usize::from(!paired))
                };
                let source = if k == 1 {
                    "<stdin>".to_owned()
                } else {
                    format!("<stdin> (field {})", i + 1)
                };
                systems.push(System {
                    name,
                    source,
                    lines,
                });
            }
        }
        Some(files) => {
            for path in files {
                let name = path.display().to_string();
                if systems.iter().any(|s| s.source == name) {
                    if paired && systems[0].source == name {
                        // sacreBLEU skips a system that repeats the baseline.
                        continue;
                    }
                    bail!("{name:?} already used to name a system: give each system a different file name");
                }
                systems.push(System::new(name, read_lines(path)?));
            }
            if paired {
                if let Some(s) = systems.first_mut() {
                    s.name = format!("Baseline: {}", s.name);
                }
            }
        }
    }
    Ok(systems)
}

fn build_metrics(
    a: &Args,
    refs: &[Vec<String>],
    effective_order: bool,
) -> anyhow::Result<Vec<Box<dyn Metric>>> {
    let mut out: Vec<Box<dyn Metric>> = Vec::new();
    let mut seen = Vec::new();
    for m in &a.metrics {
        if seen.contains(m) {
            continue;
        }
        seen.push(m.clone());
        match m.as_str() {
            "bleu" => {
                let cfg = BleuConfig {
                    lowercase: a.lowercase,
                    tokenizer: a.tokenize.parse::<Tokenizer>()?,
                    smooth: a.smooth_method.parse::<Smoothing>()?,
                    smooth_value: a.smooth_value,
                    max_ngram_order: a.max_ngram_order,
                    effective_order,
                };
                out.push(Box::new(Bleu::new(cfg, refs)?));
            }
            "chrf" => {
                let cfg = ChrfConfig {
                    char_order: a.chrf_char_order,
                    word_order: a.chrf_word_order,
                    beta: a.chrf_beta,
                    lowercase: a.chrf_lowercase,
                    whitespace: a.chrf_whitespace,
                    eps_smoothing: a.chrf_eps_smoothing,
                };
                out.push(Box::new(Chrf::new(cfg, refs)?));
            }
            other => bail!("unsupported metric {other:?} (supported: bleu, chrf)"),
        }
    }
    Ok(out)
}

/// What the flags ask for; resampling flags are checked (and the seed read) only where used.
fn mode(a: &Args) -> anyhow::Result<Mode> {
    if a.sentence_level {
        return Ok(Mode::Sentences);
    }
    if a.paired_bs || a.paired_ar {
        let (method, n) = if a.paired_bs {
            (PairedMethod::Bootstrap, a.paired_bs_n)
        } else {
            (PairedMethod::Randomization, a.paired_ar_n)
        };
        if n == 0 {
            bail!("the number of resamples/trials must be at least 1");
        }
        return Ok(Mode::Paired {
            method,
            resampling: resampling(a, n)?,
        });
    }
    let confidence = if a.confidence {
        Some(resampling(a, a.confidence_n)?)
    } else {
        None
    };
    Ok(Mode::Corpus { confidence })
}

pub fn run(mut a: Args) -> anyhow::Result<()> {
    if let Ok(f) = std::env::var("SACREBLEU_FORMAT") {
        let f = f.to_lowercase();
        if f == "text" || f == "json" {
            a.format = f;
        }
    }
    let enc = a.encoding.to_lowercase().replace('_', "-");
    if enc != "utf-8" && enc != "utf8" {
        bail!(
            "only UTF-8 input is supported (got --encoding {})",
            a.encoding
        );
    }
    let paired = a.paired_bs || a.paired_ar;
    if a.sentence_level && a.metrics.len() > 1 {
        bail!("only one metric can be used in sentence-level mode");
    }
    let (refs, ref_names) = read_references(&a)?;
    let systems = read_systems(&a, paired)?;
    if systems.is_empty() {
        bail!("no hypotheses: -i was given without files");
    }
    if a.sentence_level {
        if systems.len() > 1 {
            bail!("only one system can be evaluated in sentence-level mode");
        }
        if a.confidence || paired {
            bail!("statistical tests are unavailable in sentence-level mode");
        }
    }
    if paired && systems.len() == 1 {
        bail!("paired tests need several systems given to -i/--input");
    }
    if systems.len() > 1 && a.confidence {
        bail!("use the paired tests (--paired-bs, --paired-ar) for several systems");
    }
    check_aligned(&systems, &refs, &ref_names)?;
    if a.metrics.iter().any(|m| m == "bleu") && !a.force {
        if let Some(tokenized) = looks_tokenized(&systems[0].lines) {
            eprintln!(
                "warning: {tokenized} lines end in a tokenized period (' .'): BLEU expects detokenized text \
(--force silences this)"
            );
        }
    }
    let metrics = build_metrics(&a, &refs, a.sentence_level)?;
    let style = Style {
        format: if a.format == "json" {
            Format::Json
        } else {
            Format::Text
        },
        width: a.width,
        score_only: a.score_only,
        short: a.short,
    };
    let out = evaluate(&metrics, &systems, &mode(&a)?)?.render(&style);
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
