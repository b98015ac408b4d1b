//! Training recipes, one TOML file per run: parsing, `--set` overrides, range checks (unknown keys
//! and bad values name the key and file). Defaults live in the sections' `Default` impls.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod sections;
pub use sections::*;

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
    /// Model source (pretrained or from scratch) and dropout rates.
    pub model: ModelSection,
    /// Which tokenizer and its vocabulary size.
    pub tokenizer: TokenizerSection,
    /// Corpus files, format and length filters.
    pub data: DataSection,
    /// The training loss: R-Drop or label-smoothed CE.
    pub criterion: CriterionSection,
    /// AdamW hyperparameters and gradient clipping.
    pub optimizer: OptimizerSection,
    /// Learning-rate warmup and decay.
    pub schedule: ScheduleSection,
    /// Token-budget batches and gradient accumulation.
    pub batching: BatchingSection,
    /// Budget (updates, epochs), logging, threads and precision.
    pub training: TrainingSection,
    /// When and how the model is validated, and early stopping.
    pub validation: ValidationSection,
    /// How often checkpoints are saved and how many are kept.
    pub checkpoint: CheckpointSection,
    /// Limits on updates skipped for a NaN/inf loss.
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
