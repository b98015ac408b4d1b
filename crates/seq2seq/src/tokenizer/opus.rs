//! opus-mt's SentencePiece directories (`source.spm`, `target.spm`, `vocab.json`): loading them and
//! encoding and decoding as transformers' slow `MarianTokenizer` does, without the sentencepiece library.

use super::spm::{SpmModel, SPACE_SYMBOL};
use super::*;

/// One side of an opus-mt tokenizer: its SentencePiece model and the vocabulary it maps into.
pub(super) struct Side {
    pub(super) spm: Arc<SpmModel>,
    pub(super) vocab: Arc<HashMap<String, u32>>,
    /// spm piece id -> Marian id (the piece looked up in the vocabulary, `<unk>` when absent).
    pub(super) by_piece: Vec<u32>,
    pub(super) unk_id: u32,
}

impl Side {
    pub(super) fn new(spm: Arc<SpmModel>, vocab: Arc<HashMap<String, u32>>, unk_id: u32) -> Self {
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

    pub(super) fn id(&self, token: &str) -> u32 {
        self.vocab.get(token).copied().unwrap_or(self.unk_id)
    }
}

pub(super) struct SpmMarian {
    pub(super) source: Side,
    pub(super) target: Side,
    pub(super) separate_vocabs: bool,
    /// Target id -> token (the inverted target vocabulary; a later duplicate id wins, as in Python).
    pub(super) decoder: HashMap<u32, String>,
    /// Special tokens (eos, unk, pad, then any extra ones) with their (source vocabulary) ids.
    pub(super) specials: Vec<(String, u32)>,
    pub(super) special_ids: HashSet<u32>,
    /// The files as read, written back verbatim by `save`.
    pub(super) files: Vec<(&'static str, Vec<u8>)>,
}

pub(super) enum Chunk<'a> {
    Special(u32),
    Text(&'a str),
}

impl SpmMarian {
    /// transformers' `Trie.split` on the special tokens: leftmost, then longest match.
    pub(super) fn split<'a>(&self, text: &'a str) -> Vec<Chunk<'a>> {
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

    pub(super) fn encode(&self, text: &str, target: bool, eos_id: u32) -> Result<Vec<u32>> {
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

    pub(super) fn decode(&self, ids: &[u32]) -> Result<String> {
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

impl MarianTokenizer {
    pub(super) fn from_spm_dir(dir: &Path) -> Result<Self> {
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
}
