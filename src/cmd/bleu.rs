//! `rdrop bleu`: corpus BLEU and chrF identical to sacreBLEU 2.6.0, with paired significance tests.
//!
//! The command line mirrors sacreBLEU's (`rdrop bleu REF [REF ...] -i HYP [HYP ...]`, `-tok`, `-lc`,
//! `-m bleu chrf`, `--paired-bs`, ...), and so does the output; the default format is text.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context};
use rdrop_bleu::report::{
    fancy_grid, format_score, paired_explanation, python_json_objects, signatures_block,
    single_results, Confidence, Object,
};
use rdrop_bleu::significance::{self, PairedResult, DEFAULT_SEED};
use rdrop_bleu::text::{read_lines, read_systems_from, split_tabbed_refs};
use rdrop_bleu::{Bleu, BleuConfig, Chrf, ChrfConfig, Metric, SegmentStats, Smoothing, Tokenizer};

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

/// One system's hypotheses and where they came from.
struct System {
    name: String,
    source: String,
    lines: Vec<String>,
}

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
                systems.push(System {
                    lines: read_lines(path)?,
                    source: name.clone(),
                    name,
                });
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

/// sacreBLEU keys metrics by upper-case name and prints single-system results in that order.
fn metric_key(m: &dyn Metric) -> String {
    if m.name() == "BLEU" {
        "BLEU".into()
    } else {
        "CHRF".into()
    }
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
    for sys in &systems {
        if sys.lines.is_empty() {
            bail!("{} contains no lines: nothing to score", sys.source);
        }
        for (r, rname) in refs.iter().zip(&ref_names) {
            if r.len() != sys.lines.len() {
                bail!(
                    "{} has {} lines but {} has {}: hypotheses and references must be aligned line by line",
                    sys.source,
                    sys.lines.len(),
                    rname,
                    r.len()
                );
            }
        }
    }
    if a.metrics.iter().any(|m| m == "bleu") && !a.force {
        let tokenized = systems[0]
            .lines
            .iter()
            .filter(|l| l.ends_with(" ."))
            .count();
        if tokenized >= 100 {
            eprintln!(
                "warning: {tokenized} lines end in a tokenized period (' .'): BLEU expects detokenized text \
(--force silences this)"
            );
        }
    }
    let metrics = build_metrics(&a, &refs, a.sentence_level)?;
    let json = a.format == "json";
    let out = if a.sentence_level {
        sentence_level(&a, metrics[0].as_ref(), &systems[0])?
    } else if systems.len() == 1 {
        single_system(&a, &metrics, &systems[0], json)?
    } else if paired {
        paired_tests(&a, &metrics, &systems, json)?
    } else {
        multi_system(&a, &metrics, &systems, json)?
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn sentence_level(a: &Args, m: &dyn Metric, sys: &System) -> anyhow::Result<String> {
    let stats = m.stats(&sys.lines)?;
    let sig = m.signature().format(a.short);
    let mut out = String::new();
    for i in 0..stats.len() {
        out.push_str(&format_score(
            &m.report(stats.row(i)),
            a.width,
            a.score_only,
            &sig,
            false,
            None,
        ));
        out.push('\n');
    }
    Ok(out)
}

fn single_system(
    a: &Args,
    metrics: &[Box<dyn Metric>],
    sys: &System,
    json: bool,
) -> anyhow::Result<String> {
    let mut ordered: Vec<&dyn Metric> = metrics.iter().map(|m| m.as_ref()).collect();
    ordered.sort_by_key(|m| metric_key(*m));
    let mut results = Vec::new();
    for m in ordered {
        let stats = m.stats(&sys.lines)?;
        let report = m.report(&stats.sum());
        let mut sig = m.signature();
        let mut conf = None;
        if a.confidence {
            let (seed, seed_str) = resolve_seed(a.seed.as_deref())?;
            let (mean, ci) = significance::bootstrap_ci(m, &stats, a.confidence_n, seed);
            conf = Some(Confidence { mean, ci });
            sig = sig.with_resampling(Some(a.confidence_n), None, &seed_str);
        }
        let sig = sig.format(a.short && !json);
        results.push(format_score(
            &report,
            a.width,
            a.score_only,
            &sig,
            json,
            conf,
        ));
    }
    Ok(single_results(&results, json))
}

fn multi_system(
    a: &Args,
    metrics: &[Box<dyn Metric>],
    systems: &[System],
    json: bool,
) -> anyhow::Result<String> {
    let mut ordered: Vec<&dyn Metric> = metrics.iter().map(|m| m.as_ref()).collect();
    ordered.sort_by_key(|m| metric_key(*m));
    let mut columns: BTreeMap<usize, (String, Vec<String>)> = BTreeMap::new();
    let mut sigs = Vec::new();
    for (k, m) in ordered.iter().enumerate() {
        let mut cells = Vec::new();
        for sys in systems {
            let report = m.report(&m.stats(&sys.lines)?.sum());
            cells.push(format_score(&report, a.width, true, "", false, None));
        }
        columns.insert(k, (m.name(), cells));
        sigs.push((m.name(), m.signature().format(a.short)));
    }
    if json {
        let rows: Vec<Object> = systems
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut o = Object::default();
                o.insert("system", s.name.clone());
                for (name, cells) in columns.values() {
                    o.insert(name.clone(), cells[i].clone());
                }
                o
            })
            .collect();
        return Ok(python_json_objects(&rows, 4, true) + "\n");
    }
    let mut headers = vec!["System".to_owned()];
    headers.extend(columns.values().map(|(n, _)| n.clone()));
    let rows: Vec<Vec<String>> = systems
        .iter()
        .enumerate()
        .map(|(i, s)| {
            std::iter::once(s.name.clone())
                .chain(columns.values().map(|(_, c)| c[i].clone()))
                .collect()
        })
        .collect();
    Ok(format!(
        "{}\n{}",
        fancy_grid(&headers, &rows),
        signatures_block(&sigs)
    ))
}

