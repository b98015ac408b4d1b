//! Decoding settings: [`GenerateConfig`] with transformers' defaults for opus-mt, [`EarlyStopping`],
//! reading a checkpoint's `generation_config.json`, and the checks a search runs before it starts.

use std::path::Path;

use super::{GenerateError, Result};

/// When beam search may stop a sentence before its length limit (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop once `beam` hypotheses are finished and the best running beam, length-normalised at its
    /// current length, cannot beat the worst of them (transformers' default, `false`).
    #[default]
    Heuristic,
    /// Stop as soon as `beam` hypotheses are finished (`true`).
    Eager,
    /// As `Heuristic`, but a positive length penalty is assumed to reach the length limit
    /// (`"never"`: the canonical beam search).
    Never,
}

/// Settings of one decoding run. [`Default`] matches an opus-mt `generation_config.json`
/// (beam 4, length penalty 1, up to 511 new tokens, forced `</s>`, `<pad>` banned, renormalised).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Beam size; 1 is greedy search (transformers' `num_beams`).
    pub beam: usize,
    /// Length penalty exponent: finished scores are `sum log p / len^lenpen` (`length_penalty`).
    pub lenpen: f32,
    /// transformers' `early_stopping`.
    pub early_stopping: EarlyStopping,
    /// Length limit per sentence, in new tokens: `floor(max_len_a · src_len + max_len_b)` with
    /// `src_len` the source tokens including `</s>`. Ignored when `max_new_tokens` is set.
    pub max_len_a: f32,
    /// See `max_len_a`.
    pub max_len_b: usize,
    /// One length limit for every sentence, in new tokens including `</s>` (`max_new_tokens`).
    pub max_new_tokens: Option<usize>,
    /// `</s>` is banned until this many tokens have been generated (`min_new_tokens`).
    pub min_new_tokens: usize,
    /// Hypotheses returned per sentence, best first (`num_return_sequences`); at most `beam`.
    pub nbest: usize,
    /// Ban any n-gram of this size from occurring twice (`no_repeat_ngram_size`); 0 = off.
    pub no_repeat_ngram: usize,
    /// Force `</s>` at the last allowed step (`forced_eos_token_id`).
    pub forced_eos: bool,
    /// Never generate `<pad>` (`bad_words_ids = [[pad]]`).
    pub ban_pad: bool,
    /// Re-normalise the log-probabilities after masking (`renormalize_logits`).
    pub renormalize: bool,
    /// Where a step's log-normalisers and best tokens are computed: `None` where the decoder
    /// prefers ([`StepDecoder::prefers_top`](super::StepDecoder::prefers_top): on a GPU, which
    /// then copies `1 + 2k` floats per row to the host instead of the vocabulary), `Some(true)`
    /// beside the logits on any device (the CPU too), `Some(false)` on the host from whole logits.
    /// With `no_repeat_ngram` the search always runs on the host (its bans differ per row).
    pub device_search: Option<bool>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            beam: 4,
            lenpen: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            max_len_a: 0.0,
            max_len_b: 511,
            max_new_tokens: None,
            min_new_tokens: 0,
            nbest: 1,
            no_repeat_ngram: 0,
            forced_eos: true,
            ban_pad: true,
            renormalize: true,
            device_search: None,
        }
    }
}

impl GenerateConfig {
    /// Greedy search with the opus-mt settings otherwise.
    pub fn greedy() -> Self {
        GenerateConfig {
            beam: 1,
            ..Self::default()
        }
    }

