//! `rdrop translate`: greedy or beam search from text (or token ids) to text, in batches sorted by
//! length, streaming when reading standard input.
//!
//! Input is read by a separate thread so decoding starts as soon as a line is there: from stdin each
//! chunk holds what has arrived (one line when typing, many when piped); from `--input` chunks are
//! filled up to `CHUNK_LINES` for better batches. Output keeps the input order, one line per input
//! line (`nbest` lines with `--nbest N`).

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use rdrop_seq2seq::generate::{self, DecodeProfile, GenerateConfig, Hypothesis};
use rdrop_seq2seq::tokenizer::MarianTokenizer;
use rdrop_text::LineRules;

use super::progress::{Progress, Shown};

/// Lines decoded together at most (sorting window); bounds memory on huge files.
const CHUNK_LINES: usize = 20_000;

#[derive(clap::Args)]
pub struct Args {
    /// Model: hub id (from the local hub cache), Hugging Face directory or rdrop checkpoint directory.
    #[arg(long, short, help_heading = "Input/output")]
    pub model: String,
    /// Read sentences from this file (one per line); shows a progress bar on a terminal
    /// [default: standard input]
    #[arg(long, short, help_heading = "Input/output")]
    pub input: Option<PathBuf>,
    /// Write translations to this file [default: standard output]
    #[arg(long, short, help_heading = "Input/output")]
    pub output: Option<PathBuf>,
    /// Input and output lines are space-separated token ids instead of text (no tokenizer needed;
    /// `</s>` is appended to sources that lack it, output ids include the final `</s>`).
    #[arg(long, help_heading = "Input/output")]
    pub token_ids: bool,
    /// No progress bar or sentence count.
    #[arg(long, short, help_heading = "Input/output")]
    pub quiet: bool,
    /// Beam size; 1 = greedy search [default: `num_beams` of the model's generation_config.json
    /// (1 if it has none), else 4]
    #[arg(long, help_heading = "Search")]
    pub beam: Option<usize>,
    /// Length penalty: hypotheses are ranked by sum(log p) / length^lenpen [default: the model's
    /// generation_config.json, else 1.0]
    #[arg(long, help_heading = "Search")]
    pub lenpen: Option<f32>,
    /// Write the N best hypotheses per sentence as `index ||| translation ||| score` (index from 0).
    #[arg(long, default_value_t = 1, help_heading = "Search")]
    pub nbest: usize,
    /// Forbid repeating any n-gram of this size (transformers' no_repeat_ngram_size; 0 = off)
    /// [default: the model's generation_config.json, else 0]
    #[arg(long, help_heading = "Search")]
    pub no_repeat_ngram: Option<usize>,
    /// One length limit for every sentence, in new tokens including `</s>` (transformers'
    /// max_new_tokens) [default: max_length - 1 of the model's generation_config.json, else
    /// 2 * source tokens + 10]
    #[arg(long, conflicts_with_all = ["max_len_a", "max_len_b"], help_heading = "Length")]
    pub max_new_tokens: Option<usize>,
    /// Length limit in new tokens = floor(a * source tokens + b), with --max-len-b; replaces the
    /// --max-new-tokens default [default: 0 when only --max-len-b is given]
    #[arg(long, help_heading = "Length")]
    pub max_len_a: Option<f32>,
    /// See --max-len-a [default: 0 when only --max-len-a is given]
    #[arg(long, help_heading = "Length")]
    pub max_len_b: Option<usize>,
    /// Forbid `</s>` before this many tokens (transformers' min_new_tokens) [default: the model's
    /// generation_config.json, else 0]
    #[arg(long, help_heading = "Length")]
    pub min_new_tokens: Option<usize>,
    /// Batch size in source tokens (padded: sentences × longest).
    #[arg(long, default_value_t = 4096, help_heading = "Batching")]
    pub batch_tokens: usize,
    /// At most this many sentences per batch.
    #[arg(long, default_value_t = 128, help_heading = "Batching")]
    pub batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu", help_heading = "Device")]
    pub device: String,
    /// CPU threads: batches are decoded this many at a time, one thread each, as marian-decoder's
    /// --cpu-threads does (decoding's matrices are too small to split well across threads)
    /// [default: one per core]
    #[arg(long, help_heading = "Device")]
    pub threads: Option<usize>,
    /// Time the phases of decoding (loading, encoding, decoder steps, copying logits to the host,
    /// cache row selection, the search on the host), waiting for the device after each, and print
    /// their totals and per-step means to standard error at the end (one JSON line). Slows GPU
    /// decoding a little: for finding where the time goes
    #[arg(long, help_heading = "Device")]
    pub profile_phases: bool,
}

