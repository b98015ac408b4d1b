//! The training loop: model and tokenizer set-up, updates with gradient accumulation, NaN policy,
//! logging (progress bar + metrics JSONL), validation (loss + BLEU), checkpoints and resume.

use crate::checkpoint::{self, TrainerState};
use crate::data::{self, DataStats, Example, RawPair};
use crate::error::{ext, Error, Result};
use crate::init::init_marian;
use crate::optim::{self, AdamW, Grads};
use crate::recipe::{CriterionKind, DecodeKind, Precision, Recipe, TokenizerKind, ValidMetric};
use crate::runlog::RunLog;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rdrop_loss::{Criterion, CriterionConfig};
use rdrop_seq2seq::config::Config;
use rdrop_seq2seq::dropout::{DropoutRng, Mode};
use rdrop_seq2seq::model::MarianModel;
use rdrop_seq2seq::tokenizer::MarianTokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How [`train`] runs besides the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the latest checkpoint in the output directory.
    pub resume: bool,
    /// Draw a progress bar (otherwise log lines go to stderr).
    pub progress: bool,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Fault injection for tests: update attempts (1-based, skipped ones included) whose loss is
    /// treated as non-finite.
    pub fault_nan_updates: Vec<u64>,
    /// Resume from this checkpoint directory instead of the newest intact one (implies `resume`).
    pub resume_from: Option<PathBuf>,
    /// Set (to the signal's number) when the run should stop: the loop finishes the current
    /// update, saves a checkpoint and returns [`Error::Interrupted`]. Signal handling itself is
    /// the caller's (the binary's) business.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

/// Saves the run into `dest`, with the dropout stream's position and the wall time so far.
fn save_state(
    s: &Session,
    opt: &AdamW,
    state: &mut TrainerState,
    dropout: &DropoutRng,
    wall: f64,
    dest: &Path,
) -> Result<()> {
    state.wall_seconds = wall;
    state.dropout_rng = Some(dropout.state());
    save_checkpoint(s, opt, state, dest)
}

/// The periodic checkpoint after the current update (older ones pruned); returns its directory.
fn save_periodic(
    s: &Session,
    opt: &AdamW,
    state: &mut TrainerState,
    dropout: &DropoutRng,
    wall: f64,
) -> Result<PathBuf> {
    let ck_dir = s.recipe.output_dir.join("checkpoints");
    let dest = ck_dir.join(checkpoint::update_dir_name(state.update));
    save_state(s, opt, state, dropout, wall, &dest)?;
    checkpoint::prune(&ck_dir, s.recipe.checkpoint.keep_last)?;
    Ok(dest)
}

/// `H:MM:SS` for a duration in seconds.
fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The name of a stop signal for messages.
fn signal_name(n: usize) -> String {
    match n {
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub updates: u64,
    pub epochs: u64,
    /// Validation BLEU of the best checkpoint (if BLEU was computed).
    pub best_bleu: Option<f64>,
    /// The metric that chose `best/`, its value there and the update.
    pub best_by: ValidMetric,
    pub best_value: Option<f64>,
    pub best_update: Option<u64>,
    /// `<output_dir>/best` if a validation chose one, else the last checkpoint.
    pub best_dir: PathBuf,
    pub last_dir: PathBuf,
    pub train_stats: DataStats,
    pub valid_stats: DataStats,
    pub nan_skipped: u64,
    pub stopped_early: bool,
    pub last_valid: Option<Validation>,
}

/// One validation result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Validation {
    /// Label-smoothed CE per target token (one eval-mode pass).
    pub loss: f64,
    /// Plain NLL per target token.
    pub nll: f64,
    pub bleu: Option<f64>,
    pub chrf: Option<f64>,
    /// Mean per-token symmetric KL between two train-mode passes (`validation.consistency`).
    pub consistency_kl: Option<f64>,
    pub sentences: usize,
}

/// The pieces of a live run.
pub struct Session {
    pub recipe: Recipe,
    pub device: Device,
    pub cfg: Config,
    pub varmap: VarMap,
    pub model: MarianModel,
    pub tokenizer: MarianTokenizer,
    /// Things the user should hear about that do not stop the run (e.g. a smaller vocabulary).
    pub warnings: Vec<String>,
}

/// `cpu` / `cuda[:N]` → a candle device, through the one parser translate and score use too, so a
/// CPU-only build or a machine without a driver gets the same advice everywhere.
pub fn make_device(spec: &str) -> Result<Device> {
    rdrop_seq2seq::device::parse_device(spec)
        .map_err(|e| Error::Other(format!("device = {spec:?}: {e}")))
}

