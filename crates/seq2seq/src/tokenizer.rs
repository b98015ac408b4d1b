//! Tokenizers for Marian models: opus-mt style SentencePiece directories and joint `tokenizer.json`
//! vocabularies, with Marian's conventions (`</s>` appended, `<pad>` starts the decoder).
//!
//! Two kinds of directories load with [`MarianTokenizer::from_dir`]:
//!
//! * `tokenizer.json` (a tokenizers pipeline with one vocabulary for both sides), e.g. one made by
//!   [`train_joint`];
//! * opus-mt's `source.spm` + `target.spm` + `vocab.json` (+ `target_vocab.json` when
//!   `tokenizer_config.json` sets `separate_vocabs`). The SentencePiece models are converted here,
//!   without the sentencepiece library, and the ids equal those of transformers' (slow)
//!   `MarianTokenizer`: text is split around the special tokens, a leading `>>xx<<` language code is
//!   kept whole, each piece is looked up in `vocab.json` (unknown pieces become `<unk>`), and `</s>`
//!   is appended. Decoding matches `batch_decode(ids, skip_special_tokens=True)`, including
//!   transformers' choice of decoding with `source.spm` when the vocabulary is joint.
//!
//! ```no_run
//! use rdrop_seq2seq::tokenizer::MarianTokenizer;
//! # fn main() -> Result<(), rdrop_seq2seq::tokenizer::TokenizerError> {
//! let tok = MarianTokenizer::from_dir(std::path::Path::new("opus-mt-en-de"))?;
//! let ids = tok.encode_source("A small frog.")?; // ends with tok.eos_id()
//! let text = tok.decode(&tok.encode_target("Ein kleiner Frosch.")?)?;
//! # Ok(()) }
//! ```

mod opus;
mod spm;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::{NormalizerWrapper, Replace, Sequence, Strip, NFKC};
use tokenizers::parallelism::MaybeParallelRefIterator;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

use opus::SpmMarian;

/// End of sentence; appended to every encoded sequence.
pub const EOS_TOKEN: &str = "</s>";
/// Unknown token.
pub const UNK_TOKEN: &str = "<unk>";
/// Padding token; Marian models also use it as `decoder_start_token_id`.
pub const PAD_TOKEN: &str = "<pad>";

/// Errors from loading, saving, training or running a tokenizer. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read or written (the OS error is the `source`: the chain says it once).
    #[error("{}", path.display())]
    Io {
        /// The file read or written, directory created, or training file that could not be opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (vocabulary or tokenizer config) is malformed (serde's message is the `source`).
    #[error("{}: invalid JSON", path.display())]
    Json {
        /// The JSON file being parsed (or `tokenizer_config.json` when it could not be serialised).
        path: PathBuf,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A key of a JSON file has the wrong type or value.
    #[error("{}: key {key:?}: {message}", path.display())]
    BadKey {
        /// The JSON file (`tokenizer_config.json`, `vocab.json` or `target_vocab.json`).
        path: PathBuf,
        /// The offending key: a `tokenizer_config.json` setting, or the token in a vocabulary.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A SentencePiece model is corrupt or uses a feature this converter does not support.
    #[error("{}: {reason}", path.display())]
    Spm {
        /// The SentencePiece model file (`source.spm` or `target.spm`).
        path: PathBuf,
        /// What is corrupt or unsupported.
        reason: String,
    },
    /// A token the tokenizer needs (`</s>`, `<unk>`, `<pad>`) is not in the vocabulary.
    #[error("{}: token {token:?} is not in the vocabulary", path.display())]
    MissingToken {
        /// The vocabulary file that lacks it (`<tokenizer>` for a pipeline given to
        /// [`MarianTokenizer::from_tokenizer`]).
        path: PathBuf,
        /// The missing token.
        token: String,
    },
    /// The directory holds neither `tokenizer.json` nor the opus-mt files.
    #[error("{}: no tokenizer found (expected tokenizer.json, or source.spm + target.spm + vocab.json)", dir.display())]
    NotFound {
        /// The directory searched.
        dir: PathBuf,
    },
    /// An id passed to `decode` is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary ({size} ids)")]
    IdOutOfRange {
        /// The offending id.
        id: u32,
        /// How many ids there are (for opus-mt directories, the larger of the target vocabulary and
        /// the SentencePiece model).
        size: usize,
    },
    /// An error reported by the tokenizers crate (loading tokenizer.json, encoding, training),
    /// which is the `source`.
    #[error("{context}")]
    Tokenizers {
        /// What was being done, e.g. `loading <dir>/tokenizer.json`, `decoding`, or `training a Bpe
        /// tokenizer on <files>`.
        context: String,
        /// The tokenizers crate's error.
        #[source]
        source: tokenizers::Error,
    },
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// Which subword model [`train_joint`] learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-pair encoding (tokenizers' `BpeTrainer`).
    Bpe,
    /// SentencePiece-style unigram language model (tokenizers' `UnigramTrainer`).
    Unigram,
}

/// A Marian tokenizer: source and target encoders that append `</s>`, and a target decoder.
#[derive(Clone)]
pub struct MarianTokenizer {
    inner: Inner,
    eos_id: u32,
    unk_id: u32,
    pad_id: u32,
    vocab_size: usize,
}

impl std::fmt::Debug for MarianTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Joint(_) => "tokenizer.json",
            Inner::Spm(s) if s.separate_vocabs => "spm, separate vocabularies",
            Inner::Spm(_) => "spm, joint vocabulary",
        };
        f.debug_struct("MarianTokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size)
            .field("eos_id", &self.eos_id)
            .field("unk_id", &self.unk_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

#[derive(Clone)]
enum Inner {
    Joint(Box<Tokenizer>),
    Spm(Arc<SpmMarian>),
}

/// Python's `str.strip()`: Unicode whitespace plus the ASCII separators U+001C..U+001F.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A token in tokenizer_config.json: a string or an AddedToken object `{"content": ...}`.
fn config_token(value: &serde_json::Value, path: &Path, key: &str) -> Result<String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Object(o) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => Err(TokenizerError::BadKey {
                path: path.to_path_buf(),
                key: key.to_string(),
                message: "expected a string or an object with a string \"content\"".into(),
            }),
        },
        _ => Err(TokenizerError::BadKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: format!("expected a token string, found {value}"),
        }),
    }
}

