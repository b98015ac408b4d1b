//! A run's live pieces: device, tokenizer, config, variables and model, built fresh, from a
//! pretrained model or from a checkpoint; the criterion, the loss of a batch, and checkpoint saving.

use crate::checkpoint::{self, TrainerState};
use crate::data::{self, DataStats, Example, RawPair};
use crate::error::{Error, Result};
use crate::init::init_marian;
use crate::optim::AdamW;
use crate::recipe::{CriterionKind, Precision, Recipe, TokenizerKind};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rdrop_loss::{Criterion, CriterionConfig};
use rdrop_seq2seq::config::Config;
use rdrop_seq2seq::dropout::Mode;
use rdrop_seq2seq::model::MarianModel;
use rdrop_seq2seq::tokenizer::MarianTokenizer;
use rdrop_seq2seq::InferenceModel;
use std::path::{Path, PathBuf};

/// The pieces of a live run.
pub struct Session {
    /// The recipe the session was built from.
    pub recipe: Recipe,
    /// Where the model's tensors live and compute (the recipe's `device`).
    pub device: Device,
    /// Model config: a pretrained or checkpoint one with the recipe's dropout, or `model.arch`.
    pub cfg: Config,
    /// The model's trainable variables: what AdamW updates and checkpoints save.
    pub varmap: VarMap,
    /// The model built on `varmap` (f32).
    pub model: MarianModel,
    /// The tokenizer: the model's own, a checkpoint's, or one trained on the training data.
    pub tokenizer: MarianTokenizer,
    /// Things the user should hear about that do not stop the run (e.g. a smaller vocabulary).
    pub warnings: Vec<String>,
}

/// `cpu` / `cuda[:N]` → a candle device, through the one parser translate and score use too, so a
/// CPU-only build or a machine without a driver gets the same advice everywhere.
pub fn make_device(spec: &str) -> Result<Device> {
    rdrop_seq2seq::device::parse_device(spec).map_err(|e| Error::Device {
        spec: spec.to_string(),
        error: Box::new(e),
    })
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
    Ok(Config::from_json_str(
        &json.to_string(),
        Path::new("<recipe model.arch>"),
    )?)
}

/// The model directory's config with the recipe's dropout rates (a recipe decides regularisation).
fn config_with_dropout(dir: &Path, r: &Recipe) -> Result<Config> {
    let mut cfg = rdrop_seq2seq::checkpoint::load_config(dir)?;
    cfg.dropout = r.model.dropout;
    cfg.attention_dropout = r.model.attention_dropout;
    cfg.activation_dropout = r.model.activation_dropout;
    Ok(cfg)
}

fn load_weights(dir: &Path, cfg: &Config, device: &Device) -> Result<VarMap> {
    let weights = rdrop_seq2seq::checkpoint::weights_in(dir)?;
    Ok(rdrop_seq2seq::checkpoint::load_varmap(
        &weights,
        cfg,
        DType::F32,
        device,
    )?)
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
        let tok = MarianTokenizer::from_dir(dir)?;
        let cfg = config_with_dropout(dir, r)?;
        let vm = load_weights(dir, &cfg, &device)?;
        (tok, cfg, vm)
    } else if !r.model.pretrained.is_empty() {
        let dir = rdrop_seq2seq::checkpoint::resolve(&r.model.pretrained)?;
        let tok = match r.tokenizer_kind() {
            TokenizerKind::Model | TokenizerKind::Auto => MarianTokenizer::from_dir(&dir)?,
            k => {
                return Err(Error::Recipe {
                    origin: "tokenizer.kind".into(),
                    message: format!("{k:?} with a pretrained model: its embeddings belong to its own tokenizer; use \"model\""),
                })
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
        let tok = rdrop_seq2seq::tokenizer::train_joint(&files, kind, r.tokenizer.vocab_size)?;
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
    let model = MarianModel::new(&cfg, vb)?;
    if from.is_none() && r.model.pretrained.is_empty() {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| Error::Poisoned("variable map"))?;
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
        Ok((s.tokenizer.encode_source(a)?, s.tokenizer.encode_target(b)?))
    })
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
    Ok(cfg.build(pad)?)
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
    let logits = forward_logits(model, criterion, b, mode)?;
    Ok(criterion.loss(&logits, &b.labels)?)
}

