//! SentencePiece unigram models read from their protobuf (`source.spm` / `target.spm`), encoding and
//! decoding pieces exactly as the C++ library does for the options opus-mt models use.
//!
//! The tokenizers crate supplies the unigram Viterbi search; normalisation is done here because
//! tokenizers' `Precompiled` normaliser works per grapheme cluster whereas SentencePiece takes the
//! longest rule at each byte position, and because SentencePiece's whitespace handling (a dummy
//! prefix per call, extra spaces removed after the character map) has no exact pipeline equivalent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::models::unigram::Unigram;
use tokenizers::Model;

use super::TokenizerError;

/// The subset of `sentencepiece_model.proto` (proto2) the tokenizer needs; prost skips the rest.
pub(crate) mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
        #[prost(message, optional, tag = "5")]
        pub denormalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// NORMAL = 1 (default), UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6.
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        /// UNIGRAM = 1 (default), BPE = 2, WORD = 3, CHAR = 4.
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(bool, optional, tag = "24")]
        pub treat_whitespace_as_suffix: Option<bool>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
        #[prost(int32, optional, tag = "40")]
        pub unk_id: Option<i32>,
        #[prost(int32, optional, tag = "41")]
        pub bos_id: Option<i32>,
        #[prost(int32, optional, tag = "42")]
        pub eos_id: Option<i32>,
        #[prost(int32, optional, tag = "43")]
        pub pad_id: Option<i32>,
        #[prost(string, optional, tag = "44")]
        pub unk_surface: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
        #[prost(bool, optional, tag = "3")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4")]
        pub remove_extra_whitespaces: Option<bool>,
        #[prost(bool, optional, tag = "5")]
        pub escape_whitespaces: Option<bool>,
    }
}