fn tk_err(context: impl Into<String>) -> impl FnOnce(tokenizers::Error) -> TokenizerError {
    let context = context.into();
    move |source| TokenizerError::Tokenizers { context, source }
}

impl MarianTokenizer {
    /// Loads `dir/tokenizer.json` if present, else opus-mt's `source.spm`, `target.spm`,
    /// `vocab.json` (and `target_vocab.json` when `tokenizer_config.json` sets `separate_vocabs`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let joint = dir.join("tokenizer.json");
        if joint.is_file() {
            let tok = Tokenizer::from_file(&joint)
                .map_err(tk_err(format!("loading {}", joint.display())))?;
            return Self::from_tokenizer_at(tok, &joint);
        }
        if !dir.join("source.spm").exists() && !dir.join("vocab.json").exists() {
            return Err(TokenizerError::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        Self::from_spm_dir(dir)
    }

    /// Wraps a tokenizers pipeline with one vocabulary for source and target (e.g. a BPE or unigram
    /// model trained on the data). It must contain `</s>`, `<unk>` and `<pad>`; they are registered
    /// as special tokens (split out of text, skipped when decoding).
    pub fn from_tokenizer(tok: Tokenizer) -> Result<Self> {
        Self::from_tokenizer_at(tok, Path::new("<tokenizer>"))
    }

    fn from_tokenizer_at(mut tok: Tokenizer, path: &Path) -> Result<Self> {
        let id = |tok: &Tokenizer, t: &str| {
            tok.token_to_id(t)
                .ok_or_else(|| TokenizerError::MissingToken {
                    path: path.to_path_buf(),
                    token: t.to_string(),
                })
        };
        let (eos_id, unk_id, pad_id) = (
            id(&tok, EOS_TOKEN)?,
            id(&tok, UNK_TOKEN)?,
            id(&tok, PAD_TOKEN)?,
        );
        // Padding and truncation would change what encode returns; the caller batches.
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(tk_err(format!("configuring {}", path.display())))?;
        tok.add_special_tokens(
            [EOS_TOKEN, UNK_TOKEN, PAD_TOKEN]
                .map(|t| AddedToken::from(t, true))
                .to_vec(),
        )
        .map_err(tk_err(format!("configuring {}", path.display())))?;
        let vocab_size = tok.get_vocab_size(true);
        Ok(Self {
            inner: Inner::Joint(Box::new(tok)),
            eos_id,
            unk_id,
            pad_id,
            vocab_size,
        })
    }

    /// Writes the tokenizer so that [`MarianTokenizer::from_dir`] (and transformers) can load it:
    /// `tokenizer.json` + `tokenizer_config.json` for joint ones, the opus-mt files as they were
    /// read for SentencePiece ones.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |path: PathBuf| move |source| TokenizerError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        match &self.inner {
            Inner::Joint(tok) => {
                let path = dir.join("tokenizer.json");
                tok.save(&path, false)
                    .map_err(tk_err(format!("writing {}", path.display())))?;
                let cfg = serde_json::json!({
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": EOS_TOKEN,
                    "unk_token": UNK_TOKEN,
                    "pad_token": PAD_TOKEN,
                    "model_max_length": 512,
                });
                let path = dir.join("tokenizer_config.json");
                let text =
                    serde_json::to_string_pretty(&cfg).map_err(|source| TokenizerError::Json {
                        path: path.clone(),
                        source,
                    })?;
                std::fs::write(&path, text).map_err(io(path.clone()))?;
            }
            Inner::Spm(s) => {
                for (name, bytes) in &s.files {
                    let path = dir.join(name);
                    std::fs::write(&path, bytes).map_err(io(path.clone()))?;
                }
            }
        }
        Ok(())
    }

    /// Source-side ids of `text`, `</s>` appended.
    pub fn encode_source(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, false)
    }

    /// Target-side ids of `text` (target.spm / target vocabulary), `</s>` appended.
    pub fn encode_target(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text, true)
    }

    fn encode(&self, text: &str, target: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Spm(s) => s.encode(text, target, self.eos_id),
            Inner::Joint(tok) => {
                let enc = tok.encode(text, false).map_err(tk_err("encoding"))?;
                let mut ids = enc.get_ids().to_vec();
                ids.push(self.eos_id);
                Ok(ids)
            }
        }
    }

    /// [`MarianTokenizer::encode_source`] over many texts, in parallel (rayon, through tokenizers;
    /// `TOKENIZERS_PARALLELISM=false` turns it off).
    pub fn encode_source_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        self.encode_batch(texts, false)
    }

    /// [`MarianTokenizer::encode_target`] over many texts, in parallel.
    pub fn encode_target_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        self.encode_batch(texts, true)
    }

    fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        target: bool,
    ) -> Result<Vec<Vec<u32>>> {
        texts
            .maybe_par_iter()
            .map(|t| self.encode(t.as_ref(), target))
            .collect()
    }

    /// Target ids back to text: special tokens skipped, pieces detokenised.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Spm(s) => s.decode(ids),
            Inner::Joint(tok) => {
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                    return Err(TokenizerError::IdOutOfRange {
                        id,
                        size: self.vocab_size,
                    });
                }
                tok.decode(ids, true).map_err(tk_err("decoding"))
            }
        }
    }

    /// Id of `<pad>` (also Marian's `decoder_start_token_id`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `</s>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of `<unk>`.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Number of source ids (the model's `vocab_size`), special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Number of target ids: the size of `target_vocab.json` with separate vocabularies, else
    /// [`MarianTokenizer::vocab_size`] (the model's `decoder_vocab_size`).
    pub fn target_vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Spm(s) if s.separate_vocabs => {
                s.decoder.keys().map(|&i| i as usize + 1).max().unwrap_or(0)
            }
            _ => self.vocab_size,
        }
    }

    /// Whether source and target use different vocabularies (opus-mt `separate_vocabs`).
    pub fn separate_vocabs(&self) -> bool {
        matches!(&self.inner, Inner::Spm(s) if s.separate_vocabs)
    }
}