/// One input line: its 1-based number and text.
struct Line {
    no: usize,
    text: String,
}

/// Reads `reader` on a thread of its own, so decoding starts while input is still arriving. A line
/// that is not UTF-8, or a failed read, is the last item that matters: input stops there.
fn spawn_reader(
    reader: Box<dyn Read + Send>,
    name: String,
    bound: usize,
) -> mpsc::Receiver<Result<Line, rdrop_text::Error>> {
    let (tx, rx) = mpsc::sync_channel(bound);
    std::thread::spawn(move || {
        for (i, item) in rdrop_text::Lines::new(reader, name, LineRules::Plain).enumerate() {
            let stop = item.is_err();
            let line = item.map(|text| Line { no: i + 1, text });
            if tx.send(line).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// Turns input lines into source ids and back.
enum Codec {
    Text(Box<MarianTokenizer>),
    Ids { eos: u32, vocab: usize },
}

impl Codec {
    fn encode(&self, line: &str, no: usize) -> anyhow::Result<Vec<u32>> {
        match self {
            Codec::Text(tok) => tok
                .encode_source(line)
                .with_context(|| format!("input line {no}: cannot tokenise")),
            Codec::Ids { eos, vocab } => {
                let mut ids = Vec::new();
                for w in line.split_whitespace() {
                    let id: u32 = w
                        .parse()
                        .ok()
                        .filter(|&i: &u32| (i as usize) < *vocab)
                        .with_context(|| {
                            format!("input line {no}: `{w}` is not a token id below the vocabulary size {vocab}")
                        })?;
                    ids.push(id);
                }
                if ids.last() != Some(eos) {
                    ids.push(*eos);
                }
                Ok(ids)
            }
        }
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        match self {
            Codec::Text(tok) => Ok(tok.decode(ids)?),
            Codec::Ids { .. } => Ok(ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")),
        }
    }
}

/// Decoding settings: command-line flags over the model's generation_config.json over defaults.
fn decoding_config(args: &Args, model_dir: Option<&Path>) -> anyhow::Result<GenerateConfig> {
    let (mut cfg, file_max_new) = match model_dir {
        Some(dir) => GenerateConfig::from_model_dir(dir)?,
        None => (GenerateConfig::default(), None),
    };
    let has_gen_cfg = model_dir.is_some_and(|d| d.join("generation_config.json").is_file());
    if !has_gen_cfg {
        // No generation_config.json (e.g. a model trained here): opus-mt's settings.
        cfg = GenerateConfig {
            forced_eos: cfg.forced_eos,
            ..GenerateConfig::default()
        };
    }
    if let Some(b) = args.beam {
        cfg.beam = b;
    }
    if let Some(l) = args.lenpen {
        cfg.lenpen = l;
    }
    cfg.nbest = args.nbest;
    if let Some(n) = args.min_new_tokens {
        cfg.min_new_tokens = n;
    }
    if let Some(n) = args.no_repeat_ngram {
        cfg.no_repeat_ngram = n;
    }
    if let Some(n) = args.max_new_tokens {
        cfg.max_new_tokens = Some(n);
    } else if args.max_len_a.is_some() || args.max_len_b.is_some() {
        cfg.max_new_tokens = None;
        cfg.max_len_a = args.max_len_a.unwrap_or(0.0);
        cfg.max_len_b = args.max_len_b.unwrap_or(0);
    } else if let Some(n) = file_max_new {
        cfg.max_new_tokens = Some(n);
    } else {
        cfg.max_new_tokens = None;
        cfg.max_len_a = 2.0;
        cfg.max_len_b = 10;
    }
    if cfg.beam == 0 {
        bail!("--beam must be at least 1");
    }
    if cfg.nbest == 0 || cfg.nbest > cfg.beam {
        bail!(
            "--nbest ({}) must be between 1 and the beam size ({})",
            cfg.nbest,
            cfg.beam
        );
    }
    if cfg.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    Ok(cfg)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch_tokens == 0 || args.batch_size == 0 {
        bail!("--batch-tokens and --batch-size must be at least 1");
    }
    if args.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let device = rdrop_seq2seq::device::parse_device(&args.device)?;
    // A GPU runs one batch at a time; on the CPU each worker thread decodes its own batches, so the
    // tensor operations themselves stay on the thread that calls them (unless the environment says
    // otherwise).
    let workers = if device.is_cpu() {
        set_env_default("RAYON_NUM_THREADS", "1");
        set_env_default("CANDLE_NUM_THREADS", "1");
        rdrop_seq2seq::ops::prefer_unpacked_weights();
        args.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    } else {
        pin_thread_count();
        1
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .context("cannot start the decoding threads")?;
    let started = Instant::now();
    let model_dir = rdrop_seq2seq::checkpoint::resolve(&args.model)
        .with_context(|| format!("cannot find model `{}`", args.model))?;
    let cfg = decoding_config(&args, Some(&model_dir))?;
    let (model_cfg, model) =
        rdrop_seq2seq::checkpoint::load_frozen(&args.model, candle_core::DType::F32, &device)
            .with_context(|| format!("cannot load model `{}`", args.model))?;
    if args.profile_phases {
        device.synchronize()?;
    }
    let load_s = started.elapsed().as_secs_f64();
    let profile = args
        .profile_phases
        .then(|| Mutex::new(DecodeProfile::default()));
    let max_pos = model_cfg.max_position_embeddings;
    let codec = if args.token_ids {
        Codec::Ids {
            eos: model_cfg.eos_token_id,
            vocab: model_cfg.vocab_size,
        }
    } else {
        Codec::Text(Box::new(
            MarianTokenizer::from_dir(&model_dir).with_context(|| {
                format!("cannot load the tokenizer of `{}`", model_dir.display())
            })?,
        ))
    };

    let shown = Shown::from_env(args.quiet);
    let (reader, progress): (Box<dyn Read + Send>, Progress) = match &args.input {
        Some(p) => {
            let f = File::open(p).with_context(|| format!("cannot open input {}", p.display()))?;
            // Counted up front (a read of the file, from the page cache afterwards) so the bar can
            // show sentences of a known total; a pipe or FIFO given as --input cannot be read
            // twice and gets the running count instead.
            let total = match shown {
                Shown::Off => None,
                _ if f.metadata().is_ok_and(|m| m.is_file()) => Some(
                    count_lines(p).with_context(|| format!("cannot read input {}", p.display()))?,
                ),
                _ => None,
            };
            (
                Box::new(f),
                Progress::new(shown, total, "sentences", "sent/s"),
            )
        }
        None => {
            // Someone typing sees each translation as it comes, and a redrawn count would land in
            // the middle of their typing.
            let shown = match shown {
                Shown::Bar if io::stdin().is_terminal() => Shown::Off,
                s => s,
            };
            (
                Box::new(io::stdin()),
                Progress::new(shown, None, "sentences", "sent/s"),
            )
        }
    };
    let streaming = args.input.is_none();
    let name = args
        .input
        .as_ref()
        .map_or_else(|| "<stdin>".to_owned(), |p| p.display().to_string());
    let rx = spawn_reader(reader, name, CHUNK_LINES);
    // Translations on the terminal the bar is drawn on are written with the bar lifted, or the
    // two would tear each other's lines.
    let out_is_tty = args.output.is_none() && io::stdout().is_terminal();
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => {
            Box::new(BufWriter::new(File::create(p).with_context(|| {
                format!("cannot create output {}", p.display())
            })?))
        }
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };

    let mut warned_long = false;
    let mut n_sent = 0usize;
    loop {
        // Gather a chunk: block for the first line, then take what is there (stdin) or fill up (file).
        let mut chunk: Vec<Line> = Vec::new();
        // Lines before a bad one or a failed read are still translated and written.
        let mut failure = None;
        match rx.recv() {
            Ok(Ok(l)) => chunk.push(l),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => break,
        }
        while failure.is_none() && chunk.len() < CHUNK_LINES {
            let item = if streaming {
                match rx.try_recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            } else {
                match rx.recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            };
            match item {
                Ok(l) => chunk.push(l),
                Err(e) => failure = Some(e),
            }
        }
        let mut srcs: Vec<Option<Vec<u32>>> = Vec::with_capacity(chunk.len());
        for l in &chunk {
            let text = l.text.as_str();
            if text.trim().is_empty() {
                srcs.push(None);
                continue;
            }
            let mut ids = codec.encode(text, l.no)?;
            if ids.len() > max_pos {
                if !warned_long {
                    progress.suspend(|| {
                        eprintln!(
                            "warning: input line {} has {} source tokens, more than the model's {} \
                             positions; it is truncated to its first {} tokens + </s> (and so is \
                             every later over-long line, without further warnings)",
                            l.no,
                            ids.len(),
                            max_pos,
                            max_pos - 1
                        )
                    });
                    warned_long = true;
                }
                let eos = *ids.last().unwrap_or(&0);
                ids.truncate(max_pos - 1);
                ids.push(eos);
            }
            srcs.push(Some(ids));
        }
        // Empty lines are never decoded; they count as done at once.
        progress.add(srcs.iter().filter(|s| s.is_none()).count(), 0);
        let hyps = translate_chunk(
            &pool,
            &model,
            &srcs,
            &cfg,
            (args.batch_tokens, args.batch_size),
            &progress,
            profile.as_ref(),
        )?;
        let write_chunk = |out: &mut dyn Write, n_sent: &mut usize| -> anyhow::Result<()> {
            for h in &hyps {
                write_hyps(out, &codec, *n_sent, h, args.nbest)?;
                *n_sent += 1;
            }
            if streaming || out_is_tty {
                out.flush()?;
            }
            Ok(())
        };
        if out_is_tty {
            progress.suspend(|| write_chunk(&mut out, &mut n_sent))?;
        } else {
            write_chunk(&mut out, &mut n_sent)?;
        }
        if let Some(e) = failure {
            out.flush()?;
            return Err(e.into());
        }
    }
    out.flush()?;
    progress.finish();
    if let Some(p) = profile {
        let p = p.into_inner().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "{}",
            phases_json(&p, load_s, started.elapsed().as_secs_f64())
        );
    }
    Ok(())
}

/// The `--profile-phases` line: seconds per phase, and milliseconds per decoder step for the
/// phases every step goes through.
fn phases_json(p: &DecodeProfile, load_s: f64, wall_s: f64) -> String {
    let per_step = |s: f64| s * 1e3 / p.steps.max(1) as f64;
    let r = |x: f64| (x * 1e4).round() / 1e4;
    let j = serde_json::json!({
        "load_s": r(load_s),
        "wall_s": r(wall_s),
        "batches": p.batches,
        "steps": p.steps,
        "rows": p.rows,
        "encode_s": r(p.encode_s),
        "step_s": r(p.step_s),
        "download_s": r(p.download_s),
        "select_s": r(p.select_s),
        "search_s": r(p.search_s),
        "step_ms_per_step": r(per_step(p.step_s)),
        "download_ms_per_step": r(per_step(p.download_s)),
        "select_ms_per_step": r(per_step(p.select_s)),
        "search_ms_per_step": r(per_step(p.search_s)),
    });
    format!("phases: {j}")
}

/// Lines in a file as the reader will see them: newlines, plus a last line without one.
fn count_lines(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
}

/// Translates the non-empty sources of a chunk in length-sorted batches, as many at a time as `pool`
/// has threads; returns hypotheses in input order (empty for empty lines).
fn translate_chunk(
    pool: &rayon::ThreadPool,
    model: &rdrop_seq2seq::InferenceModel,
    srcs: &[Option<Vec<u32>>],
    cfg: &GenerateConfig,
    (batch_tokens, batch_size): (usize, usize),
    progress: &Progress,
    profile: Option<&Mutex<DecodeProfile>>,
) -> anyhow::Result<Vec<Vec<Hypothesis>>> {
    use rayon::prelude::*;
    let idx: Vec<usize> = (0..srcs.len()).filter(|&i| srcs[i].is_some()).collect();
    let lens: Vec<usize> = idx
        .iter()
        .map(|&i| srcs[i].as_ref().map_or(0, |s| s.len()))
        .collect();
    let batches = generate::batches_by_tokens(&lens, batch_tokens, batch_size);
    let results: Vec<_> = pool.install(|| {
        batches
            .par_iter()
            .with_max_len(1)
            .map(|batch| {
                let batch_srcs: Vec<Vec<u32>> = batch
                    .iter()
                    .map(|&j| srcs[idx[j]].clone().unwrap_or_default())
                    .collect();
                let hyps = match profile {
                    None => generate::generate(model, &batch_srcs, cfg)?,
                    Some(total) => {
                        let mut p = DecodeProfile::default();
                        let hyps = generate::generate_profiled(model, &batch_srcs, cfg, &mut p)?;
                        total.lock().unwrap_or_else(|e| e.into_inner()).merge(&p);
                        hyps
                    }
                };
                // Counted here, on the worker that decoded it: the main thread only hears of a
                // chunk's batches when the last of them is done.
                let tokens = hyps
                    .iter()
                    .filter_map(|h| h.first())
                    .map(|h| h.tokens.len());
                progress.add(batch.len(), tokens.sum());
                Ok::<_, generate::GenerateError>(hyps)
            })
            .collect()
    });
    let mut out: Vec<Vec<Hypothesis>> = vec![Vec::new(); srcs.len()];
    for (batch, hyps) in batches.iter().zip(results) {
        for (&j, h) in batch.iter().zip(hyps?) {
            out[idx[j]] = h;
        }
    }
    Ok(out)
}

fn write_hyps(
    out: &mut dyn Write,
    codec: &Codec,
    index: usize,
    hyps: &[Hypothesis],
    nbest: usize,
) -> anyhow::Result<()> {
    if nbest == 1 {
        let text = match hyps.first() {
            Some(h) => codec.decode(&h.tokens)?,
            None => String::new(),
        };
        writeln!(out, "{text}")?;
        return Ok(());
    }
    if hyps.is_empty() {
        writeln!(out, "{index} |||  ||| 0")?;
    }
    for h in hyps {
        writeln!(
            out,
            "{index} ||| {} ||| {}",
            codec.decode(&h.tokens)?,
            h.score
        )?;
    }
    Ok(())
}

/// Sets an environment variable unless the user already has; only before any other thread exists.
fn set_env_default(key: &str, value: &str) {
    if std::env::var_os(key).is_none() {
        std::env::set_var(key, value);
    }
}

/// candle asks for its thread count on every CPU op and, when `RAYON_NUM_THREADS` is unset, finds it by
/// reading `/proc` (a few percent of decoding time on small models). Setting the variable once, before
/// any other thread exists, answers it from the environment.
pub(crate) fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
