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

use spm::{SpmModel, SPACE_SYMBOL};

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
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (vocabulary or tokenizer config) is malformed (serde's message is the `source`).
    #[error("{}: invalid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A key of a JSON file has the wrong type or value.
    #[error("{}: key {key:?}: {message}", path.display())]
    BadKey {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A SentencePiece model is corrupt or uses a feature this converter does not support.
    #[error("{}: {reason}", path.display())]
    Spm { path: PathBuf, reason: String },
    /// A token the tokenizer needs (`</s>`, `<unk>`, `<pad>`) is not in the vocabulary.
    #[error("{}: token {token:?} is not in the vocabulary", path.display())]
    MissingToken { path: PathBuf, token: String },
    /// The directory holds neither `tokenizer.json` nor the opus-mt files.
    #[error("{}: no tokenizer found (expected tokenizer.json, or source.spm + target.spm + vocab.json)", dir.display())]
    NotFound { dir: PathBuf },
    /// An id passed to `decode` is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary ({size} ids)")]
    IdOutOfRange { id: u32, size: usize },
    /// An error reported by the tokenizers crate (loading tokenizer.json, encoding, training),
    /// which is the `source`.
    #[error("{context}")]
    Tokenizers {
        context: String,
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

/// One side of an opus-mt tokenizer: its SentencePiece model and the vocabulary it maps into.
struct Side {
    spm: Arc<SpmModel>,
    vocab: Arc<HashMap<String, u32>>,
    /// spm piece id -> Marian id (the piece looked up in the vocabulary, `<unk>` when absent).
    by_piece: Vec<u32>,
    unk_id: u32,
}

impl Side {
    fn new(spm: Arc<SpmModel>, vocab: Arc<HashMap<String, u32>>, unk_id: u32) -> Self {
        let by_piece = (0..spm.len() as u32)
            .map(|i| {
                spm.piece(i)
                    .and_then(|p| vocab.get(p).copied())
                    .unwrap_or(unk_id)
            })
            .collect();
        Self {
            spm,
            vocab,
            by_piece,
            unk_id,
        }
    }

    fn id(&self, token: &str) -> u32 {
        self.vocab.get(token).copied().unwrap_or(self.unk_id)
    }
}

struct SpmMarian {
    source: Side,
    target: Side,
    separate_vocabs: bool,
    /// Target id -> token (the inverted target vocabulary; a later duplicate id wins, as in Python).
    decoder: HashMap<u32, String>,
    /// Special tokens (eos, unk, pad, then any extra ones) with their (source vocabulary) ids.
    specials: Vec<(String, u32)>,
    special_ids: HashSet<u32>,
    /// The files as read, written back verbatim by `save`.
    files: Vec<(&'static str, Vec<u8>)>,
}

enum Chunk<'a> {
    Special(u32),
    Text(&'a str),
}

impl SpmMarian {
    /// transformers' `Trie.split` on the special tokens: leftmost, then longest match.
    fn split<'a>(&self, text: &'a str) -> Vec<Chunk<'a>> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let hit = self
                .specials
                .iter()
                .filter(|(s, _)| rest.starts_with(s.as_str()))
                .max_by_key(|(s, _)| s.len());
            if let Some((s, id)) = hit {
                if start < i {
                    out.push(Chunk::Text(&text[start..i]));
                }
                out.push(Chunk::Special(*id));
                i += s.len();
                start = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push(Chunk::Text(&text[start..]));
        }
        out
    }

    fn encode(&self, text: &str, target: bool, eos_id: u32) -> Result<Vec<u32>> {
        let side = if target { &self.target } else { &self.source };
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        for chunk in self.split(text) {
            let mut text = match chunk {
                Chunk::Special(id) => {
                    ids.push(id);
                    continue;
                }
                Chunk::Text(t) => t,
            };
            // MarianTokenizer.remove_language_code: a leading `>>xx<<` is one token.
            if text.starts_with(">>") {
                if let Some(end) = text.find("<<") {
                    ids.push(side.id(&text[..end + 2]));
                    text = &text[end + 2..];
                }
            }
            for (piece, spm_id) in side.spm.encode(text)? {
                ids.push(if spm_id == side.spm.unk_id {
                    // Unknown text keeps its surface, which vocab.json may still hold.
                    side.id(&piece)
                } else {
                    side.by_piece[spm_id as usize]
                });
            }
        }
        ids.push(eos_id);
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        // transformers decodes with source.spm unless the vocabularies are separate.
        let spm = if self.separate_vocabs {
            &self.target.spm
        } else {
            &self.source.spm
        };
        let mut tokens = Vec::with_capacity(ids.len());
        for &id in ids {
            if self.special_ids.contains(&id) {
                continue;
            }
            let token = match self.decoder.get(&id) {
                Some(t) => t.as_str(),
                // MarianTokenizer falls back to the spm piece with that index.
                None => spm.piece(id).ok_or(TokenizerError::IdOutOfRange {
                    id,
                    size: self.decoder.len().max(spm.len()),
                })?,
            };
            tokens.push(token);
        }
        // MarianTokenizer.convert_tokens_to_string
        let mut out = String::new();
        let mut run: Vec<&str> = Vec::new();
        for token in tokens {
            if self.specials.iter().any(|(s, _)| s == token) {
                out.push_str(&spm.decode_pieces(&run));
                out.push_str(token);
                out.push(' ');
                run.clear();
            } else {
                run.push(token);
            }
        }
        out.push_str(&spm.decode_pieces(&run));
        let out = out.replace(SPACE_SYMBOL, " ");
        Ok(py_strip(&out).to_string())
    }
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

    fn from_spm_dir(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Map<String, serde_json::Value> = if cfg_path.is_file() {
            let bytes = read(&cfg_path)?;
            let cfg = parse_json(&bytes, &cfg_path)?;
            files.push(("tokenizer_config.json", bytes));
            cfg
        } else {
            serde_json::Map::new()
        };
        let separate_vocabs = match cfg.get("separate_vocabs") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(v) => {
                return Err(TokenizerError::BadKey {
                    path: cfg_path,
                    key: "separate_vocabs".into(),
                    message: format!("expected true or false, found {v}"),
                })
            }
        };
        let token = |key: &str, default: &str| -> Result<String> {
            match cfg.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default.to_string()),
                Some(v) => config_token(v, &cfg_path, key),
            }
        };
        let (eos, unk, pad) = (
            token("eos_token", EOS_TOKEN)?,
            token("unk_token", UNK_TOKEN)?,
            token("pad_token", PAD_TOKEN)?,
        );
        let mut extra = Vec::new();
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            match cfg.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Array(a)) => {
                    for v in a {
                        extra.push(config_token(v, &cfg_path, key)?);
                    }
                }
                Some(v) => {
                    return Err(TokenizerError::BadKey {
                        path: cfg_path.clone(),
                        key: key.into(),
                        message: format!("expected a list of tokens, found {v}"),
                    })
                }
            }
        }

        let vocab_path = dir.join("vocab.json");
        let vocab_bytes = read(&vocab_path)?;
        let vocab: HashMap<String, u32> = parse_json(&vocab_bytes, &vocab_path)?;
        // Inverse maps follow the file order so a duplicated id resolves like Python's dict.
        let ordered = |bytes: &[u8], path: &Path| -> Result<Vec<(String, u32)>> {
            let m: serde_json::Map<String, serde_json::Value> = parse_json(bytes, path)?;
            m.into_iter()
                .map(
                    |(k, v)| match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                        Some(n) => Ok((k, n)),
                        None => Err(TokenizerError::BadKey {
                            path: path.to_path_buf(),
                            key: k,
                            message: format!("expected a token id, found {v}"),
                        }),
                    },
                )
                .collect()
        };
        let src_order = ordered(&vocab_bytes, &vocab_path)?;
        files.push(("vocab.json", vocab_bytes));
        let missing = |path: &Path, token: &str| TokenizerError::MissingToken {
            path: path.to_path_buf(),
            token: token.to_string(),
        };
        let src_unk = *vocab.get(&unk).ok_or_else(|| missing(&vocab_path, &unk))?;

        // Special tokens get their vocab.json ids; any that are absent are appended after it, in
        // transformers' order (eos, unk, pad, then the extra ones).
        let mut specials: Vec<(String, u32)> = Vec::new();
        let mut next_id = src_order
            .iter()
            .map(|(_, i)| i + 1)
            .max()
            .unwrap_or(0)
            .max(vocab.len() as u32);
        for t in [&eos, &unk, &pad].into_iter().chain(extra.iter()) {
            if specials.iter().any(|(s, _)| s == t) || t.is_empty() {
                continue;
            }
            let id = match vocab.get(t) {
                Some(&id) => id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            specials.push((t.clone(), id));
        }
        let special = |t: &str| specials.iter().find(|(s, _)| s == t).map(|(_, id)| *id);
        let (eos_id, pad_id) = (
            special(&eos).unwrap_or(src_unk),
            special(&pad).unwrap_or(src_unk),
        );
        let vocab_size = next_id as usize;

        let src_path = dir.join("source.spm");
        let tgt_path = dir.join("target.spm");
        let src_bytes = read(&src_path)?;
        let tgt_bytes = read(&tgt_path)?;
        let src_spm = Arc::new(SpmModel::from_bytes(&src_bytes, &src_path)?);
        let tgt_spm = if tgt_bytes == src_bytes {
            src_spm.clone()
        } else {
            Arc::new(SpmModel::from_bytes(&tgt_bytes, &tgt_path)?)
        };
        files.push(("source.spm", src_bytes));
        files.push(("target.spm", tgt_bytes));

        let vocab = Arc::new(vocab);
        let source = Side::new(src_spm, vocab.clone(), src_unk);
        let (target, tgt_order) = if separate_vocabs {
            let tv_path = dir.join("target_vocab.json");
            let tv_bytes = read(&tv_path)?;
            let tv: HashMap<String, u32> = parse_json(&tv_bytes, &tv_path)?;
            let order = ordered(&tv_bytes, &tv_path)?;
            files.push(("target_vocab.json", tv_bytes));
            let tgt_unk = *tv.get(&unk).ok_or_else(|| missing(&tv_path, &unk))?;
            (Side::new(tgt_spm, Arc::new(tv), tgt_unk), order)
        } else {
            (Side::new(tgt_spm, vocab, src_unk), src_order)
        };
        let decoder = tgt_order.into_iter().map(|(k, v)| (v, k)).collect();
        let special_ids = specials.iter().map(|(_, id)| *id).collect();
        Ok(Self {
            inner: Inner::Spm(Arc::new(SpmMarian {
                source,
                target,
                separate_vocabs,
                decoder,
                specials,
                special_ids,
                files,
            })),
            eos_id,
            unk_id: src_unk,
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