/// HF `MarianConfig` JSON for a from-scratch model (the model crate fills the keys we omit with
/// transformers' defaults).
pub fn scratch_config(r: &Recipe, tok: &MarianTokenizer) -> Result<Config> {
    let a = &r.model.arch;
    let v = tok.vocab_size();
    let json = serde_json::json!({
        "model_type": "marian",
        "architectures": ["MarianMTModel"],
        "vocab_size": v,
        "decoder_vocab_size": v,
        "d_model": a.d_model,
        "encoder_layers": a.encoder_layers,
        "decoder_layers": a.decoder_layers,
        "encoder_attention_heads": a.heads,
        "decoder_attention_heads": a.heads,
        "encoder_ffn_dim": a.ffn_dim,
        "decoder_ffn_dim": a.ffn_dim,
        "activation_function": if a.activation == "swish" { "swish" } else { a.activation.as_str() },
        "dropout": r.model.dropout,
        "attention_dropout": r.model.attention_dropout,
        "activation_dropout": r.model.activation_dropout,
        "max_position_embeddings": a.max_positions,
        "init_std": a.init_std,
        "scale_embedding": a.scale_embedding,
        "share_encoder_decoder_embeddings": a.share_embeddings,
        "tie_word_embeddings": a.share_embeddings,
        "pad_token_id": tok.pad_id(),
        "eos_token_id": tok.eos_id(),
        "decoder_start_token_id": tok.pad_id(),
        "forced_eos_token_id": tok.eos_id(),
        "bos_token_id": 0,
        "max_length": a.max_positions,
        "num_beams": r.validation.beam_size,
        "is_encoder_decoder": true,
        "static_position_embeddings": true,
    });
    Config::from_json_str(&json.to_string(), Path::new("<recipe model.arch>")).map_err(ext)
}

/// The model directory's config with the recipe's dropout rates (a recipe decides regularisation).
fn config_with_dropout(dir: &Path, r: &Recipe) -> Result<Config> {
    let mut cfg = rdrop_seq2seq::checkpoint::load_config(dir).map_err(ext)?;
    cfg.dropout = r.model.dropout;
    cfg.attention_dropout = r.model.attention_dropout;
    cfg.activation_dropout = r.model.activation_dropout;
    Ok(cfg)
}

fn load_weights(dir: &Path, cfg: &Config, device: &Device) -> Result<VarMap> {
    let weights = rdrop_seq2seq::checkpoint::weights_in(dir).map_err(ext)?;
    rdrop_seq2seq::checkpoint::load_varmap(&weights, cfg, DType::F32, device).map_err(ext)
}

/// Text files a tokenizer is trained on: the training split as plain text (source then target).
fn tokenizer_training_files(r: &Recipe, pairs: &[RawPair]) -> Result<Vec<PathBuf>> {
    let dir = r.output_dir.join("tokenizer-data");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let mut files = Vec::new();
    for (name, side) in [("train.src", 0), ("train.tgt", 1)] {
        let p = dir.join(name);
        let mut text = String::new();
        for pair in pairs {
            text.push_str(if side == 0 {
                &pair.source
            } else {
                &pair.target
            });
            text.push('\n');
        }
        std::fs::write(&p, text).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        files.push(p);
    }
    Ok(files)
}

/// Builds (or restores) tokenizer, config and weights. `from` = a checkpoint to resume.
pub fn build_session(r: &Recipe, train_pairs: &[RawPair], from: Option<&Path>) -> Result<Session> {
    let device = make_device(&r.device)?;
    let dtype = DType::F32;
    let mut warnings = Vec::new();
    let (tokenizer, cfg, varmap) = if let Some(dir) = from {
        let tok = MarianTokenizer::from_dir(dir).map_err(ext)?;
        let cfg = config_with_dropout(dir, r)?;
        let vm = load_weights(dir, &cfg, &device)?;
        (tok, cfg, vm)
    } else if !r.model.pretrained.is_empty() {
        let dir = rdrop_seq2seq::checkpoint::resolve(&r.model.pretrained).map_err(ext)?;
        let tok = match r.tokenizer_kind() {
            TokenizerKind::Model | TokenizerKind::Auto => MarianTokenizer::from_dir(&dir).map_err(ext)?,
            k => {
                return Err(Error::Other(format!(
                    "tokenizer.kind = {k:?} with a pretrained model: its embeddings belong to its own tokenizer; use \"model\""
                )))
            }
        };
        let cfg = config_with_dropout(&dir, r)?;
        let vm = load_weights(&dir, &cfg, &device)?;
        (tok, cfg, vm)
    } else {
        let kind = match r.tokenizer_kind() {
            TokenizerKind::Unigram => rdrop_seq2seq::tokenizer::TokenizerKind::Unigram,
            _ => rdrop_seq2seq::tokenizer::TokenizerKind::Bpe,
        };
        let files = tokenizer_training_files(r, train_pairs)?;
        let tok = rdrop_seq2seq::tokenizer::train_joint(&files, kind, r.tokenizer.vocab_size)
            .map_err(ext)?;
        if tok.vocab_size() < r.tokenizer.vocab_size {
            warnings.push(format!(
                "warning: tokenizer.vocab_size = {} but the training text yields only {} pieces: the model uses {}",
                r.tokenizer.vocab_size,
                tok.vocab_size(),
                tok.vocab_size()
            ));
        }
        let cfg = scratch_config(r, &tok)?;
        (tok, cfg, VarMap::new())
    };
    let vb = VarBuilder::from_varmap(&varmap, dtype, &device);
    let model = MarianModel::new(&cfg, vb).map_err(ext)?;
    if from.is_none() && r.model.pretrained.is_empty() {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| Error::Other("variable map poisoned".into()))?;
        init_marian(&vars, r.model.arch.init_std, tokenizer.pad_id(), r.seed)?;
    }
    Ok(Session {
        recipe: r.clone(),
        device,
        cfg,
        varmap,
        model,
        tokenizer,
        warnings,
    })
}