    /// The settings transformers would use for the model in `dir`: its `generation_config.json`
    /// when there is one, else transformers' own defaults completed from `config.json`
    /// (`forced_eos_token_id`) — with one difference: without a `generation_config.json`
    /// transformers stops after 20 tokens, while this returns `None` so the caller picks a limit.
    ///
    /// The second value is the length limit the file asks for, in new tokens (`max_length - 1`).
    pub fn from_model_dir(dir: &Path) -> Result<(Self, Option<usize>)> {
        let mut cfg = GenerateConfig {
            beam: 1,
            forced_eos: false,
            ban_pad: false,
            renormalize: false,
            ..Self::default()
        };
        let model_cfg = read_json(&dir.join("config.json"))?;
        if let Some(model_cfg) = &model_cfg {
            cfg.forced_eos = model_cfg
                .get("forced_eos_token_id")
                .is_some_and(|v| !v.is_null());
        }
        let Some(gen) = read_json(&dir.join("generation_config.json"))? else {
            return Ok((cfg, None));
        };
        let path = dir.join("generation_config.json");
        let bad = |key: &str, want: &str| GenerateError::GenerationConfig {
            path: path.display().to_string(),
            message: format!("key `{key}` should be {want}"),
        };
        let get_usize = |key: &str| -> Result<Option<usize>> {
            match gen.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| bad(key, "a non-negative integer")),
            }
        };
        if let Some(n) = get_usize("num_beams")? {
            cfg.beam = n.max(1);
        }
        if let Some(n) = get_usize("no_repeat_ngram_size")? {
            cfg.no_repeat_ngram = n;
        }
        if let Some(n) = get_usize("min_length")? {
            // `min_length` counts the decoder start token.
            cfg.min_new_tokens = n.saturating_sub(1);
        }
        if let Some(n) = get_usize("min_new_tokens")? {
            cfg.min_new_tokens = n;
        }
        match gen.get("length_penalty") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                cfg.lenpen = v
                    .as_f64()
                    .ok_or_else(|| bad("length_penalty", "a number"))?
                    as f32
            }
        }
        match gen.get("early_stopping") {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {}
            Some(serde_json::Value::Bool(true)) => cfg.early_stopping = EarlyStopping::Eager,
            Some(serde_json::Value::String(s)) if s == "never" => {
                cfg.early_stopping = EarlyStopping::Never
            }
            Some(_) => return Err(bad("early_stopping", "true, false or \"never\"")),
        }
        match gen.get("forced_eos_token_id") {
            None => {}
            Some(v) => cfg.forced_eos = !v.is_null(),
        }
        match gen.get("renormalize_logits") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                cfg.renormalize = v
                    .as_bool()
                    .ok_or_else(|| bad("renormalize_logits", "true or false"))?
            }
        }
        let pad = model_cfg
            .as_ref()
            .and_then(|c| c.get("pad_token_id"))
            .and_then(|v| v.as_u64());
        if let (Some(serde_json::Value::Array(words)), Some(pad)) = (gen.get("bad_words_ids"), pad)
        {
            // Only the single-token ban of `<pad>` that opus-mt checkpoints carry is supported.
            cfg.ban_pad = words.iter().any(|w| {
                w.as_array()
                    .is_some_and(|w| w.len() == 1 && w[0].as_u64() == Some(pad))
            });
        }
        let max_new =
            get_usize("max_new_tokens")?.or(get_usize("max_length")?.map(|n| n.saturating_sub(1)));
        Ok((cfg, max_new))
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.beam == 0 {
            return Err(GenerateError::Config("beam must be at least 1".into()));
        }
        if self.nbest == 0 || self.nbest > self.beam {
            return Err(GenerateError::Config(format!(
                "nbest ({}) must be between 1 and the beam size ({})",
                self.nbest, self.beam
            )));
        }
        if !self.lenpen.is_finite() {
            return Err(GenerateError::Config(format!(
                "length penalty {} is not finite",
                self.lenpen
            )));
        }
        if !(self.max_len_a.is_finite() && self.max_len_a >= 0.0) {
            return Err(GenerateError::Config(format!(
                "max_len_a ({}) must be a non-negative number",
                self.max_len_a
            )));
        }
        if self.max_new_tokens == Some(0) {
            return Err(GenerateError::Config(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The length limit (new tokens, including `</s>`) for a source of `src_len` tokens, capped to the
    /// decoder's `max_pos` positions.
    pub fn max_new_for(&self, src_len: usize, max_pos: usize) -> usize {
        let n = match self.max_new_tokens {
            Some(n) => n,
            None => {
                (self.max_len_a as f64 * src_len as f64 + self.max_len_b as f64).floor() as usize
            }
        };
        n.clamp(1, max_pos.max(1))
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(GenerateError::GenerationConfig {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| GenerateError::GenerationConfig {
            path: path.display().to_string(),
            message: format!("not valid JSON: {e}"),
        })
}
