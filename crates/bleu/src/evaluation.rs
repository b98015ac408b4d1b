//! What sacreBLEU's command line computes from systems and references: scores per sentence, of one
//! system (with an optional bootstrap interval), of several side by side, or paired tests.
//!
//! [`evaluate`] turns metrics, systems and a [`Mode`] into an [`Evaluation`]; its
//! [`render`](Evaluation::render) prints it as sacreBLEU does, through [`crate::report`].
//!
//! ```
//! use rdrop_bleu::evaluation::{evaluate, Format, Mode, Style, System};
//! use rdrop_bleu::{Bleu, BleuConfig, Metric};
//! let refs = vec![vec!["The cat sat on the mat.".to_string()]];
//! let metrics: Vec<Box<dyn Metric>> = vec![Box::new(Bleu::new(BleuConfig::default(), &refs)?)];
//! let system = System::new("hyp.txt", vec!["The cat sat on the mat.".to_string()]);
//! let result = evaluate(&metrics, &[system], &Mode::Corpus { confidence: None })?;
//! let style = Style { format: Format::Text, width: 1, score_only: true, short: false };
//! assert_eq!(result.render(&style), "100.0\n");
//! # Ok::<(), rdrop_bleu::Error>(())
//! ```

use crate::metric::{Metric, Report, Signature};
use crate::report::{self, Confidence};
use crate::significance::{self, PairedResult};
use crate::Error;

/// One system's hypotheses, the name it is shown under and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct System {
    /// Shown in tables (`Baseline: hyp.txt`, `System 1`, ...).
    pub name: String,
    /// Named in errors: the file, or `<stdin> (field 2)`.
    pub source: String,
    /// One hypothesis per reference line.
    pub lines: Vec<String>,
}

impl System {
    /// A system shown under the name of its source.
    pub fn new(source: impl Into<String>, lines: Vec<String>) -> Self {
        let source = source.into();
        System {
            name: source.clone(),
            source,
            lines,
        }
    }
}

/// Seeded resampling: `--confidence-n`, `--paired-bs-n` or `--paired-ar-n`, and `--seed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resampling {
    /// Bootstrap resamples or randomization trials.
    pub samples: usize,
    /// The seed the draws come from.
    pub seed: u64,
    /// How the signature shows the seed (`12345`, or `none` for a drawn one).
    pub seed_label: String,
}

/// Which paired test compares each system with the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairedMethod {
    /// Paired bootstrap resampling (`--paired-bs`).
    Bootstrap,
    /// Approximate randomization (`--paired-ar`).
    Randomization,
}

/// What to compute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One score per line of a single system, with a single metric (`--sentence-level`).
    Sentences,
    /// Corpus scores: of one system (optionally with a bootstrap interval), or of several in a table.
    Corpus {
        /// `--confidence`: bootstrap mean and 95% interval (one system only).
        confidence: Option<Resampling>,
    },
    /// Every system after the first tested against the first, the baseline.
    Paired {
        /// The test.
        method: PairedMethod,
        /// Its resamples or trials.
        resampling: Resampling,
    },
}

/// One metric's results for every system: a column of sacreBLEU's tables.
#[derive(Clone, Debug, PartialEq)]
pub struct Column<T> {
    /// The metric's display name.
    pub metric: String,
    /// Its signature (with the resampling fields where a test ran).
    pub signature: Signature,
    /// One result per system, in system order.
    pub results: Vec<T>,
}

/// One corpus score with its bootstrap interval, if one was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The printable score.
    pub report: Report,
    /// `--confidence`'s mean and half-width.
    pub confidence: Option<Confidence>,
}

/// Computed scores, ready to render.
#[derive(Clone, Debug, PartialEq)]
pub enum Evaluation {
    /// One report per line.
    Sentences {
        /// The metric's signature.
        signature: Signature,
        /// Per-line scores.
        reports: Vec<Report>,
    },
    /// One system: one column per metric, each with a single result.
    Single(Vec<Column<Scored>>),
    /// Several systems side by side.
    Table {
        /// System names, in row order.
        systems: Vec<String>,
        /// One column per metric.
        columns: Vec<Column<Report>>,
    },
    /// Paired tests against the first system.
    Paired {
        /// System names, the baseline first.
        systems: Vec<String>,
        /// The test that ran.
        method: PairedMethod,
        /// Its resamples or trials.
        samples: usize,
        /// One column per metric.
        columns: Vec<Column<PairedResult>>,
    },
}

/// Output format (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// sacreBLEU's score lines and tables.
    #[default]
    Text,
    /// sacreBLEU's JSON.
    Json,
}