fn paired_tests(
    a: &Args,
    metrics: &[Box<dyn Metric>],
    systems: &[System],
    json: bool,
) -> anyhow::Result<String> {
    let bootstrap = a.paired_bs;
    let n = if bootstrap {
        a.paired_bs_n
    } else {
        a.paired_ar_n
    };
    if n == 0 {
        bail!("the number of resamples/trials must be at least 1");
    }
    let (seed, seed_str) = resolve_seed(a.seed.as_deref())?;
    // results[metric][system]
    let mut results: Vec<(String, Vec<PairedResult>)> = Vec::new();
    let mut sigs = Vec::new();
    for m in metrics {
        let m = m.as_ref();
        let bl: SegmentStats = m.stats(&systems[0].lines)?;
        let bl_score = m.score(&bl.sum());
        let (mean, ci) = if bootstrap {
            let (mean, ci) = significance::bootstrap_ci(m, &bl, n, seed);
            (Some(mean), Some(ci))
        } else {
            (None, None)
        };
        let mut col = vec![PairedResult {
            score: bl_score,
            p_value: None,
            mean,
            ci,
        }];
        for sys in &systems[1..] {
            let st = m.stats(&sys.lines)?;
            col.push(if bootstrap {
                significance::paired_bootstrap(m, &bl, &st, n, seed)
            } else {
                significance::paired_ar(m, &bl, &st, n, seed)
            });
        }
        let sig = if bootstrap {
            m.signature().with_resampling(Some(n), None, &seed_str)
        } else {
            m.signature().with_resampling(None, Some(n), &seed_str)
        };
        sigs.push((m.name(), sig.format(a.short)));
        results.push((m.name(), col));
    }
    if json {
        let rows: Vec<Object> = systems
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut o = Object::default();
                o.insert("system", s.name.clone());
                for (name, col) in &results {
                    let r = &col[i];
                    let mut d = Object::default();
                    d.insert("score", r.score);
                    d.insert("p_value", r.p_value);
                    d.insert("mean", r.mean);
                    d.insert("ci", r.ci);
                    o.insert_object(name.clone(), d);
                }
                o
            })
            .collect();
        return Ok(python_json_objects(&rows, 4, true) + "\n");
    }
    let w = a.width;
    let mut headers = vec!["System".to_owned()];
    let mut is_bootstrap = false;
    let mut cols = Vec::new();
    for (name, col) in &results {
        let cells: Vec<String> = col
            .iter()
            .map(|r| {
                let mut s = format!("{:.w$}", r.score);
                if let (Some(mean), Some(ci)) = (r.mean, r.ci) {
                    is_bootstrap = true;
                    s.push_str(&format!(" ({mean:.w$} ± {ci:.w$})"));
                }
                if let Some(p) = r.p_value {
                    s.push_str(&format!("\n(p = {p:.4})"));
                    if p <= 0.05 {
                        s.push('*');
                    }
                }
                s
            })
            .collect();
        headers.push(if is_bootstrap {
            format!("{name} (μ ± 95% CI)")
        } else {
            name.clone()
        });
        cols.push(cells);
    }
    let rows: Vec<Vec<String>> = systems
        .iter()
        .enumerate()
        .map(|(i, s)| {
            std::iter::once(s.name.clone())
                .chain(cols.iter().map(|c| c[i].clone()))
                .collect()
        })
        .collect();
    Ok(format!(
        "{}\n{}{}",
        fancy_grid(&headers, &rows),
        paired_explanation(bootstrap, n, &systems[0].name),
        signatures_block(&sigs)
    ))
}