/// Tokenises a split with the session's tokenizer and the recipe's filters.
pub fn prepare_examples(
    s: &Session,
    pairs: &[RawPair],
    stats: &mut DataStats,
    max_len: usize,
    max_ratio: f64,
    limit: usize,
) -> Result<Vec<Example>> {
    data::tokenize_and_filter(pairs, stats, max_len, max_ratio, limit, |a, b| {
        Ok((
            s.tokenizer.encode_source(a).map_err(ext)?,
            s.tokenizer.encode_target(b).map_err(ext)?,
        ))
    })
}

/// Translates token-id sources with the model crate's search (beam 1 = greedy), batched by
/// length; returns detokenised text in input order. Length limit: 1.5 × source + `extra` tokens.
pub fn translate_ids(
    s: &Session,
    sources: &[Vec<u32>],
    beam: usize,
    batch_size: usize,
    extra: usize,
) -> Result<Vec<String>> {
    use rdrop_seq2seq::generate::{generate, GenerateConfig};
    let cfg = GenerateConfig {
        beam: beam.max(1),
        max_len_a: 1.5,
        max_len_b: extra,
        ..GenerateConfig::default()
    };
    let model = frozen_model(s)?;
    let mut out = vec![String::new(); sources.len()];
    // Sorting by length keeps padding (and wasted decoding) low; results return to their slots.
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let srcs: Vec<Vec<u32>> = chunk.iter().map(|&i| sources[i].clone()).collect();
        let hyps = generate(&model, &srcs, &cfg).map_err(ext)?;
        for (&i, h) in chunk.iter().zip(hyps) {
            let tokens = h.into_iter().next().map(|h| h.tokens).unwrap_or_default();
            out[i] = s.tokenizer.decode(&tokens).map_err(ext)?;
        }
    }
    Ok(out)
}

/// Translates with the recipe's validation decoder (greedy or beam).
pub fn translate(s: &Session, sources: &[Vec<u32>]) -> Result<Vec<String>> {
    let v = &s.recipe.validation;
    let beam = match v.decode {
        DecodeKind::Greedy => 1,
        DecodeKind::Beam => v.beam_size,
    };
    translate_ids(s, sources, beam, v.batch_size, v.max_decode_len)
}

/// Corpus BLEU (sacreBLEU defaults: 13a, exp smoothing) of hypotheses against one reference set.
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> Result<f64> {
    let bleu =
        rdrop_bleu::Bleu::new(rdrop_bleu::BleuConfig::default(), &[refs.to_vec()]).map_err(ext)?;
    Ok(bleu.corpus_score(hyps).map_err(ext)?.score)
}

/// Builds the criterion the recipe asks for.
pub fn make_criterion(r: &Recipe, pad: u32) -> Result<Box<dyn Criterion>> {
    let c = &r.criterion;
    let cfg = match c.kind {
        CriterionKind::LabelSmoothedCe => CriterionConfig::LabelSmoothedCe {
            eps: c.label_smoothing,
        },
        CriterionKind::Rdrop => CriterionConfig::RDrop {
            eps: c.label_smoothing,
            alpha: c.alpha,
        },
    };
    cfg.build(pad).map_err(ext)
}

/// One forward pass + loss on a batch. With a doubling criterion the inputs are stacked `[x; x]`.
pub fn batch_loss(
    s: &Session,
    criterion: &dyn Criterion,
    b: &data::Batch,
    mode: Mode,
) -> Result<rdrop_loss::LossParts> {
    model_loss(&s.model, criterion, b, mode)
}

/// [`batch_loss`] with an explicit model (the autocast copy in bf16 training).
pub fn model_loss(
    model: &MarianModel,
    criterion: &dyn Criterion,
    b: &data::Batch,
    mode: Mode,
) -> Result<rdrop_loss::LossParts> {
    let logits = if criterion.needs_doubled_batch() {
        let d = rdrop_loss::duplicate_all(&[&b.src_ids, &b.src_mask, &b.tgt_in]).map_err(ext)?;
        model.forward(&d[0], &d[1], &d[2], mode).map_err(ext)?
    } else {
        model
            .forward(&b.src_ids, &b.src_mask, &b.tgt_in, mode)
            .map_err(ext)?
    };
    criterion.loss(&logits, &b.labels).map_err(ext)
}

/// The model computing in `dtype` on casts of the session's f32 variables. The casts are graph
/// ops, so gradients arrive at the f32 variables (in f32) and the optimiser never sees `dtype`.
/// Rebuilt every update, after the optimiser has changed the variables.
pub fn autocast_model(s: &Session, dtype: DType) -> Result<MarianModel> {
    model_from_vars(s, dtype, |t| Ok(t.to_dtype(dtype)?))
}

