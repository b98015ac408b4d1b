//! The sections of a recipe, one struct each with its defaults (what a recipe need not say), and
//! the enums their keys take. Parsing, overrides and range checks are in the parent module.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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

/// The `[tokenizer]` section: which tokenizer, and the size of one trained on the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerSection {
    /// Where the tokenizer comes from (default `auto`).
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
    /// Source-language file, one sentence per line (`format = "text"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// Target-language file, line-aligned with `source` (`format = "text"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// The single TSV or JSONL file holding both sides (`format = "tsv"` / `"jsonl"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// The `[data]` section: the corpus files, how to read them, and the length filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// How both splits are stored (default `text`).
    pub format: DataFormat,
    /// The training split.
    pub train: SplitSection,
    /// The validation split (loss, BLEU/chrF, early stopping).
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

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriterionKind {
    /// Label-smoothed cross entropy (the baseline).
    LabelSmoothedCe,
    /// R-Drop: two dropout passes, CE on both + α/2 · symmetric KL.
    Rdrop,
}

/// The `[criterion]` section: the training loss and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriterionSection {
    /// Which loss to train with (default `rdrop`).
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
    /// Decay rate of the first-moment (mean) estimate, in [0, 1).
    pub beta1: f64,
    /// Decay rate of the second-moment (squared-gradient) estimate, in [0, 1).
    pub beta2: f64,
    /// Added to the sqrt of the bias-corrected second moment, keeping the step finite.
    pub eps: f64,
    /// Decoupled weight decay: each step scales weights by `1 - lr · weight_decay` (0 = off).
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

/// The learning-rate curve after the linear warmup.
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

/// The `[schedule]` section: warmup and the learning-rate curve that follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSection {
    /// The curve after warmup (default `inverse_sqrt`).
    pub kind: ScheduleKind,
    /// Updates over which the lr rises linearly from `warmup_init_lr` to `optimizer.lr` (0 = none).
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

/// The `[batching]` section: token-budget batches and gradient accumulation.
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

/// The `[training]` section: the run's budget, logging, threads and precision.
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

/// How validation decodes for BLEU and chrF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeKind {
    /// Pick the most likely token at each step.
    Greedy,
    /// Beam search with `validation.beam_size` hypotheses.
    Beam,
}

/// A validation metric: corpus BLEU or chrF of the decoded validation set, or the eval-mode
/// label-smoothed CE / NLL per target token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidMetric {
    /// Corpus BLEU (sacreBLEU defaults); higher is better.
    Bleu,
    /// Corpus chrF; higher is better.
    Chrf,
    /// Label-smoothed CE per target token (the recipe's smoothing), eval mode; lower is better.
    Loss,
    /// Plain negative log-likelihood per target token, in eval mode; lower is better.
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

/// The `[validation]` section: when to validate, what to measure, how to decode, early stopping.
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
    /// Greedy or beam decoding for BLEU/chrF (default `greedy`).
    pub decode: DecodeKind,
    /// Beam width with `decode = "beam"` (must then be positive; ignored by greedy).
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

/// The `[checkpoint]` section: how often to save and how many saves to keep.
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
    /// Stop once more than this many updates in a row had a NaN/inf loss.
    pub max_consecutive: u64,
    /// Stop once more than this many updates in total had a NaN/inf loss.
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