/// How results are printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Style {
    /// Text or JSON.
    pub format: Format,
    /// Decimal places (`--width`).
    pub width: usize,
    /// Only the score (`--score-only`; one system or sentence level).
    pub score_only: bool,
    /// Abbreviated signatures (`--short`).
    pub short: bool,
}

/// Checks that every system has lines and as many as every reference stream (`ref_names` name the
/// streams in errors).
pub fn check_aligned(
    systems: &[System],
    refs: &[Vec<String>],
    ref_names: &[String],
) -> Result<(), Error> {
    for sys in systems {
        if sys.lines.is_empty() {
            return Err(Error::EmptySystem(sys.source.clone()));
        }
        for (r, rname) in refs.iter().zip(ref_names) {
            if r.len() != sys.lines.len() {
                return Err(Error::Misaligned {
                    system: sys.source.clone(),
                    system_lines: sys.lines.len(),
                    reference: rname.clone(),
                    reference_lines: r.len(),
                });
            }
        }
    }
    Ok(())
}

/// How many lines end in a tokenized period (` .`), when there are enough of them (100, as
/// sacreBLEU counts) to suggest that the hypotheses were not detokenized.
pub fn looks_tokenized(lines: &[String]) -> Option<usize> {
    let n = lines.iter().filter(|l| l.ends_with(" .")).count();
    (n >= 100).then_some(n)
}

/// sacreBLEU keys metrics by upper-case name and reports corpus scores in that order.
fn by_key(metrics: &[Box<dyn Metric>]) -> Vec<&dyn Metric> {
    let key = |m: &dyn Metric| if m.name() == "BLEU" { "BLEU" } else { "CHRF" };
    let mut ordered: Vec<&dyn Metric> = metrics.iter().map(|m| m.as_ref()).collect();
    ordered.sort_by_key(|m| key(*m));
    ordered
}

fn invalid(msg: &str) -> Error {
    Error::InvalidOption(msg.to_owned())
}

/// Scores `systems` with `metrics` as `mode` asks; systems must be [aligned](check_aligned).
pub fn evaluate(
    metrics: &[Box<dyn Metric>],
    systems: &[System],
    mode: &Mode,
) -> Result<Evaluation, Error> {
    let first = systems
        .first()
        .ok_or_else(|| invalid("no systems to score"))?;
    match mode {
        Mode::Sentences => {
            let ([m], [_]) = (metrics, systems) else {
                return Err(invalid(
                    "sentence-level scores take one metric and one system",
                ));
            };
            let stats = m.stats(&first.lines)?;
            Ok(Evaluation::Sentences {
                signature: m.signature(),
                reports: (0..stats.len()).map(|i| m.report(stats.row(i))).collect(),
            })
        }
        Mode::Corpus { confidence } if systems.len() == 1 => {
            single(metrics, first, confidence.as_ref()).map(Evaluation::Single)
        }
        Mode::Corpus {
            confidence: Some(_),
        } => Err(invalid(
            "a bootstrap interval is for one system; compare several with a paired test",
        )),
        Mode::Corpus { confidence: None } => table(metrics, systems),
        Mode::Paired { method, resampling } => paired(metrics, systems, *method, resampling),
    }
}

fn single(
    metrics: &[Box<dyn Metric>],
    system: &System,
    confidence: Option<&Resampling>,
) -> Result<Vec<Column<Scored>>, Error> {
    let mut columns = Vec::new();
    for m in by_key(metrics) {
        let stats = m.stats(&system.lines)?;
        let report = m.report(&stats.sum());
        let mut signature = m.signature();
        let mut conf = None;
        if let Some(r) = confidence {
            let (mean, ci) = significance::bootstrap_ci(m, &stats, r.samples, r.seed);
            conf = Some(Confidence { mean, ci });
            signature = signature.with_resampling(Some(r.samples), None, &r.seed_label);
        }
        columns.push(Column {
            metric: m.name(),
            signature,
            results: vec![Scored {
                report,
                confidence: conf,
            }],
        });
    }
    Ok(columns)
}

fn table(metrics: &[Box<dyn Metric>], systems: &[System]) -> Result<Evaluation, Error> {
    let mut columns = Vec::new();
    for m in by_key(metrics) {
        let mut results = Vec::new();
        for sys in systems {
            results.push(m.report(&m.stats(&sys.lines)?.sum()));
        }
        columns.push(Column {
            metric: m.name(),
            signature: m.signature(),
            results,
        });
    }
    Ok(Evaluation::Table {
        systems: systems.iter().map(|s| s.name.clone()).collect(),
        columns,
    })
}

