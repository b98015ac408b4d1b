//! Training recipes: one TOML file per run. Every default lives in the `Default` impls below, so a
//! recipe lists only what differs. Unknown keys are errors that name the key and the file.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A complete, resolved training recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Directory for checkpoints, metrics and the best model (relative paths: to the working dir).
    pub output_dir: PathBuf,
    /// Seed for initialisation, dropout masks and data shuffling.
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub model: ModelSection,
    pub tokenizer: TokenizerSection,
    pub data: DataSection,
    pub criterion: CriterionSection,
    pub optimizer: OptimizerSection,
    pub schedule: ScheduleSection,
    pub batching: BatchingSection,
    pub training: TrainingSection,
    pub validation: ValidationSection,
    pub checkpoint: CheckpointSection,
    pub nan: NanSection,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            output_dir: PathBuf::from("runs/default"),
            seed: 1,
            device: "cpu".into(),
            model: ModelSection::default(),
            tokenizer: TokenizerSection::default(),
            data: DataSection::default(),
            criterion: CriterionSection::default(),
            optimizer: OptimizerSection::default(),
            schedule: ScheduleSection::default(),
            batching: BatchingSection::default(),
            training: TrainingSection::default(),
            validation: ValidationSection::default(),
            checkpoint: CheckpointSection::default(),
            nan: NanSection::default(),
        }
    }
}

/// Where the model comes from, and its dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Hub id (`Helsinki-NLP/opus-mt-de-en`) or local HF directory; empty = from scratch with `arch`.
    pub pretrained: String,
    /// Dropout after attention / feed-forward blocks and embeddings (replaces a pretrained config's).
    pub dropout: f64,
    /// Dropout on attention probabilities.
    pub attention_dropout: f64,
    /// Dropout after the feed-forward activation.
    pub activation_dropout: f64,
    /// Architecture of a model trained from scratch (ignored with `pretrained`).
    pub arch: ArchSection,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            pretrained: String::new(),
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            arch: ArchSection::default(),
        }
    }
}

/// A Marian architecture (HF `MarianConfig` names in comments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchSection {
    /// `d_model`.
    pub d_model: usize,
    /// `encoder_layers`.
    pub encoder_layers: usize,
    /// `decoder_layers`.
    pub decoder_layers: usize,
    /// `encoder_attention_heads` and `decoder_attention_heads`.
    pub heads: usize,
    /// `encoder_ffn_dim` and `decoder_ffn_dim`.
    pub ffn_dim: usize,
    /// `activation_function`: swish (= silu), gelu or relu.
    pub activation: String,
    /// Source and target share one embedding matrix (and the output projection).
    pub share_embeddings: bool,
    /// `max_position_embeddings`: longest sentence in tokens the model accepts.
    pub max_positions: usize,
    /// Standard deviation of the normal initialisation of weight matrices (`init_std`).
    pub init_std: f64,
    /// Multiply embeddings by sqrt(d_model) (`scale_embedding`), as Marian does.
    pub scale_embedding: bool,
}

impl Default for ArchSection {
    fn default() -> Self {
        ArchSection {
            d_model: 256,
            encoder_layers: 3,
            decoder_layers: 3,
            heads: 4,
            ffn_dim: 1024,
            activation: "swish".into(),
            share_embeddings: true,
            max_positions: 256,
            init_std: 0.02,
            scale_embedding: true,
        }
    }
}

/// Which tokenizer: the pretrained model's, or a joint one trained on the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// The model's own tokenizer with `pretrained`, otherwise a BPE trained on the data.
    Auto,
    /// The pretrained model's tokenizer.
    Model,
    /// Joint byte-pair encoding trained on source + target training text.
    Bpe,
    /// Joint Unigram model trained on source + target training text.
    Unigram,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerSection {
    pub kind: TokenizerKind,
    /// Vocabulary size of a trained tokenizer (special tokens included).
    pub vocab_size: usize,
}

impl Default for TokenizerSection {
    fn default() -> Self {
        TokenizerSection {
            kind: TokenizerKind::Auto,
            vocab_size: 8000,
        }
    }
}

/// How a corpus is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Two files, one sentence per line, aligned by line number (`source` + `target`).
    Text,
    /// One file (`file`), source and target in tab-separated columns.
    Tsv,
    /// One file (`file`), one JSON object per line with the source and target fields.
    Jsonl,
}

