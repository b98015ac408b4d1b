//! `rdrop score`: the log-probability of each target line given its source line under the model
//! (force decoding), like fairseq's `--score-reference`.
//!
//! Output: one line per pair, the total natural-log probability of the target tokens including
//! `</s>`; with `--per-token`, a tab and then the log-probability of every target token.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use rdrop_seq2seq::generate;
use rdrop_seq2seq::tokenizer::MarianTokenizer;
use rdrop_text::{read_lines, LineRules};

use super::progress::{Progress, Shown};

#[derive(clap::Args)]
pub struct Args {
    /// Model: hub id (from the local hub cache), Hugging Face directory or rdrop checkpoint directory.
    #[arg(long, short, help_heading = "Input/output")]
    pub model: String,
    /// Source sentences, one per line.
    #[arg(long, short, help_heading = "Input/output")]
    pub source: PathBuf,
    /// Target sentences, one per line, paired with the source lines.
    #[arg(long, short, help_heading = "Input/output")]
    pub target: PathBuf,
    /// Also print every target token's log-probability (after a tab, space-separated).
    #[arg(long, help_heading = "Input/output")]
    pub per_token: bool,
    /// Write scores to this file [default: standard output]
    #[arg(long, short, help_heading = "Input/output")]
    pub output: Option<PathBuf>,
    /// Source and target lines are space-separated token ids instead of text (`</s>` appended when
    /// missing).
    #[arg(long, help_heading = "Input/output")]
    pub token_ids: bool,
    /// No progress bar.
    #[arg(long, short, help_heading = "Input/output")]
    pub quiet: bool,
    /// Batch size in source + target tokens.
    #[arg(long, default_value_t = 4096, help_heading = "Batching")]
    pub batch_tokens: usize,
    /// At most this many pairs per batch.
    #[arg(long, default_value_t = 128, help_heading = "Batching")]
    pub batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu", help_heading = "Device")]
    pub device: String,
}

fn parse_ids(line: &str, eos: u32, vocab: usize, what: &str) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for w in line.split_whitespace() {
        let id: u32 = w
            .parse()
            .ok()
            .filter(|&i: &u32| (i as usize) < vocab)
            .with_context(|| {
                format!("{what}: `{w}` is not a token id below the vocabulary size {vocab}")
            })?;
        ids.push(id);
    }
    if ids.last() != Some(&eos) {
        ids.push(eos);
    }
    Ok(ids)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch_tokens == 0 || args.batch_size == 0 {
        bail!("--batch-tokens and --batch-size must be at least 1");
    }
    super::translate::pin_thread_count();
    let device = rdrop_seq2seq::device::parse_device(&args.device)?;
    let src_lines = read_lines(&args.source, LineRules::Plain)?;
    let tgt_lines = read_lines(&args.target, LineRules::Plain)?;
    if src_lines.len() != tgt_lines.len() {
        bail!(
            "{} has {} lines but {} has {}: sources and targets must pair up line by line",
            args.source.display(),
            src_lines.len(),
            args.target.display(),
            tgt_lines.len()
        );
    }
    let model_dir = rdrop_seq2seq::checkpoint::resolve(&args.model)
        .with_context(|| format!("cannot find model `{}`", args.model))?;
    let (cfg, model) =
        rdrop_seq2seq::checkpoint::load_frozen(&args.model, candle_core::DType::F32, &device)
            .with_context(|| format!("cannot load model `{}`", args.model))?;
    let max_pos = cfg.max_position_embeddings;
    let tok =
        if args.token_ids {
            None
        } else {
            Some(MarianTokenizer::from_dir(&model_dir).with_context(|| {
                format!("cannot load the tokenizer of `{}`", model_dir.display())
            })?)
        };
    let mut srcs = Vec::with_capacity(src_lines.len());
    let mut tgts = Vec::with_capacity(tgt_lines.len());
    for (i, (s, t)) in src_lines.iter().zip(&tgt_lines).enumerate() {
        let no = i + 1;
        let (s_ids, t_ids) = match &tok {
            Some(tok) => (
                tok.encode_source(s)
                    .with_context(|| format!("source line {no}: cannot tokenise"))?,
                tok.encode_target(t)
                    .with_context(|| format!("target line {no}: cannot tokenise"))?,
            ),
            None => (
                parse_ids(
                    s,
                    cfg.eos_token_id,
                    cfg.vocab_size,
                    &format!("source line {no}"),
                )?,
                parse_ids(
                    t,
                    cfg.eos_token_id,
                    cfg.vocab_size,
                    &format!("target line {no}"),
                )?,
            ),
        };
        for (what, ids) in [("source", &s_ids), ("target", &t_ids)] {
            if ids.len() > max_pos {
                bail!(
                    "{what} line {no} has {} tokens, more than the model's {max_pos} positions; \
                     scores of truncated sentences would be meaningless, so shorten or drop it",
                    ids.len()
                );
            }
        }
        srcs.push(s_ids);
        tgts.push(t_ids);
    }

    let lens: Vec<usize> = srcs
        .iter()
        .zip(&tgts)
        .map(|(s, t)| s.len().max(t.len()) * 2)
        .collect();
    let mut scores: Vec<Vec<f32>> = vec![Vec::new(); srcs.len()];
    let progress = Progress::new(
        Shown::from_env(args.quiet),
        Some(srcs.len() as u64),
        "pairs",
        "pairs/s",
    );
    for batch in generate::batches_by_tokens(&lens, args.batch_tokens, args.batch_size) {
        let bs: Vec<Vec<u32>> = batch.iter().map(|&i| srcs[i].clone()).collect();
        let bt: Vec<Vec<u32>> = batch.iter().map(|&i| tgts[i].clone()).collect();
        let lp = generate::score(&model, &bs, &bt)?;
        progress.add(batch.len(), bt.iter().map(Vec::len).sum());
        for (&i, l) in batch.iter().zip(lp) {
            scores[i] = l;
        }
    }
    progress.finish();

    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => {
            Box::new(BufWriter::new(File::create(p).with_context(|| {
                format!("cannot create output {}", p.display())
            })?))
        }
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    for lp in &scores {
        // Summed in f64 so the total does not depend on batch composition.
        let total: f64 = lp.iter().map(|&x| x as f64).sum();
        if args.per_token {
            let toks: Vec<String> = lp.iter().map(|x| format!("{x:.6}")).collect();
            writeln!(out, "{total:.6}\t{}", toks.join(" "))?;
        } else {
            writeln!(out, "{total:.6}")?;
        }
    }
    out.flush()?;
    Ok(())
}