/// The paired tests, metric by metric in the order given: the baseline's score (and, for the
/// bootstrap, its own interval), then each system's test against it.
fn paired(
    metrics: &[Box<dyn Metric>],
    systems: &[System],
    method: PairedMethod,
    r: &Resampling,
) -> Result<Evaluation, Error> {
    let [baseline, others @ ..] = systems else {
        unreachable!("evaluate checks for a first system")
    };
    if others.is_empty() {
        return Err(invalid(
            "paired tests need a baseline and at least one other system",
        ));
    }
    if r.samples == 0 {
        return Err(invalid("the number of resamples/trials must be at least 1"));
    }
    let bootstrap = method == PairedMethod::Bootstrap;
    let mut columns = Vec::new();
    for m in metrics {
        let m = m.as_ref();
        let bl = m.stats(&baseline.lines)?;
        let (mean, ci) = if bootstrap {
            let (mean, ci) = significance::bootstrap_ci(m, &bl, r.samples, r.seed);
            (Some(mean), Some(ci))
        } else {
            (None, None)
        };
        let mut results = vec![PairedResult {
            score: m.score(&bl.sum()),
            p_value: None,
            mean,
            ci,
        }];
        for sys in others {
            let st = m.stats(&sys.lines)?;
            results.push(if bootstrap {
                significance::paired_bootstrap(m, &bl, &st, r.samples, r.seed)
            } else {
                significance::paired_ar(m, &bl, &st, r.samples, r.seed)
            });
        }
        let (bs, ar) = if bootstrap {
            (Some(r.samples), None)
        } else {
            (None, Some(r.samples))
        };
        columns.push(Column {
            metric: m.name(),
            signature: m.signature().with_resampling(bs, ar, &r.seed_label),
            results,
        });
    }
    Ok(Evaluation::Paired {
        systems: systems.iter().map(|s| s.name.clone()).collect(),
        method,
        samples: r.samples,
        columns,
    })
}