/// The logits the criterion scores: of the batch, or of `[x; x]` for a doubling criterion.
pub fn forward_logits(
    model: &MarianModel,
    criterion: &dyn Criterion,
    b: &data::Batch,
    mode: Mode,
) -> Result<Tensor> {
    Ok(if criterion.needs_doubled_batch() {
        let d = rdrop_loss::duplicate_all(&[&b.src_ids, &b.src_mask, &b.tgt_in])?;
        model.forward(&d[0], &d[1], &d[2], mode)?
    } else {
        model.forward(&b.src_ids, &b.src_mask, &b.tgt_in, mode)?
    })
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
        .map_err(|_| Error::Poisoned("variable map"))?
        .clone();
    let mut tensors = std::collections::HashMap::with_capacity(vars.len());
    for (name, var) in vars {
        tensors.insert(name, f(var.as_tensor())?);
    }
    let vb = VarBuilder::from_tensors(tensors, dtype, &s.device);
    Ok(MarianModel::new(&s.cfg, vb)?)
}

/// The inference model on the variables' current values (`MarianModel::freeze`: detached, in the
/// layouts decoding runs fastest with). Built for each round of decoding during training; the
/// copies are freed after it.
pub fn frozen_model(s: &Session) -> Result<InferenceModel> {
    Ok(s.model.freeze()?)
}

/// The model on the variables' current values, detached: a train-mode pass on it builds no graph.
pub fn detached_model(s: &Session) -> Result<MarianModel> {
    model_from_vars(s, s.model.dtype(), |t| Ok(t.detach()))
}

/// Saves a full checkpoint atomically.
pub fn save_checkpoint(s: &Session, opt: &AdamW, state: &TrainerState, dest: &Path) -> Result<()> {
    checkpoint::write_atomic(dest, |tmp, save_no| {
        rdrop_seq2seq::checkpoint::save(tmp, &s.cfg, &s.varmap)?;
        checkpoint::fault_point(save_no);
        s.tokenizer.save(tmp)?;
        opt.save(&tmp.join(checkpoint::OPTIMIZER_FILE))?;
        checkpoint::write_file(tmp, checkpoint::RECIPE_FILE, s.recipe.to_toml().as_bytes())?;
        let st = serde_json::to_string_pretty(state).map_err(|e| Error::Other(e.to_string()))?;
        checkpoint::write_file(tmp, checkpoint::STATE_FILE, st.as_bytes())
    })
}

/// AdamW over every trained variable, and their parameter count.
pub fn make_optimizer(s: &Session) -> Result<(AdamW, usize)> {
    let mut vars = s
        .varmap
        .data()
        .lock()
        .map_err(|_| Error::Poisoned("variable map"))?
        .clone();
    // transformers keeps final_logits_bias as a frozen buffer (all zeros in Marian): so do we.
    vars.retain(|k, _| k != "final_logits_bias");
    let n_params = vars.values().map(|v| v.as_tensor().elem_count()).sum();
    Ok((AdamW::new(&vars, &s.recipe.optimizer)?, n_params))
}

/// The run's one-line description: model size, criterion, device and precision.
pub fn describe(s: &Session, n_params: usize) -> String {
    let r = &s.recipe;
    let c = &r.criterion;
    let criterion = match c.kind {
        CriterionKind::Rdrop => format!(
            "R-Drop (alpha {}, label smoothing {})",
            c.alpha, c.label_smoothing
        ),
        CriterionKind::LabelSmoothedCe => {
            format!("label-smoothed CE (label smoothing {})", c.label_smoothing)
        }
    };
    format!(
        "model: {} parameters, vocab {}, d_model {}, {}+{} layers; criterion {}, device {}, precision {}",
        n_params,
        s.tokenizer.vocab_size(),
        s.cfg.d_model,
        s.cfg.encoder_layers,
        s.cfg.decoder_layers,
        criterion,
        r.device,
        match (r.training.precision, s.device.is_cuda()) {
            // rdrop never enables candle's reduced-precision f32 GEMMs: cuBLAS runs full f32.
            (Precision::F32, true) => "f32 (TF32 off)",
            (Precision::F32, false) => "f32",
            (Precision::Bf16, _) => "bf16 autocast (f32 weights and optimiser)",
        }
    )
}
