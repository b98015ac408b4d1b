//! `Config`: the Hugging Face `config.json` of a Marian model, with transformers' `MarianConfig`
//! defaults (transformers 5.24) for every key the file leaves out.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The feed-forward activation (`activation_function`), named as transformers' `ACT2FN` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `swish` / `silu`: x·sigmoid(x) (opus-mt).
    Silu,
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    /// The activation transformers uses for `name`, if this crate supports it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "swish" | "silu" => Self::Silu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            _ => return None,
        })
    }
}

/// Marian/BART-family model configuration. Field names and defaults are those of transformers'
/// `MarianConfig`; keys this struct does not know are kept and written back by [`Config::to_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Model type for transformers' Auto classes; default `"marian"`.
    pub model_type: String,
    /// Number of token ids in the (source, or shared) vocabulary: rows of the encoder embeddings;
    /// default 58101.
    pub vocab_size: usize,
    /// Size of the decoder's vocabulary; absent, null or 0 means `vocab_size` (as in transformers).
    #[serde(default, deserialize_with = "zero_if_null")]
    pub decoder_vocab_size: usize,
    /// Longest sequence, in tokens, the sinusoidal position table covers (longer inputs are
    /// [`Error::TooLong`]); default 1024.
    pub max_position_embeddings: usize,
    /// Number of encoder layers; default 12.
    pub encoder_layers: usize,
    /// Width of the hidden ("intermediate") feed-forward layer in each encoder layer; default 4096.
    pub encoder_ffn_dim: usize,
    /// Number of attention heads in each encoder self-attention; must divide `d_model`; default 16.
    pub encoder_attention_heads: usize,
    /// Number of decoder layers; default 12.
    pub decoder_layers: usize,
    /// Width of the hidden ("intermediate") feed-forward layer in each decoder layer; default 4096.
    pub decoder_ffn_dim: usize,
    /// Number of attention heads in each decoder self- and cross-attention; must divide `d_model`;
    /// default 16.
    pub decoder_attention_heads: usize,
    /// LayerDrop probability: chance that training skips each encoder layer; default 0.0.
    pub encoder_layerdrop: f64,
    /// LayerDrop probability: chance that training skips each decoder layer; default 0.0.
    pub decoder_layerdrop: f64,
    /// Whether transformers returns the past key/values for incremental decoding; kept for the
    /// file, not read here; default true.
    pub use_cache: bool,
    /// Marks the model as encoder-decoder for transformers; kept for the file, not read here;
    /// default true.
    pub is_encoder_decoder: bool,
    /// Feed-forward activation name (see [`Activation::from_name`] for those supported); default
    /// `"gelu"`.
    pub activation_function: String,
    /// Width of the hidden states (embeddings and every layer's input and output); default 1024.
    pub d_model: usize,
    /// Dropout probability on the embeddings and on each attention and feed-forward block's output
    /// during training; default 0.1.
    pub dropout: f64,
    /// Dropout probability on the attention weights during training; default 0.0.
    pub attention_dropout: f64,
    /// Dropout probability on the feed-forward activations (after fc1) during training; default
    /// 0.0.
    pub activation_dropout: f64,
    /// Standard deviation of the normal distribution that new embedding matrices (and an untied
    /// `lm_head`) are initialised from; linear layers use candle_nn's default init. Default 0.02.
    pub init_std: f64,
    /// Token id the decoder input starts with (Marian uses `<pad>`); default 58100.
    pub decoder_start_token_id: u32,
    /// Whether token embeddings are multiplied by sqrt(`d_model`) before positions are added;
    /// default false.
    pub scale_embedding: bool,
    /// Id of the padding token (`<pad>`); its embedding row gets no gradient from lookups; default
    /// 58100.
    pub pad_token_id: u32,
    /// Id of the end-of-sequence token (`</s>`), which ends generation; default 0.
    pub eos_token_id: u32,
    /// Id of a beginning-of-sequence token; Marian has none, so default `None` (`null`).
    pub bos_token_id: Option<u32>,
    /// Token id transformers forces as the last one when generation reaches its length limit;
    /// default `Some(0)`.
    pub forced_eos_token_id: Option<u32>,
    /// Whether encoder and decoder use one vocabulary (`vocab_size`, also the output layer's size)
    /// and, with `tie_word_embeddings`, one embedding matrix (`model.shared.weight`); default true.
    pub share_encoder_decoder_embeddings: bool,
    /// Whether the output layer (`lm_head`) reuses the decoder embedding matrix; false gives every
    /// embedding matrix and `lm_head` its own weights, as in transformers 5; default true.
    pub tie_word_embeddings: bool,
    /// Keys of the file this struct has no field for (`architectures`, generation settings, ...).
    #[serde(skip)]
    pub extra: Map<String, Value>,
}

fn zero_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    Ok(Option::<usize>::deserialize(d)?.unwrap_or(0))
}