/// A model built on `f` of each of the session's variables, computing in `dtype`.
fn model_from_vars(
    s: &Session,
    dtype: DType,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<MarianModel> {
    let vars = s
        .varmap
        .data()
        .lock()
        .map_err(|_| Error::Other("variable map lock poisoned".into()))?
        .clone();
    let mut tensors = std::collections::HashMap::with_capacity(vars.len());
    for (name, var) in vars {
        tensors.insert(name, f(var.as_tensor())?);
    }
    let vb = VarBuilder::from_tensors(tensors, dtype, &s.device);
    MarianModel::new(&s.cfg, vb).map_err(ext)
}

/// The model on the variables' current values, detached: nothing tracks them, so on the CPU the
/// model keeps its weights in the layouts decoding runs fastest with (transposed, in panels).
/// Built for each round of decoding during training; the copies are freed after it.
pub fn frozen_model(s: &Session) -> Result<MarianModel> {
    model_from_vars(s, s.model.dtype(), |t| Ok(t.detach()))
}

/// Validation loss (eval mode, one pass, label-smoothed CE) and optionally BLEU.
pub fn validate(
    s: &Session,
    valid: &[Example],
    refs: &[String],
    metrics: &[ValidMetric],
) -> Result<Validation> {
    let pad = s.tokenizer.pad_id();
    // One pass of the run's label smoothing, whatever the training criterion.
    let ce = CriterionConfig::LabelSmoothedCe {
        eps: s.recipe.criterion.label_smoothing,
    }
    .build(pad)
    .map_err(ext)?;
    let (mut loss, mut nll, mut n) = (0f64, 0f64, 0usize);
    let idx: Vec<usize> = (0..valid.len()).collect();
    for chunk in idx.chunks(s.recipe.validation.batch_size) {
        let b = data::make_batch(valid, chunk, pad, s.cfg.decoder_start_token_id, &s.device)?;
        let parts = batch_loss(s, ce.as_ref(), &b, Mode::Eval)?;
        loss += parts.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        nll += parts.nll_sum[0].to_dtype(DType::F64)?.to_scalar::<f64>()?;
        n += parts.ntokens;
    }
    let (mut bleu, mut chrf) = (None, None);
    if metrics.iter().any(|m| m.needs_decoding()) && !valid.is_empty() {
        let sources: Vec<Vec<u32>> = valid.iter().map(|e| e.source.clone()).collect();
        let hyps = translate(s, &sources)?;
        if metrics.contains(&ValidMetric::Bleu) {
            bleu = Some(corpus_bleu(&hyps, refs)?);
        }
        if metrics.contains(&ValidMetric::Chrf) {
            let c = rdrop_bleu::Chrf::new(rdrop_bleu::ChrfConfig::default(), &[refs.to_vec()])
                .map_err(ext)?;
            chrf = Some(c.corpus_score(&hyps).map_err(ext)?);
        }
    }
    let n1 = n.max(1) as f64;
    Ok(Validation {
        loss: loss / n1,
        nll: nll / n1,
        bleu,
        chrf,
        consistency_kl: None,
        sentences: valid.len(),
    })
}

impl Validation {
    /// The value of one metric, if it was computed.
    pub fn metric(&self, m: ValidMetric) -> Option<f64> {
        match m {
            ValidMetric::Bleu => self.bleu,
            ValidMetric::Chrf => self.chrf,
            ValidMetric::Loss => Some(self.loss),
            ValidMetric::Nll => Some(self.nll),
        }
    }
}

/// Dropout consistency on `valid`: every batch stacked on itself and run once in train mode, as
/// R-Drop trains, giving the mean over target tokens of (KL(P1‖P2) + KL(P2‖P1)) / 2 — the term
/// R-Drop's α weighs. Masks come from their own generator seeded with `seed`, so measuring leaves
/// the training run's dropout stream (and a resume's bit-identity) untouched.
pub fn dropout_consistency(s: &Session, valid: &[Example], seed: u64) -> Result<f64> {
    let pad = s.tokenizer.pad_id();
    let kl = CriterionConfig::RDrop {
        eps: s.recipe.criterion.label_smoothing,
        alpha: 1.0,
    }
    .build(pad)
    .map_err(ext)?;
    let model = frozen_model(s)?;
    let rng = DropoutRng::new(seed);
    let (mut sum, mut n) = (0f64, 0usize);
    let idx: Vec<usize> = (0..valid.len()).collect();
    for chunk in idx.chunks(s.recipe.validation.batch_size) {
        let b = data::make_batch(valid, chunk, pad, s.cfg.decoder_start_token_id, &s.device)?;
        rng.seed_device(&s.device).map_err(ext)?;
        let parts = model_loss(&model, kl.as_ref(), &b, Mode::Train(&rng))?;
        if let Some(k) = &parts.kl_sum {
            sum += k.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        n += parts.ntokens;
    }
    Ok(sum / n.max(1) as f64)
}

/// Saves a full checkpoint atomically.
pub fn save_checkpoint(s: &Session, opt: &AdamW, state: &TrainerState, dest: &Path) -> Result<()> {
    checkpoint::write_atomic(dest, |tmp, save_no| {
        rdrop_seq2seq::checkpoint::save(tmp, &s.cfg, &s.varmap).map_err(ext)?;
        checkpoint::fault_point(save_no);
        s.tokenizer.save(tmp).map_err(ext)?;
        opt.save(&tmp.join(checkpoint::OPTIMIZER_FILE))?;
        checkpoint::write_file(tmp, checkpoint::RECIPE_FILE, s.recipe.to_toml().as_bytes())?;
        let st = serde_json::to_string_pretty(state).map_err(|e| Error::Other(e.to_string()))?;
        checkpoint::write_file(tmp, checkpoint::STATE_FILE, st.as_bytes())
    })
}

/// Leaves out training pairs that alone exceed `batching.max_tokens` (a batch could not hold them
/// without breaking the budget), counted in `stats`, or refuses them with `batching.oversize = "error"`.
fn drop_oversize(
    s: &Session,
    pairs: &[RawPair],
    examples: &mut Vec<Example>,
    stats: &mut DataStats,
) -> Result<()> {
    let cap = s.recipe.batching.max_tokens;
    let fits = |e: &Example| e.source.len().max(e.target.len()) <= cap;
    let before = examples.len();
    examples.retain(fits);
    let dropped = before - examples.len();
    if dropped == 0 {
        return Ok(());
    }
    if s.recipe.batching.oversize == crate::recipe::Oversize::Error {
        let split = &s.recipe.data.train;
        let file = split
            .source
            .as_ref()
            .or(split.file.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "data.train".into());
        // Only in this error path: find the first offending line to name it.
        for p in pairs {
            let src = s.tokenizer.encode_source(&p.source).map_err(ext)?;
            let tgt = s.tokenizer.encode_target(&p.target).map_err(ext)?;
            let n = src.len().max(tgt.len());
            if n > cap && n <= s.recipe.data.max_len {
                return Err(Error::BadLine {
                    path: file.into(),
                    line: p.line,
                    message: format!(
                        "a pair of {n} tokens exceeds batching.max_tokens = {cap}, and {dropped} pairs do in all (batching.oversize = \"error\"; \"skip\" leaves them out, or raise max_tokens)"
                    ),
                });
            }
        }
    }
    stats.over_max_tokens = dropped;
    stats.kept = examples.len();
    Ok(())
}

/// Loads and filters both splits. Reports the counts (never silent).
fn load_data(r: &Recipe) -> Result<(Vec<RawPair>, DataStats, Vec<RawPair>, DataStats)> {
    let (train, ts) = data::read_split(&r.data.train, &r.data, "train")?;
    let (valid, vs) = data::read_split(&r.data.valid, &r.data, "valid")?;
    Ok((train, ts, valid, vs))
}

/// Runs (or resumes) the training job a recipe describes.
pub fn train(r: &Recipe, opts: &RunOptions) -> Result<Summary> {
    if r.training.threads > 0 {
        // candle's CPU kernels read this when they first build their thread pool.
        std::env::set_var("RAYON_NUM_THREADS", r.training.threads.to_string());
    }
    let out = &r.output_dir;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    let _lock = checkpoint::lock_run_dir(out)?;
    // Holding the lock, nothing else writes here: temporaries are a killed run's (e.g. the old
    // best/ swapped out by a save that was killed before deleting it).
    checkpoint::remove_temporaries(out)?;
    // Errors reach train.log through the caller's message only; everything printed goes there too.
    let runlog = std::cell::RefCell::new(RunLog::open(out)?);
    let say = |msg: &str| {
        runlog.borrow_mut().line(msg);
        if !opts.quiet {
            eprintln!("{msg}");
        }
    };
    let ck_dir = out.join("checkpoints");
    let existing = checkpoint::list_checkpoints(&ck_dir)?;
    let resume_from = if opts.resume || opts.resume_from.is_some() {
        let (dir, warnings) = crate::resume::pick(&ck_dir, opts.resume_from.as_deref())?;
        for w in warnings {
            say(&w);
        }
        crate::resume::check_recipe(&dir, r)?;
        Some(dir)
    } else if !existing.is_empty() {
        return Err(Error::Other(format!(
            "{} already holds checkpoints: pass --resume to continue that run, or choose another output_dir",
            ck_dir.display()
        )));
    } else {
        None
    };

    let (train_pairs, mut tstats, valid_pairs, mut vstats) = load_data(r)?;
    let s = build_session(r, &train_pairs, resume_from.as_deref())?;
    for w in &s.warnings {
        say(w);
    }
    let max_len = r.data.max_len.min(s.cfg.max_position_embeddings);
    let mut train_ex = prepare_examples(
        &s,
        &train_pairs,
        &mut tstats,
        max_len,
        r.data.max_len_ratio,
        r.data.max_sentences,
    )?;
    drop_oversize(&s, &train_pairs, &mut train_ex, &mut tstats)?;
    // Validation keeps every pair the model can take (no ratio filter); the limit is the recipe's.
    let mut valid_ex = Vec::new();
    let mut valid_refs = Vec::new();
    {
        let lim = r.validation.max_sentences;
        let mut kept_pairs = Vec::new();
        for p in &valid_pairs {
            if lim > 0 && kept_pairs.len() >= lim {
                vstats.beyond_limit += 1;
                continue;
            }
            let src = s.tokenizer.encode_source(&p.source).map_err(ext)?;
            let tgt = s.tokenizer.encode_target(&p.target).map_err(ext)?;
            if src.len() > s.cfg.max_position_embeddings
                || tgt.len() > s.cfg.max_position_embeddings
            {
                vstats.too_long += 1;
                continue;
            }
            valid_ex.push(Example {
                source: src,
                target: tgt,
            });
            kept_pairs.push(p);
        }
        vstats.kept = valid_ex.len();
        valid_refs.extend(kept_pairs.iter().map(|p| p.target.clone()));
    }
    say(&format!("train: {tstats}"));
    say(&format!("valid: {vstats}"));
    if train_ex.is_empty() {
        return Err(Error::NoData {
            what: "data.train".into(),
            stats: tstats.to_string(),
        });
    }

    let criterion = make_criterion(r, s.tokenizer.pad_id())?;
    let mut vars = s
        .varmap
        .data()
        .lock()
        .map_err(|_| Error::Other("variable map poisoned".into()))?
        .clone();
    // transformers keeps final_logits_bias as a frozen buffer (all zeros in Marian): so do we.
    vars.retain(|k, _| k != "final_logits_bias");
    let mut opt = AdamW::new(&vars, &r.optimizer)?;
    let n_params: usize = vars.values().map(|v| v.as_tensor().elem_count()).sum();
    drop(vars);
    let mut state = TrainerState {
        shuffle_seed: r.seed,
        ..Default::default()
    };
    let mut dropout = DropoutRng::new(r.seed.wrapping_add(0x0d0d));
    let fingerprint = crate::resume::data_fingerprint(&train_ex);
    if let Some(dir) = &resume_from {
        state = checkpoint::read_state(dir)?;
        if let Some(then) = state
            .data_fingerprint
            .as_ref()
            .filter(|&t| *t != fingerprint)
        {
            return Err(Error::Checkpoint {
                path: dir.clone(),
                message: format!(
                    "--resume: the training data changed since this checkpoint (then {then}, now {fingerprint}): restore it or train into a new output_dir"
                ),
            });
        }
        opt.load(&dir.join(checkpoint::OPTIMIZER_FILE))?;
        dropout =
            DropoutRng::from_state(state.dropout_rng.clone().ok_or_else(|| Error::Checkpoint {
                path: dir.join(checkpoint::STATE_FILE),
                message: "dropout_rng is missing: the dropout stream cannot resume".into(),
            })?);
        say(&format!(
            "resuming from {} (update {}, epoch {})",
            dir.display(),
            state.update,
            state.epoch + 1
        ));
    }
    state.data_fingerprint = Some(fingerprint);
    let best_by = r.validation.best_metric();
    // Checkpoints from before best_by kept only the best BLEU.
    if state.best_value.is_none() && best_by == ValidMetric::Bleu {
        state.best_value = state.best_bleu;
    }
    let criterion_desc = match r.criterion.kind {
        CriterionKind::Rdrop => format!(
            "R-Drop (alpha {}, label smoothing {})",
            r.criterion.alpha, r.criterion.label_smoothing
        ),
        CriterionKind::LabelSmoothedCe => format!(
            "label-smoothed CE (label smoothing {})",
            r.criterion.label_smoothing
        ),
    };
    say(&format!(
        "model: {} parameters, vocab {}, d_model {}, {}+{} layers; criterion {}, device {}, precision {}",
        n_params,
        s.tokenizer.vocab_size(),
        s.cfg.d_model,
        s.cfg.encoder_layers,
        s.cfg.decoder_layers,
        criterion_desc,
        r.device,
        match r.training.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16 autocast (f32 weights and optimiser)",
        }
    ));
    runlog.borrow_mut().open_metrics(
        out,
        resume_from.as_ref().map(|_| state.update),
        r.training.tensorboard,
    )?;

    let pad = s.tokenizer.pad_id();
    let start = s.cfg.decoder_start_token_id;
    let shuffle_seed = state.shuffle_seed;
    let plan_for =
        |epoch: u64| data::epoch_batches(&train_ex, r.batching.max_tokens, shuffle_seed, epoch);
    let mut plan = plan_for(state.epoch);
    let total = if r.training.max_updates > 0 {
        r.training.max_updates
    } else {
        r.training.max_epochs * (plan.len() as u64).div_ceil(r.batching.update_freq as u64)
    };
    let pb = if opts.progress && !opts.quiet {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_position(state.update);
    let log_line = |pb: &ProgressBar, msg: String| {
        runlog.borrow_mut().line(&msg);
        if opts.quiet {
        } else if pb.is_hidden() {
            eprintln!("{msg}");
        } else {
            pb.println(msg);
        }
    };

    // Wall time continues across resumes, so curves against time stay comparable between runs.
    let run_start = Instant::now();
    let wall_at_start = state.wall_seconds;
    let first_update = state.update;
    let wall = || wall_at_start + run_start.elapsed().as_secs_f64();
    let mut last_dir = resume_from.clone().unwrap_or_default();
    let mut last_valid: Option<Validation> = None;
    let mut stopped_early = false;
    let (mut win_loss, mut win_ce, mut win_kl, mut win_nll, mut win_tok, mut win_n) =
        (0f64, 0f64, 0f64, 0f64, 0u64, 0u64);
    let mut win_start = Instant::now();
    let mut saved_at = state.update;
    let mut validated_at = if resume_from.is_some() {
        state.update
    } else {
        u64::MAX
    };
    let done_epochs =
        |st: &TrainerState| r.training.max_epochs > 0 && st.epoch >= r.training.max_epochs;
    let done_updates =
        |st: &TrainerState| r.training.max_updates > 0 && st.update >= r.training.max_updates;

    while !done_updates(&state) && !done_epochs(&state) {
        let autocast = match r.training.precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(autocast_model(&s, DType::BF16)?),
        };
        let model = autocast.as_ref().unwrap_or(&s.model);
        let mut acc: Option<Grads> = None;
        let mut ntok = 0usize;
        let mut nonfinite = false;
        let (mut u_loss, mut u_ce, mut u_kl, mut u_nll) = (0f64, 0f64, 0f64, 0f64);
        let mut epoch_ended = false;
        for _ in 0..r.batching.update_freq {
            if state.next_batch >= plan.len() {
                state.epoch += 1;
                state.next_batch = 0;
                epoch_ended = true;
                if done_epochs(&state) {
                    break;
                }
                plan = plan_for(state.epoch);
            }
            let b = data::make_batch(&train_ex, &plan[state.next_batch], pad, start, &s.device)?;
            state.next_batch += 1;
            dropout.seed_device(&s.device).map_err(ext)?;
            let parts = model_loss(model, criterion.as_ref(), &b, Mode::Train(&dropout))?;
            let loss_sum = parts.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let attempt = state.update + state.nan_total + 1;
            if !loss_sum.is_finite() || opts.fault_nan_updates.contains(&attempt) {
                nonfinite = true;
                continue;
            }
            let grads = parts.loss_sum.backward()?;
            AdamW::accumulate(&mut acc, opt.grads_from(&grads))?;
            ntok += parts.ntokens;
            u_loss += loss_sum;
            let ce_sums: Vec<f64> = parts
                .ce_sum
                .iter()
                .map(|t| t.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>()))
                .collect::<candle_core::Result<_>>()?;
            u_ce += ce_sums.iter().sum::<f64>() / ce_sums.len().max(1) as f64;
            u_nll += parts.nll_sum[0].to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if let Some(kl) = &parts.kl_sum {
                u_kl += kl.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        if epoch_ended && done_epochs(&state) && acc.is_none() && !nonfinite {
            break;
        }
        let Some(mut grads) = acc.filter(|_| !nonfinite) else {
            state.nan_total += 1;
            state.nan_consecutive += 1;
            log_line(
                &pb,
                format!(
                    "update {}: loss is NaN/inf, update skipped ({} in a row, {} in total)",
                    state.update + 1,
                    state.nan_consecutive,
                    state.nan_total
                ),
            );
            runlog.borrow_mut().record(&serde_json::json!({"kind": "nan_skip", "update": state.update, "nan_total": state.nan_total}));
            if state.nan_consecutive > r.nan.max_consecutive || state.nan_total > r.nan.max_total {
                pb.finish_and_clear();
                let kept = if last_dir.as_os_str().is_empty() {
                    "no checkpoint was written yet".to_string()
                } else {
                    format!("the last good checkpoint is {}", last_dir.display())
                };
                return Err(Error::NonFinite {
                    message: format!(
                        "loss was NaN/inf in {} consecutive updates ({} in total; limits nan.max_consecutive = {}, nan.max_total = {}); stopping at update {}: {kept}",
                        state.nan_consecutive, state.nan_total, r.nan.max_consecutive, r.nan.max_total, state.update
                    ),
                });
            }
            continue;
        };
        state.nan_consecutive = 0;
        optim::scale_grads(&mut grads, 1.0 / ntok.max(1) as f64)?;
        let gnorm = optim::clip_grad_norm(&mut grads, r.optimizer.clip_norm)?;
        let lr = optim::learning_rate(
            &r.schedule,
            r.optimizer.lr,
            r.training.max_updates,
            state.update + 1,
        );
        opt.step(&grads, lr)?;
        state.update += 1;
        state.tokens_seen += ntok as u64;
        let n = ntok.max(1) as f64;
        win_loss += u_loss;
        win_ce += u_ce;
        win_kl += u_kl;
        win_nll += u_nll;
        win_tok += ntok as u64;
        win_n += 1;
        pb.set_position(state.update);
        let kl_txt = if r.criterion.kind == CriterionKind::Rdrop {
            format!(" kl {:.4}", u_kl / n)
        } else {
            String::new()
        };
        pb.set_message(format!(
            "{:.0} tok/s loss {:.3} ce {:.3}{kl_txt} lr {:.2e}",
            win_tok as f64 / win_start.elapsed().as_secs_f64().max(1e-9),
            u_loss / n,
            u_ce / n,
            lr
        ));
        if r.training.log_every > 0 && state.update.is_multiple_of(r.training.log_every) {
            let wn = win_tok.max(1) as f64;
            let secs = win_start.elapsed().as_secs_f64();
            let rec = serde_json::json!({
                "kind": "train", "update": state.update, "epoch": state.epoch + 1,
                "loss": win_loss / wn, "ce": win_ce / wn, "nll": win_nll / wn,
                "kl": if r.criterion.kind == CriterionKind::Rdrop { Some(win_kl / wn) } else { None },
                "lr": lr, "grad_norm": gnorm, "tokens_per_s": wn / secs.max(1e-9),
                "updates_in_window": win_n, "tokens_seen": state.tokens_seen, "wall_s": wall(),
            });
            // From this process's own pace (validation time included), so a resumed run's ETA is honest.
            let done_here = state.update.saturating_sub(first_update).max(1);
            let eta = run_start.elapsed().as_secs_f64() / done_here as f64
                * total.saturating_sub(state.update) as f64;
            log_line(&pb, format!(
                "update {:>6} epoch {:>3} | loss {:.4} ce {:.4}{} | lr {:.3e} | gnorm {:.3} | {:.0} tok/s | eta {} to update {}",
                state.update, state.epoch + 1, win_loss / wn, win_ce / wn,
                if r.criterion.kind == CriterionKind::Rdrop { format!(" kl {:.4}", win_kl / wn) } else { String::new() },
                lr, gnorm, wn / secs.max(1e-9), hms(eta), total
            ));
            runlog.borrow_mut().record(&rec);
            (win_loss, win_ce, win_kl, win_nll, win_tok, win_n) = (0.0, 0.0, 0.0, 0.0, 0, 0);
            win_start = Instant::now();
        }

        let last_update = done_updates(&state)
            || (r.training.max_epochs > 0
                && state.epoch + 1 >= r.training.max_epochs
                && state.next_batch >= plan.len());
        let want_valid = (r.validation.every_updates > 0
            && state.update.is_multiple_of(r.validation.every_updates))
            || (epoch_ended && r.validation.every_epoch)
            || last_update;
        if want_valid && validated_at != state.update {
            validated_at = state.update;
            let t0 = Instant::now();
            let mut v = validate(&s, &valid_ex, &valid_refs, &r.validation.metrics)?;
            if r.validation.consistency {
                let seed = r.seed ^ state.update.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                v.consistency_kl = Some(dropout_consistency(&s, &valid_ex, seed)?);
            }
            let value = v.metric(best_by);
            let improved = match (value, state.best_value) {
                (Some(x), Some(best)) if best_by.higher_is_better() => x > best,
                (Some(x), Some(best)) => x < best,
                (Some(_), None) => true,
                _ => false,
            };
            if improved {
                state.best_value = value;
                state.best_bleu = v.bleu;
                state.best_update = Some(state.update);
                state.bad_validations = 0;
            } else if value.is_some() {
                state.bad_validations += 1;
            }
            log_line(
                &pb,
                format!(
                    "valid at update {}: loss {:.4} nll {:.4}{}{}{}{} ({:.1}s)",
                    state.update,
                    v.loss,
                    v.nll,
                    v.bleu.map(|b| format!(" BLEU {b:.2}")).unwrap_or_default(),
                    v.chrf.map(|c| format!(" chrF {c:.2}")).unwrap_or_default(),
                    v.consistency_kl
                        .map(|k| format!(" dropout-KL {k:.4}"))
                        .unwrap_or_default(),
                    if improved { " (best)" } else { "" },
                    t0.elapsed().as_secs_f64()
                ),
            );
            runlog.borrow_mut().record(&serde_json::json!({
                "kind": "valid", "update": state.update, "epoch": state.epoch + 1,
                "loss": v.loss, "nll": v.nll, "bleu": v.bleu, "chrf": v.chrf,
                "best_by": best_by.name(), "best_value": state.best_value,
                "consistency_kl": v.consistency_kl, "sentences": v.sentences,
                "tokens_seen": state.tokens_seen, "wall_s": wall(),
            }));
            // The run's own curves, redrawn at every validation; a failure to draw is not a
            // reason to stop training.
            if let Err(e) = crate::plot::plot_paths(
                std::slice::from_ref(out),
                crate::plot::XAxis::Updates,
                &out.join("curves.png"),
            ) {
                log_line(&pb, format!("warning: {e}"));
            }
            if improved {
                save_state(&s, &opt, &mut state, &dropout, wall(), &out.join("best"))?;
            }
            last_valid = Some(v);
            if r.validation.patience > 0 && state.bad_validations >= r.validation.patience {
                log_line(
                    &pb,
                    format!(
                        "early stop: no {} improvement in {} validations (best {:.4} at update {})",
                        best_by.name(),
                        state.bad_validations,
                        state.best_value.unwrap_or(0.0),
                        state.best_update.unwrap_or(0)
                    ),
                );
                stopped_early = true;
            }
        }
        let want_save = (r.checkpoint.every_updates > 0
            && state.update.is_multiple_of(r.checkpoint.every_updates))
            || (epoch_ended && r.checkpoint.every_updates == 0)
            || last_update
            || stopped_early;
        if want_save && saved_at != state.update {
            saved_at = state.update;
            last_dir = save_periodic(&s, &opt, &mut state, &dropout, wall())?;
        }
        if stopped_early {
            break;
        }
        let signal = opts
            .stop
            .as_ref()
            .map_or(0, |f| f.load(std::sync::atomic::Ordering::SeqCst));
        if signal != 0 {
            if saved_at != state.update {
                last_dir = save_periodic(&s, &opt, &mut state, &dropout, wall())?;
            }
            pb.finish_and_clear();
            return Err(Error::Interrupted {
                signal: signal_name(signal),
                update: state.update,
                checkpoint: last_dir,
            });
        }
    }
    // Epoch limits can end the loop between updates: make sure the final state is on disk.
    if saved_at != state.update || last_dir.as_os_str().is_empty() {
        last_dir = save_periodic(&s, &opt, &mut state, &dropout, wall())?;
    }
    pb.finish_and_clear();
    let best_dir = checkpoint::complete_dir(&out.join("best")).unwrap_or_else(|| last_dir.clone());
    Ok(Summary {
        updates: state.update,
        epochs: state.epoch,
        best_bleu: state.best_bleu,
        best_by,
        best_value: state.best_value,
        best_update: state.best_update,
        best_dir,
        last_dir,
        train_stats: tstats,
        valid_stats: vstats,
        nan_skipped: state.nan_total,
        stopped_early,
        last_valid,
    })
}