impl Evaluation {
    /// The output sacreBLEU prints for these results, final newline included.
    pub fn render(&self, style: &Style) -> String {
        let json = style.format == Format::Json;
        let w = style.width;
        match self {
            Evaluation::Sentences { signature, reports } => {
                // sacreBLEU prints sentence scores as text whatever the format.
                let sig = signature.format(style.short);
                reports
                    .iter()
                    .map(|r| report::format_score(r, w, style.score_only, &sig, false, None) + "\n")
                    .collect()
            }
            Evaluation::Single(columns) => {
                let lines: Vec<String> = columns
                    .iter()
                    .flat_map(|c| c.results.iter().map(move |s| (c, s)))
                    .map(|(c, s)| {
                        let sig = c.signature.format(style.short && !json);
                        report::format_score(
                            &s.report,
                            w,
                            style.score_only,
                            &sig,
                            json,
                            s.confidence,
                        )
                    })
                    .collect();
                report::single_results(&lines, json)
            }
            Evaluation::Table { systems, columns } if json => {
                report::systems_json(systems, columns, w)
            }
            Evaluation::Table { systems, columns } => {
                report::systems_table(systems, columns, w, style.short)
            }
            Evaluation::Paired {
                systems, columns, ..
            } if json => report::paired_json(systems, columns),
            Evaluation::Paired {
                systems,
                method,
                samples,
                columns,
            } => report::paired_table(systems, columns, *method, *samples, w, style.short),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bleu, BleuConfig, Chrf, ChrfConfig};

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    type Metrics = Vec<Box<dyn Metric>>;

    fn fixture() -> (Vec<Vec<String>>, Metrics, Vec<System>) {
        let refs = vec![lines(&["the cat sat on the mat", "a dog barked at night"])];
        // chrF first: corpus results still list BLEU first, paired tests keep this order.
        let metrics: Metrics = vec![
            Box::new(Chrf::new(ChrfConfig::default(), &refs).unwrap()),
            Box::new(Bleu::new(BleuConfig::default(), &refs).unwrap()),
        ];
        let systems = vec![
            System::new("a", lines(&["the cat sat on a mat", "a dog barked"])),
            System::new(
                "b",
                lines(&["the cat sat on the mat", "a dog barked at night"]),
            ),
        ];
        (refs, metrics, systems)
    }

    fn names<T>(columns: &[Column<T>]) -> Vec<&str> {
        columns.iter().map(|c| c.metric.as_str()).collect()
    }

    #[test]
    fn corpus_scores_list_bleu_first_and_paired_tests_keep_the_given_order() {
        let (_, metrics, systems) = fixture();
        let corpus = Mode::Corpus { confidence: None };
        let Evaluation::Single(single) = evaluate(&metrics, &systems[..1], &corpus).unwrap() else {
            panic!("one system gives single results")
        };
        assert_eq!(names(&single), ["BLEU", "chrF2"]);
        let Evaluation::Table {
            columns,
            systems: s,
        } = evaluate(&metrics, &systems, &corpus).unwrap()
        else {
            panic!("several systems give a table")
        };
        assert_eq!(
            (names(&columns), s),
            (vec!["BLEU", "chrF2"], vec!["a".into(), "b".into()])
        );
        assert!((columns[0].results[1].score - 100.0).abs() < 1e-9);
        let mode = Mode::Paired {
            method: PairedMethod::Randomization,
            resampling: Resampling {
                samples: 20,
                seed: 1,
                seed_label: "1".into(),
            },
        };
        let Evaluation::Paired { columns, .. } = evaluate(&metrics, &systems, &mode).unwrap()
        else {
            panic!("paired")
        };
        assert_eq!(names(&columns), ["chrF2", "BLEU"]);
        assert_eq!(
            columns[1].results[0].p_value, None,
            "the baseline is not tested"
        );
        assert!(columns[1].results[1].p_value.is_some());
        assert!(columns[1]
            .signature
            .to_string()
            .starts_with("nrefs:1|ar:20|seed:1|"));
    }

    #[test]
    fn paired_bootstrap_gives_intervals_and_renders_a_table() {
        let (_, metrics, systems) = fixture();
        let mode = Mode::Paired {
            method: PairedMethod::Bootstrap,
            resampling: Resampling {
                samples: 30,
                seed: 5,
                seed_label: "5".into(),
            },
        };
        let e = evaluate(&metrics[1..], &systems, &mode).unwrap();
        let Evaluation::Paired { columns, .. } = &e else {
            panic!("paired")
        };
        assert!(columns[0]
            .results
            .iter()
            .all(|r| r.mean.is_some() && r.ci.is_some()));
        let mut style = Style {
            format: Format::Text,
            width: 1,
            score_only: false,
            short: true,
        };
        let text = e.render(&style);
        assert!(text.contains("BLEU (μ ± 95% CI)"), "{text}");
        assert!(text.contains("Paired bootstrap resampling test with 30 resampling trials"));
        assert!(text.contains("#:1|bs:30|rs:5|"), "{text}");
        style.format = Format::Json;
        let json: serde_json::Value = serde_json::from_str(&e.render(&style)).unwrap();
        assert_eq!(json[1]["system"], "b");
        assert_eq!(json[0]["BLEU"]["p_value"], serde_json::Value::Null);
    }

    #[test]
    fn impossible_requests_are_errors() {
        let (refs, metrics, systems) = fixture();
        let r = Resampling {
            samples: 0,
            seed: 0,
            seed_label: "0".into(),
        };
        let paired = |samples| Mode::Paired {
            method: PairedMethod::Bootstrap,
            resampling: Resampling {
                samples,
                ..r.clone()
            },
        };
        assert!(evaluate(&metrics, &systems, &paired(0)).is_err());
        assert!(evaluate(&metrics, &systems[..1], &paired(10)).is_err());
        assert!(evaluate(&metrics, &systems, &Mode::Sentences).is_err());
        assert!(evaluate(&metrics[..1], &[], &Mode::Sentences).is_err());
        let conf = Mode::Corpus {
            confidence: Some(r.clone()),
        };
        assert!(evaluate(&metrics, &systems, &conf).is_err());

        let names = vec!["ref.txt".to_string()];
        assert!(check_aligned(&systems, &refs, &names).is_ok());
        let short = System::new("short.txt", lines(&["x"]));
        let e = check_aligned(&[short], &refs, &names)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "short.txt has 1 lines but ref.txt has 2: hypotheses and references must be aligned line by line"
        );
        let e = check_aligned(&[System::new("e.txt", vec![])], &refs, &names).unwrap_err();
        assert_eq!(e.to_string(), "e.txt contains no lines: nothing to score");
    }

    #[test]
    fn tokenized_output_is_noticed_from_100_lines() {
        assert_eq!(looks_tokenized(&vec!["a b .".to_string(); 99]), None);
        assert_eq!(looks_tokenized(&vec!["a b .".to_string(); 100]), Some(100));
        assert_eq!(looks_tokenized(&vec!["a b.".to_string(); 200]), None);
    }
}