impl Default for Config {
    /// transformers' `MarianConfig()`: the opus-mt-en-de sizes.
    fn default() -> Self {
        Config {
            model_type: "marian".into(),
            vocab_size: 58101,
            decoder_vocab_size: 0,
            max_position_embeddings: 1024,
            encoder_layers: 12,
            encoder_ffn_dim: 4096,
            encoder_attention_heads: 16,
            decoder_layers: 12,
            decoder_ffn_dim: 4096,
            decoder_attention_heads: 16,
            encoder_layerdrop: 0.0,
            decoder_layerdrop: 0.0,
            use_cache: true,
            is_encoder_decoder: true,
            activation_function: "gelu".into(),
            d_model: 1024,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            init_std: 0.02,
            decoder_start_token_id: 58100,
            scale_embedding: false,
            pad_token_id: 58100,
            eos_token_id: 0,
            bos_token_id: None,
            forced_eos_token_id: Some(0),
            share_encoder_decoder_embeddings: true,
            tie_word_embeddings: true,
            extra: Map::new(),
        }
        .resolved()
    }
}

impl Config {
    /// Reads and validates `config.json` (or any file in that format).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates config JSON; `path` only names the source in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::ConfigJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(Error::ConfigJson {
                path: path.to_path_buf(),
                message: "the top level is not a JSON object".into(),
            });
        };
        let mut cfg = match serde_json::from_value::<Config>(Value::Object(map.clone())) {
            Ok(cfg) => cfg,
            Err(e) => return Err(Self::blame_key(&map, path, e)),
        };
        let known = Self::known_keys();
        cfg.extra = map
            .into_iter()
            .filter(|(k, _)| !known.contains(k))
            .collect();
        let cfg = cfg.resolved();
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// serde's message does not say which key failed: parse each key alone to find it.
    fn blame_key(map: &Map<String, Value>, path: &Path, whole: serde_json::Error) -> Error {
        for (key, value) in map {
            let mut one = Map::new();
            one.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<Config>(Value::Object(one)) {
                return Error::ConfigKey {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    message: e.to_string(),
                };
            }
        }
        Error::ConfigJson {
            path: path.to_path_buf(),
            message: whole.to_string(),
        }
    }

    fn known_keys() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// transformers' `__post_init__`: `decoder_vocab_size = decoder_vocab_size or vocab_size`.
    fn resolved(mut self) -> Self {
        if self.decoder_vocab_size == 0 {
            self.decoder_vocab_size = self.vocab_size;
        }
        self
    }

    /// Checks that the values describe a model that can be built (sizes divide, ids fit the vocabularies).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(Error::ConfigKey {
                path: path.to_path_buf(),
                key: key.into(),
                message,
            })
        };
        if Activation::from_name(&self.activation_function).is_none() {
            return bad(
                "activation_function",
                format!(
                    "unsupported activation {:?} (supported: swish, silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu)",
                    self.activation_function
                ),
            );
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("decoder_ffn_dim", self.decoder_ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if self.d_model.checked_rem(heads) != Some(0) {
                return bad(
                    key,
                    format!("d_model {} is not divisible by {heads} heads", self.d_model),
                );
            }
        }
        for (key, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
            ("encoder_layerdrop", self.encoder_layerdrop),
            ("decoder_layerdrop", self.decoder_layerdrop),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(key, format!("{p} is not a probability"));
            }
        }
        let target = self.target_vocab_size();
        for (key, id) in [
            ("pad_token_id", self.pad_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if id as usize >= target {
                return bad(
                    key,
                    format!("id {id} is outside the target vocabulary of {target}"),
                );
            }
        }
        Ok(())
    }

    /// The feed-forward activation.
    pub fn activation(&self) -> Activation {
        // validate() rejected unknown names; fall back to transformers' default for a hand-built Config.
        Activation::from_name(&self.activation_function).unwrap_or(Activation::Gelu)
    }

    /// Rows of the output layer (and of `final_logits_bias`): transformers uses `vocab_size` when the
    /// encoder and decoder share embeddings, `decoder_vocab_size` otherwise.
    pub fn target_vocab_size(&self) -> usize {
        if self.share_encoder_decoder_embeddings {
            self.vocab_size
        } else {
            self.decoder_vocab_size
        }
    }

    /// Width of one attention head in the encoder.
    pub fn encoder_head_dim(&self) -> usize {
        self.d_model / self.encoder_attention_heads
    }

    /// Width of one attention head in the decoder.
    pub fn decoder_head_dim(&self) -> usize {
        self.d_model / self.decoder_attention_heads
    }

    /// A key of the file that has no field here (e.g. `bad_words_ids`), as JSON.
    pub fn extra(&self, key: &str) -> Option<&Value> {
        self.extra.get(key)
    }

    /// `config.json` text: the unknown keys read with it, then every field, with `architectures` and
    /// `model_type` filled in when absent so transformers' Auto classes recognise the model.
    pub fn to_json(&self) -> String {
        let mut out = self.extra.clone();
        if let Ok(Value::Object(fields)) = serde_json::to_value(self) {
            out.extend(fields);
        }
        out.entry("architectures")
            .or_insert_with(|| Value::from(vec!["MarianMTModel"]));
        let mut sorted: Vec<_> = out.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let map: Map<String, Value> = sorted.into_iter().collect();
        // A Map of plain JSON values always serialises.
        serde_json::to_string_pretty(&Value::Object(map)).unwrap_or_default() + "\n"
    }
}