/// U+2581, SentencePiece's visible space.
pub(crate) const SPACE_SYMBOL: &str = "\u{2581}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(t: Option<i32>) -> Option<Self> {
        Some(match t.unwrap_or(1) {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// SentencePiece's precompiled character map: a darts-clone double-array trie over UTF-8 bytes
/// whose values index NUL-terminated replacement strings.
#[derive(Clone, Debug)]
struct CharsMap {
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    fn parse(blob: &[u8]) -> Option<Self> {
        let size = u32::from_le_bytes(blob.get(..4)?.try_into().ok()?) as usize;
        let trie = blob.get(4..4usize.checked_add(size)?)?;
        if size & 3 != 0 || size == 0 {
            return None;
        }
        let units = trie
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let normalized = blob[4 + size..].to_vec();
        std::str::from_utf8(&normalized).ok()?;
        Some(Self { units, normalized })
    }

    /// The longest rule matching a prefix of `input`: (bytes consumed, replacement).
    fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        fn offset(unit: u32) -> usize {
            ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize
        }
        let mut node = offset(*self.units.first()?);
        let mut best = None;
        for (i, &c) in input.iter().enumerate() {
            if c == 0 {
                break;
            }
            node ^= c as usize;
            let unit = *self.units.get(node)?;
            // label check: the low byte must be `c` and the leaf flag (bit 31) clear.
            if unit & ((1 << 31) | 0xFF) != c as u32 {
                break;
            }
            node ^= offset(unit);
            if (unit >> 8) & 1 == 1 {
                let value = (*self.units.get(node)? & 0x7FFF_FFFF) as usize;
                best = Some((i + 1, value));
            }
        }
        let (len, value) = best?;
        let rest = self.normalized.get(value..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }
}

/// Length of the UTF-8 sequence a lead byte starts (1 for stray continuation bytes, as in spm).
fn one_char_len(b: u8) -> usize {
    match b {
        0x00..=0xBF => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// A parsed `.spm` unigram model.
#[derive(Clone)]
pub(crate) struct SpmModel {
    pub(crate) path: PathBuf,
    pieces: Vec<String>,
    types: Vec<PieceType>,
    /// Piece -> id as SentencePiece's `PieceToId` resolves it (reserved pieces first).
    piece_ids: HashMap<String, u32>,
    pub(crate) unk_id: u32,
    unk_surface: String,
    charsmap: Option<CharsMap>,
    /// User-defined symbols bypass the character map; longest first.
    user_defined: Vec<String>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    unigram: Unigram,
}

impl SpmModel {
    pub(crate) fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        let bad = |reason: String| TokenizerError::Spm {
            path: path.to_path_buf(),
            reason,
        };
        let model = <proto::ModelProto as prost::Message>::decode(bytes)
            .map_err(|e| bad(format!("cannot parse the SentencePiece protobuf: {e}")))?;
        let trainer = model.trainer_spec.clone().unwrap_or_default();
        let norm = model.normalizer_spec.clone().unwrap_or_default();
        match trainer.model_type.unwrap_or(1) {
            1 => {}
            2 => {
                return Err(bad(
                    "BPE SentencePiece models are not supported (opus-mt uses unigram)".into(),
                ))
            }
            t => {
                return Err(bad(format!(
                    "model_type {t} is not supported (only unigram)"
                )))
            }
        }
        if trainer.treat_whitespace_as_suffix.unwrap_or(false) {
            return Err(bad("treat_whitespace_as_suffix is not supported".into()));
        }
        if model
            .denormalizer_spec
            .as_ref()
            .and_then(|d| d.precompiled_charsmap.as_ref())
            .is_some_and(|c| !c.is_empty())
        {
            return Err(bad("denormalization rules are not supported".into()));
        }
        if model.pieces.is_empty() {
            return Err(bad("the model has no pieces".into()));
        }

        let byte_fallback = trainer.byte_fallback.unwrap_or(false);
        // SentencePiece's max_score_ starts at FLT_MIN, so it is never below ~0.
        let max_score = model
            .pieces
            .iter()
            .filter(|p| PieceType::from_proto(p.r#type) == Some(PieceType::Normal))
            .map(|p| p.score.unwrap_or(0.0))
            .fold(f32::MIN_POSITIVE, f32::max);

        let mut pieces = Vec::with_capacity(model.pieces.len());
        let mut types = Vec::with_capacity(model.pieces.len());
        let mut vocab = Vec::with_capacity(model.pieces.len());
        let mut normal_ids = HashMap::new();
        let mut reserved_ids = HashMap::new();
        let mut user_defined = Vec::new();
        let mut unk_id = None;
        for (i, p) in model.pieces.iter().enumerate() {
            let piece = p.piece.clone().unwrap_or_default();
            if piece.is_empty() {
                return Err(bad(format!("piece {i} is empty")));
            }
            let ty = PieceType::from_proto(p.r#type).ok_or_else(|| {
                bad(format!(
                    "piece {i} ({piece:?}) has unknown type {:?}",
                    p.r#type
                ))
            })?;
            let score = p.score.unwrap_or(0.0);
            // The tokenizers Viterbi sees every piece; pieces SentencePiece never matches in text
            // (control, unknown, unused) get names no normalised text can contain.
            let (name, lattice_score) = match ty {
                PieceType::Normal => (piece.clone(), score as f64),
                // spm: "User defined symbol receives extra bonus to always be selected".
                PieceType::UserDefined => {
                    let s = piece.len() as f32 * max_score - 0.1;
                    user_defined.push(piece.clone());
                    (piece.clone(), s as f64)
                }
                PieceType::Byte => {
                    if !byte_fallback {
                        return Err(bad(format!(
                            "byte piece {piece:?} but byte_fallback is off"
                        )));
                    }
                    (piece.clone(), 0.0)
                }
                PieceType::Unknown | PieceType::Control | PieceType::Unused => {
                    (format!("\u{0}reserved-{i}\u{0}"), 0.0)
                }
            };
            if ty == PieceType::Unknown {
                if unk_id.is_some() {
                    return Err(bad("more than one <unk> piece".into()));
                }
                unk_id = Some(i as u32);
            }
            let map = match ty {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => &mut normal_ids,
                _ => &mut reserved_ids,
            };
            if map.insert(piece.clone(), i as u32).is_some() {
                return Err(bad(format!("piece {piece:?} is defined twice")));
            }
            pieces.push(piece);
            types.push(ty);
            vocab.push((name, lattice_score));
        }
        let unk_id = unk_id.ok_or_else(|| bad("the model has no <unk> piece".into()))?;
        let mut piece_ids = normal_ids;
        piece_ids.extend(reserved_ids);
        user_defined.sort_by_key(|s| std::cmp::Reverse(s.len()));

        let charsmap = match norm.precompiled_charsmap.as_deref() {
            Some(blob) if !blob.is_empty() => Some(
                CharsMap::parse(blob)
                    .ok_or_else(|| bad("the precompiled_charsmap is corrupt".into()))?,
            ),
            _ => None,
        };
        let unigram = Unigram::from(vocab, Some(unk_id as usize), byte_fallback)
            .map_err(|e| bad(format!("cannot build the unigram model: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            pieces,
            types,
            piece_ids,
            unk_id,
            unk_surface: trainer
                .unk_surface
                .unwrap_or_else(|| " \u{2047} ".to_string()),
            charsmap,
            user_defined,
            add_dummy_prefix: norm.add_dummy_prefix.unwrap_or(true),
            remove_extra_whitespaces: norm.remove_extra_whitespaces.unwrap_or(true),
            escape_whitespaces: norm.escape_whitespaces.unwrap_or(true),
            unigram,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// One step of SentencePiece's `NormalizePrefix`: (replacement, input bytes consumed).
    fn normalize_prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        for sym in &self.user_defined {
            if input.starts_with(sym.as_bytes()) {
                return (sym.as_bytes(), sym.len());
            }
        }
        if let Some(cm) = &self.charsmap {
            if let Some((len, out)) = cm.longest_match(input) {
                return (out, len);
            }
        }
        let n = one_char_len(input[0]).min(input.len());
        (&input[..n], n)
    }

    /// SentencePiece's `Normalizer::Normalize` (character map, whitespace handling, dummy prefix).
    pub(crate) fn normalize(&self, text: &str) -> Result<String, TokenizerError> {
        let mut input = text.as_bytes();
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (s, n) = self.normalize_prefix(input);
                if s != b" " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return Ok(String::new());
        }
        let space: &[u8] = if self.escape_whitespaces {
            SPACE_SYMBOL.as_bytes()
        } else {
            b" "
        };
        let mut out = Vec::with_capacity(input.len() * 3);
        if self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut s, n) = self.normalize_prefix(input);
            while prev_space && s.first() == Some(&b' ') {
                s = &s[1..];
            }
            if !s.is_empty() {
                for &b in s {
                    if b == b' ' {
                        out.extend_from_slice(space);
                    } else {
                        out.push(b);
                    }
                }
                prev_space = s.last() == Some(&b' ');
            }
            input = &input[n..];
            if !self.remove_extra_whitespaces {
                prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        String::from_utf8(out).map_err(|_| TokenizerError::Spm {
            path: self.path.clone(),
            reason: "the character map produced invalid UTF-8".into(),
        })
    }

    /// `SentencePieceProcessor::Encode(text, out_type=str)`: pieces with their spm ids; runs of
    /// unknown characters come back as one piece holding their text, as in SentencePiece.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<(String, u32)>, TokenizerError> {
        let normalized = self.normalize(text)?;
        if normalized.is_empty() {
            return Ok(Vec::new());
        }
        let tokens =
            self.unigram
                .tokenize(&normalized)
                .map_err(|e| TokenizerError::Tokenizers {
                    context: format!("encoding with {}", self.path.display()),
                    source: e,
                })?;
        Ok(tokens.into_iter().map(|t| (t.value, t.id)).collect())
    }

    /// `SentencePieceProcessor::DecodePieces`: control pieces vanish, the first piece loses its
    /// leading space symbol, byte pieces are reassembled into UTF-8, pieces the model does not know
    /// are copied through.
    pub(crate) fn decode_pieces(&self, pieces: &[&str]) -> String {
        let mut text = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        let flush = |text: &mut String, bytes: &mut Vec<u8>| {
            if !bytes.is_empty() {
                text.push_str(&String::from_utf8_lossy(bytes));
                bytes.clear();
            }
        };
        for &piece in pieces {
            let id = self.piece_ids.get(piece).copied().unwrap_or(self.unk_id);
            let ty = self.types[id as usize];
            if ty == PieceType::Byte {
                if let Some(b) = parse_byte_piece(piece) {
                    bytes.push(b);
                    continue;
                }
            }
            flush(&mut text, &mut bytes);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match ty {
                PieceType::Control => {}
                PieceType::Unknown => {
                    if self.pieces[id as usize] == piece {
                        text.push_str(&self.unk_surface);
                    } else {
                        text.push_str(piece);
                    }
                }
                _ => {
                    let mut p = piece;
                    if is_bos_ws && (self.add_dummy_prefix || self.remove_extra_whitespaces) {
                        if let Some(rest) = p.strip_prefix(SPACE_SYMBOL) {
                            p = rest;
                            // With extra whitespace removal every leading space goes.
                            bos_ws_seen = !self.remove_extra_whitespaces;
                        }
                    }
                    text.push_str(&p.replace(SPACE_SYMBOL, " "));
                }
            }
        }
        flush(&mut text, &mut bytes);
        text
    }
}

/// `<0xAB>` -> 0xAB.
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