/// One split of a parallel corpus: `source` + `target` for text, `file` for tsv/jsonl.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    pub format: DataFormat,
    pub train: SplitSection,
    pub valid: SplitSection,
    /// Source language code (metadata; the JSONL source field defaults to it).
    pub source_lang: String,
    /// Target language code (metadata; the JSONL target field defaults to it).
    pub target_lang: String,
    /// JSONL key of the source sentence (empty = `source_lang`).
    pub source_field: String,
    /// JSONL key of the target sentence (empty = `target_lang`).
    pub target_field: String,
    /// TSV column (0-based) of the source sentence.
    pub source_column: usize,
    /// TSV column (0-based) of the target sentence.
    pub target_column: usize,
    /// Training pairs with more tokens (incl. `</s>`) on either side are skipped (counted).
    pub max_len: usize,
    /// Training pairs whose longer side has more than this times the tokens of the shorter are skipped.
    pub max_len_ratio: f64,
    /// Use at most this many training pairs (0 = all).
    pub max_sentences: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            format: DataFormat::Text,
            train: SplitSection::default(),
            valid: SplitSection::default(),
            source_lang: "de".into(),
            target_lang: "en".into(),
            source_field: String::new(),
            target_field: String::new(),
            source_column: 0,
            target_column: 1,
            max_len: 128,
            max_len_ratio: 3.0,
            max_sentences: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriterionKind {
    /// Label-smoothed cross entropy (the baseline).
    LabelSmoothedCe,
    /// R-Drop: two dropout passes, CE on both + α/2 · symmetric KL.
    Rdrop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriterionSection {
    pub kind: CriterionKind,
    /// Label smoothing ε.
    pub label_smoothing: f64,
    /// R-Drop weight α of the symmetric KL (only with `kind = "rdrop"`).
    pub alpha: f64,
}

impl Default for CriterionSection {
    fn default() -> Self {
        CriterionSection {
            kind: CriterionKind::Rdrop,
            label_smoothing: 0.1,
            alpha: 5.0,
        }
    }
}

/// AdamW with decoupled weight decay (none on biases and layer norms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSection {
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (0 = off).
    pub clip_norm: f64,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        OptimizerSection {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 1e-4,
            clip_norm: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warmup, then lr · sqrt(warmup / update) (fairseq's `inverse_sqrt`).
    InverseSqrt,
    /// Linear warmup, then linear decay to 0 at `training.max_updates`.
    Linear,
    /// Linear warmup, then constant.
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSection {
    pub kind: ScheduleKind,
    pub warmup_updates: u64,
    /// Learning rate at update 0 of the warmup.
    pub warmup_init_lr: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            kind: ScheduleKind::InverseSqrt,
            warmup_updates: 4000,
            warmup_init_lr: 1e-7,
        }
    }
}

/// What to do with a training pair longer than `batching.max_tokens` on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// Leave it out and count it in the `train:` line.
    Skip,
    /// Stop before training, naming the first such line.
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingSection {
    /// Padded tokens per batch (rows × longest side), before R-Drop's duplication.
    pub max_tokens: usize,
    /// Batches whose gradients are accumulated into one update.
    pub update_freq: usize,
    /// A pair that alone exceeds `max_tokens`: `skip` (counted) or `error`.
    pub oversize: Oversize,
}

impl Default for BatchingSection {
    fn default() -> Self {
        BatchingSection {
            max_tokens: 4096,
            update_freq: 1,
            oversize: Oversize::Skip,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSection {
    /// Stop after this many updates (0 = no limit).
    pub max_updates: u64,
    /// Stop after this many epochs (0 = no limit).
    pub max_epochs: u64,
    /// Log training metrics every N updates.
    pub log_every: u64,
    /// CPU threads for the numeric kernels (0 = candle's default: all cores).
    pub threads: usize,
    /// Compute precision of the forward and backward passes. `bf16` is autocast: weights and
    /// optimiser state stay f32, each update runs the model on bf16 copies of them, and the loss
    /// (CE and the R-Drop KL) is computed in f32. Meant for CUDA; on CPU bf16 is emulated.
    pub precision: Precision,
    /// Write TensorBoard event files (every logged number) to `<output_dir>/tb/`.
    pub tensorboard: bool,
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            max_updates: 0,
            max_epochs: 20,
            log_every: 50,
            threads: 0,
            precision: Precision::F32,
            tensorboard: true,
        }
    }
}

/// The dtype the model computes in during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// bf16 autocast over f32 master weights.
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeKind {
    Greedy,
    Beam,
}

/// A validation metric: corpus BLEU or chrF of the decoded validation set, or the eval-mode
/// label-smoothed CE / NLL per target token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidMetric {
    Bleu,
    Chrf,
    Loss,
    Nll,
}

impl ValidMetric {
    /// Whether a larger value is better (scores) or a smaller one (losses).
    pub fn higher_is_better(self) -> bool {
        matches!(self, ValidMetric::Bleu | ValidMetric::Chrf)
    }

    /// Whether computing it needs the validation set decoded.
    pub fn needs_decoding(self) -> bool {
        self.higher_is_better()
    }

    /// The name used in recipes, logs and metrics records.
    pub fn name(self) -> &'static str {
        match self {
            ValidMetric::Bleu => "bleu",
            ValidMetric::Chrf => "chrf",
            ValidMetric::Loss => "loss",
            ValidMetric::Nll => "nll",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSection {
    /// Validate every N updates (0 = only at the end of each epoch).
    pub every_updates: u64,
    /// Also validate at the end of every epoch.
    pub every_epoch: bool,
    /// What to compute and log at each validation: `bleu`, `chrf` (both decode the validation
    /// set), `loss`, `nll` (one eval-mode pass; always computed, listing them is for `best_by`).
    pub metrics: Vec<ValidMetric>,
    /// The metric that picks `best/` and drives `patience` (default: the first of `metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_by: Option<ValidMetric>,
    pub decode: DecodeKind,
    pub beam_size: usize,
    /// Decode at most this many tokens beyond the source length × 1.5.
    pub max_decode_len: usize,
    /// Use at most this many validation pairs (0 = all).
    pub max_sentences: usize,
    /// Sentences per decoding / scoring batch.
    pub batch_size: usize,
    /// Stop when the `best_by` metric has not improved for this many validations (0 = never).
    pub patience: u64,
    /// Also measure dropout consistency: the mean per-token symmetric KL between two train-mode
    /// passes over the validation set (what R-Drop minimises; rising in a baseline, it signals
    /// that R-Drop can help). One extra doubled forward pass, no decoding.
    pub consistency: bool,
}

impl Default for ValidationSection {
    fn default() -> Self {
        ValidationSection {
            every_updates: 1000,
            every_epoch: true,
            metrics: vec![ValidMetric::Bleu, ValidMetric::Chrf, ValidMetric::Loss],
            best_by: None,
            decode: DecodeKind::Greedy,
            beam_size: 5,
            max_decode_len: 10,
            max_sentences: 0,
            batch_size: 64,
            patience: 0,
            consistency: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save every N updates (0 = only at the end of each epoch and of training).
    pub every_updates: u64,
    /// Keep the last K periodic checkpoints (0 = all); `best` is kept separately.
    pub keep_last: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every_updates: 1000,
            keep_last: 5,
        }
    }
}

/// What to do when the loss is NaN or infinite: skip the update, and stop after a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NanSection {
    pub max_consecutive: u64,
    pub max_total: u64,
}

impl Default for NanSection {
    fn default() -> Self {
        NanSection {
            max_consecutive: 5,
            max_total: 100,
        }
    }
}

impl ValidationSection {
    /// The metric that picks `best/`.
    pub fn best_metric(&self) -> ValidMetric {
        self.best_by
            .unwrap_or_else(|| self.metrics.first().copied().unwrap_or(ValidMetric::Loss))
    }

    /// Whether validation decodes (BLEU or chrF requested).
    pub fn decodes(&self) -> bool {
        self.metrics.iter().any(|m| m.needs_decoding())
    }
}

impl Recipe {
    /// Reads a recipe file and applies `--set key.sub=value` overrides (values parsed as TOML,
    /// falling back to a plain string), then validates it.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_with(&text, &path.display().to_string(), overrides)
    }

    /// Like [`Recipe::load`] for recipe text; `origin` names it in errors.
    pub fn from_str_with(text: &str, origin: &str, overrides: &[String]) -> Result<Recipe> {
        // Deserialise the file alone first so its own mistakes are reported with the file's line numbers.
        let mut recipe: Recipe = toml::from_str(text).map_err(|e| Error::Recipe {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        if !overrides.is_empty() {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| Error::Recipe {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
            for ov in overrides {
                apply_override(&mut table, ov)?;
            }
            recipe = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| Error::Recipe {
                    origin: format!("{origin} with --set {}", overrides.join(" --set ")),
                    message: e.to_string(),
                })?;
        }
        recipe.validate().map_err(|message| Error::Recipe {
            origin: origin.to_string(),
            message,
        })?;
        Ok(recipe)
    }

    /// The recipe as TOML, every value spelled out (written next to every checkpoint).
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of numbers, strings and paths cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise recipe: {e}\n"))
    }

    /// The tokenizer kind after resolving `auto`.
    pub fn tokenizer_kind(&self) -> TokenizerKind {
        match self.tokenizer.kind {
            TokenizerKind::Auto if self.model.pretrained.is_empty() => TokenizerKind::Bpe,
            TokenizerKind::Auto => TokenizerKind::Model,
            k => k,
        }
    }

    /// Checks values that parse but cannot work together; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let m = &self.model;
        for (k, v) in [
            ("model.dropout", m.dropout),
            ("model.attention_dropout", m.attention_dropout),
            ("model.activation_dropout", m.activation_dropout),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{k} = {v}: must be in [0, 1)"));
            }
        }
        let a = &m.arch;
        for (k, v) in [
            ("model.arch.d_model", a.d_model),
            ("model.arch.encoder_layers", a.encoder_layers),
            ("model.arch.decoder_layers", a.decoder_layers),
            ("model.arch.ffn_dim", a.ffn_dim),
        ] {
            if v == 0 {
                return Err(format!("{k} = 0: must be at least 1"));
            }
        }
        if a.max_positions < 2 {
            return Err(format!(
                "model.arch.max_positions = {}: must be at least 2 (a token and </s>)",
                a.max_positions
            ));
        }
        if !(a.init_std > 0.0 && a.init_std.is_finite()) {
            return Err(format!(
                "model.arch.init_std = {}: must be positive and finite",
                a.init_std
            ));
        }
        if a.heads == 0 || !a.d_model.is_multiple_of(a.heads) {
            return Err(format!(
                "model.arch.d_model = {} must be a multiple of model.arch.heads = {}",
                a.d_model, a.heads
            ));
        }
        if !["swish", "silu", "gelu", "relu"].contains(&a.activation.as_str()) {
            return Err(format!(
                "model.arch.activation = {:?}: expected swish, silu, gelu or relu",
                a.activation
            ));
        }
        if self.tokenizer_kind() == TokenizerKind::Model && m.pretrained.is_empty() {
            return Err("tokenizer.kind = \"model\" needs model.pretrained".into());
        }
        if self.tokenizer.vocab_size < 16 {
            return Err(format!(
                "tokenizer.vocab_size = {} is too small",
                self.tokenizer.vocab_size
            ));
        }
        let c = &self.criterion;
        if !(0.0..1.0).contains(&c.label_smoothing) {
            return Err(format!(
                "criterion.label_smoothing = {}: must be in [0, 1)",
                c.label_smoothing
            ));
        }
        if !c.alpha.is_finite() || c.alpha < 0.0 {
            return Err(format!(
                "criterion.alpha = {}: must be finite and >= 0",
                c.alpha
            ));
        }
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(format!("optimizer.lr = {}: must be positive", o.lr));
        }
        for (k, v) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{k} = {v}: must be in [0, 1)"));
            }
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            return Err(format!("optimizer.eps = {}: must be positive", o.eps));
        }
        for (k, v, what) in [
            ("optimizer.weight_decay", o.weight_decay, "0 = off"),
            ("optimizer.clip_norm", o.clip_norm, "0 = off"),
            (
                "schedule.warmup_init_lr",
                self.schedule.warmup_init_lr,
                "the lr at update 0",
            ),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{k} = {v}: must be >= 0 ({what})"));
            }
        }
        if self.schedule.warmup_init_lr > o.lr {
            return Err(format!(
                "schedule.warmup_init_lr = {} exceeds optimizer.lr = {}: warmup rises to the peak lr",
                self.schedule.warmup_init_lr, o.lr
            ));
        }
        if self.batching.max_tokens == 0 || self.batching.update_freq == 0 {
            return Err("batching.max_tokens and batching.update_freq must be positive".into());
        }
        if self.training.max_updates == 0 && self.training.max_epochs == 0 {
            return Err(
                "set training.max_updates or training.max_epochs (both are 0: no end)".into(),
            );
        }
        if self.schedule.kind == ScheduleKind::Linear && self.training.max_updates == 0 {
            return Err(
                "schedule.kind = \"linear\" decays to 0 at training.max_updates: set it".into(),
            );
        }
        if self.data.max_len < 2
            || self.data.max_len_ratio.is_nan()
            || self.data.max_len_ratio < 1.0
        {
            return Err("data.max_len must be >= 2 and data.max_len_ratio >= 1".into());
        }
        if self.validation.decode == DecodeKind::Beam && self.validation.beam_size == 0 {
            return Err("validation.beam_size must be positive".into());
        }
        let v = &self.validation;
        if v.metrics.is_empty() {
            return Err(
                "validation.metrics is empty: list at least one of bleu, chrf, loss, nll".into(),
            );
        }
        if let Some(b) = v.best_by {
            if b.needs_decoding() && !v.metrics.contains(&b) {
                return Err(format!(
                    "validation.best_by = {:?} is not among validation.metrics = {:?}: it would never be computed",
                    b.name(),
                    v.metrics.iter().map(|m| m.name()).collect::<Vec<_>>()
                ));
            }
        }
        if self.validation.batch_size == 0 {
            return Err("validation.batch_size must be positive".into());
        }
        // The same parser the trainer opens the device with, so a recipe is rejected up front.
        self.device
            .parse::<rdrop_seq2seq::device::DeviceSpec>()
            .map_err(|e| format!("device: {e}"))?;
        Ok(())
    }
}

