//! The embedded default run: `rdrop train` without a recipe. Generates the toy German→English
//! corpus ([`crate::synthetic`]), trains a tiny model from scratch with R-Drop, then translates
//! the held-out test split and reports BLEU before and after training.

use crate::data;
use crate::error::{Error, Result};
use crate::recipe::Recipe;
use crate::synthetic::{self, Sizes};
use crate::trainer::{self, RunOptions};
use std::path::Path;

/// The recipe compiled into the binary.
pub const DEFAULT_RECIPE: &str = include_str!("../../../recipes/embedded-default.toml");

/// Marks an output directory as made by the embedded run (so a rerun may replace it).
const MARKER: &str = ".rdrop-embedded-default";

/// Corpus sizes of the embedded run.
pub const SIZES: Sizes = Sizes {
    train: 6000,
    valid: 200,
    test: 300,
};

/// Result of the embedded run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Test-split BLEU (0–100) of the seeded, untrained model; NaN when the run was resumed.
    pub bleu_before: f64,
    /// Test-split BLEU (0–100) of the trained model (its `best/` checkpoint, else the last).
    pub bleu_after: f64,
    /// Size of the test split.
    pub test_sentences: usize,
    /// What the training run reported.
    pub summary: trainer::Summary,
    /// A few (source, reference, hypothesis) triples from the test split.
    pub examples: Vec<(String, String, String)>,
}

/// Parses the embedded recipe with overrides.
pub fn recipe(overrides: &[String]) -> Result<Recipe> {
    Recipe::from_str_with(DEFAULT_RECIPE, "<embedded default>", overrides)
}

fn translate_test(s: &trainer::Session, src: &[String]) -> Result<Vec<String>> {
    let ids = src
        .iter()
        .map(|x| s.tokenizer.encode_source(x).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    trainer::translate(s, &ids)
}

/// Runs the whole embedded job. `data_dir` receives the generated corpus (the recipe's paths point there).
pub fn run(r: &Recipe, opts: &RunOptions) -> Result<Report> {
    let data_dir = r
        .data
        .train
        .source
        .as_deref()
        .and_then(Path::parent)
        .ok_or_else(|| Error::Other("embedded recipe: data.train.source has no directory".into()))?
        .to_path_buf();
    if !opts.resume {
        // A rerun starts afresh, but only over a directory this run created (marked), never other data.
        let out = &r.output_dir;
        if out.exists() {
            if !out.join(MARKER).is_file() {
                return Err(Error::Other(format!(
                    "{} exists and was not made by the embedded default run: remove it or pass --set output_dir=...",
                    out.display()
                )));
            }
            // A default run still training there holds its lock: deleting would pull its files away.
            drop(crate::checkpoint::lock_run_dir(out)?);
            std::fs::remove_dir_all(out).map_err(|source| Error::Io {
                path: out.clone(),
                source,
            })?;
        }
        synthetic::write_corpus(&data_dir, 2021, SIZES)?;
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            path: out.clone(),
            source,
        })?;
        std::fs::write(
            out.join(MARKER),
            "made by `rdrop train` (embedded default); safe to delete\n",
        )
        .map_err(|source| Error::Io {
            path: out.join(MARKER),
            source,
        })?;
    }
    let test_src = data::read_lines(&data_dir.join("test.de"))?;
    let test_ref = data::read_lines(&data_dir.join("test.en"))?;

    // BLEU of the untrained model: the same seeded initialisation the run starts from.
    let bleu_before = if opts.resume {
        f64::NAN
    } else {
        let (train_pairs, _) = data::read_split(&r.data.train, &r.data, "train")?;
        let s0 = trainer::build_session(r, &train_pairs, None)?;
        let hyps = translate_test(&s0, &test_src)?;
        trainer::corpus_bleu(&hyps, &test_ref)?
    };
    if !opts.quiet && bleu_before.is_finite() {
        eprintln!(
            "test BLEU before training: {bleu_before:.2} ({} sentences)",
            test_src.len()
        );
    }
    let summary = trainer::train(r, opts)?;
    let s = trainer::build_session(r, &[], Some(&summary.best_dir))?;
    let hyps = translate_test(&s, &test_src)?;
    let bleu_after = trainer::corpus_bleu(&hyps, &test_ref)?;
    let examples = (0..3.min(hyps.len()))
        .map(|i| (test_src[i].clone(), test_ref[i].clone(), hyps[i].clone()))
        .collect();
    Ok(Report {
        bleu_before,
        bleu_after,
        test_sentences: test_src.len(),
        summary,
        examples,
    })
}