/// Trains a joint (source + target) tokenizer on text files, one sentence per line.
///
/// Ids: `</s>` = 0, `<unk>` = 1, `<pad>` = 2 (eos and unk as in opus-mt vocabularies; pad serves as
/// `decoder_start_token_id`), then the learnt pieces. Text is NFKC-normalised, whitespace runs become
/// one space, and words carry SentencePiece's `▁` prefix, so decoding restores the spacing.
pub fn train_joint(
    files: &[PathBuf],
    kind: TokenizerKind,
    vocab_size: usize,
) -> Result<MarianTokenizer> {
    for f in files {
        std::fs::File::open(f).map_err(|source| TokenizerError::Io {
            path: f.clone(),
            source,
        })?;
    }
    let context = || {
        format!(
            "training a {kind:?} tokenizer on {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let specials: Vec<AddedToken> = [EOS_TOKEN, UNK_TOKEN, PAD_TOKEN]
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let (model, mut trainer): (ModelWrapper, TrainerWrapper) = match kind {
        TokenizerKind::Bpe => (
            BPE::builder()
                .unk_token(UNK_TOKEN.to_string())
                .build()
                .map_err(tk_err(context()))?
                .into(),
            BpeTrainerBuilder::new()
                .vocab_size(vocab_size)
                .min_frequency(0)
                .show_progress(false)
                .special_tokens(specials)
                .build()
                .into(),
        ),
        TokenizerKind::Unigram => (
            Unigram::default().into(),
            UnigramTrainer::builder()
                .vocab_size(u32::try_from(vocab_size).unwrap_or(u32::MAX))
                .show_progress(false)
                .special_tokens(specials)
                .unk_token(Some(UNK_TOKEN.to_string()))
                .build()
                .map_err(|e| TokenizerError::Tokenizers {
                    context: context(),
                    source: Box::new(e),
                })?
                .into(),
        ),
    };
    let mut tok = Tokenizer::new(model);
    let normalizer: NormalizerWrapper = Sequence::new(vec![
        NFKC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(tk_err(context()))?
        .into(),
        Strip::new(true, true).into(),
    ])
    .into();
    tok.with_normalizer(Some(normalizer))
        .map_err(tk_err(context()))?;
    let metaspace = Metaspace::new('\u{2581}', PrependScheme::Always, true);
    tok.with_pre_tokenizer(Some(metaspace.clone()));
    tok.with_decoder(Some(metaspace));
    let paths = files.iter().map(|f| f.display().to_string()).collect();
    tok.train_from_files(&mut trainer, paths)
        .map_err(tk_err(context()))?;
    MarianTokenizer::from_tokenizer(tok)
}