/// Applies one `key.sub=value` to a TOML table, creating intermediate tables.
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let bad = |message: String| Error::Override {
        spec: spec.to_string(),
        message,
    };
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected key=value".into()))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(bad(format!("bad key {key:?}")));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        // Unquoted words (`criterion.kind=rdrop`, paths) are strings.
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur.insert(part.to_string(), value);
            break;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| bad(format!("{} is not a table", parts[..=i].join("."))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_recipe_is_the_defaults() {
        let r = Recipe::from_str_with("", "empty", &[]).unwrap();
        assert_eq!(r, Recipe::default());
    }

    #[test]
    fn resolved_recipe_round_trips() {
        let mut r = Recipe::default();
        r.data.train.source = Some("a.de".into());
        r.criterion.alpha = 0.7;
        let again = Recipe::from_str_with(&r.to_toml(), "resolved", &[]).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = Recipe::from_str_with("[criterion]\nalpah = 3.0\n", "my.toml", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("my.toml") && msg.contains("alpah"), "{msg}");
        let err = Recipe::from_str_with("", "my.toml", &["optimizer.lrr=1".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("lrr") && msg.contains("--set"), "{msg}");
    }

    #[test]
    fn overrides_parse_toml_values_and_words() {
        let r = Recipe::from_str_with(
            "[criterion]\nalpha = 5.0\n",
            "x",
            &[
                "criterion.alpha=0.7".into(),
                "criterion.kind=label_smoothed_ce".into(),
                "data.train.source=corpus/train.de".into(),
                "training.max_updates=10".into(),
            ],
        )
        .unwrap();
        assert_eq!(r.criterion.alpha, 0.7);
        assert_eq!(r.criterion.kind, CriterionKind::LabelSmoothedCe);
        assert_eq!(
            r.data.train.source.as_deref(),
            Some(Path::new("corpus/train.de"))
        );
        assert_eq!(r.training.max_updates, 10);
        // An integer alpha is accepted as f64.
        let r = Recipe::from_str_with("[criterion]\nalpha = 3\n", "x", &[]).unwrap();
        assert_eq!(r.criterion.alpha, 3.0);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = Recipe::from_str_with("[model]\ndropout = 1.5\n", "r.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("model.dropout"), "{err}");
        // Each of these was accepted once and trained a diverging or silently different model.
        for (set, key) in [
            ("schedule.warmup_init_lr=-5", "schedule.warmup_init_lr"),
            ("schedule.warmup_init_lr=1.0", "schedule.warmup_init_lr"),
            ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
            ("optimizer.clip_norm=-1", "optimizer.clip_norm"),
            ("optimizer.eps=0", "optimizer.eps"),
            ("model.arch.init_std=-0.02", "model.arch.init_std"),
            ("model.arch.init_std=nan", "model.arch.init_std"),
            ("model.arch.encoder_layers=0", "model.arch.encoder_layers"),
            ("model.arch.max_positions=1", "model.arch.max_positions"),
            ("data.max_len_ratio=nan", "data.max_len_ratio"),
            ("batching.oversize=drop", "oversize"),
            ("validation.metrics=[]", "validation.metrics"),
        ] {
            let err = Recipe::from_str_with("", "r.toml", &[set.into()]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains("r.toml"), "{set}: {msg}");
        }
        let err = Recipe::from_str_with(
            "[validation]\nmetrics = [\"loss\"]\nbest_by = \"chrf\"\n",
            "r.toml",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("validation.best_by"), "{err}");
        let err = Recipe::from_str_with("device = \"gpu\"\n", "r.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("device"), "{err}");
    }
}
