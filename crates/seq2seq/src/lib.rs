//! A Marian/BART-family encoder-decoder transformer for candle that trains (dropout, padding masks,
//! gradients to every parameter) and decodes (KV cache kept outside the weights).
//!
//! API CONTRACT (to be replaced by real docs when the crate lands; other crates code against this):
//!
//! ```text
//! pub mod config;      // Config: serde from HF config.json, transformers' defaults for absent keys
//! pub mod dropout;     // DropoutRng (seeded ChaCha, state saveable), Mode
//! pub mod model;       // MarianModel
//! pub mod cache;       // DecoderCache
//! pub mod checkpoint;  // resolve / load / save HF directories (hf-hub for hub ids)
//! pub mod tokenizer;   // MarianTokenizer (tokenizer.json, or source.spm/target.spm + vocab.json)
//! pub mod error;       // Error (thiserror), Result
//!
//! /// Train or eval: passed to every forward. Copy, so it threads through layers freely.
//! #[derive(Clone, Copy)] pub enum Mode<'a> { Eval, Train(&'a DropoutRng) }
//! impl DropoutRng { pub fn new(seed: u64) -> Self; pub fn state(&self) -> RngState;
//!                   pub fn from_state(s: RngState) -> Self }   // RngState: Serialize + Deserialize
//!
//! impl MarianModel {
//!   pub fn new(cfg: &Config, vb: candle_nn::VarBuilder) -> Result<Self>;   // vb names = HF keys
//!   pub fn config(&self) -> &Config;
//!   // src_ids [B,S] u32; src_mask [B,S] u32/u8 (1 = token, 0 = pad) -> encoder states [B,S,D]
//!   pub fn encode(&self, src_ids: &Tensor, src_mask: &Tensor, mode: Mode) -> Result<Tensor>;
//!   // teacher forcing: tgt_in [B,T] u32 (decoder_start + target[..-1]) -> logits [B,T,V]
//!   pub fn decode(&self, tgt_in: &Tensor, enc: &Tensor, src_mask: &Tensor, mode: Mode) -> Result<Tensor>;
//!   pub fn forward(&self, src_ids: &Tensor, src_mask: &Tensor, tgt_in: &Tensor, mode: Mode) -> Result<Tensor>;
//!   // incremental decoding, eval mode: cross-attention K/V computed once here
//!   pub fn new_cache(&self, enc: &Tensor, src_mask: &Tensor) -> Result<DecoderCache>;
//!   // tokens [B] u32 (the last token of each row) -> logits [B,V] for the next position
//!   pub fn decode_step(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor>;
//! }
//! impl DecoderCache {
//!   pub fn select(&self, rows: &Tensor) -> Result<DecoderCache>; // reorder/drop rows (beams, finished)
//!   pub fn len(&self) -> usize;                                    // tokens decoded so far
//! }
//! // checkpoint
//! pub fn resolve(model: &str) -> Result<PathBuf>; // local dir, or hub id through hf-hub's cache
//! pub fn load_varmap(dir: &Path, cfg: &Config, dtype, device) -> Result<VarMap>; // every tensor a Var
//! pub fn load(model: &str, dtype, device) -> Result<(Config, MarianModel)>;     // inference
//! pub fn save(dir: &Path, cfg: &Config, varmap: &VarMap) -> Result<()>;       // config.json + model.safetensors
//! // tokenizer
//! impl MarianTokenizer {
//!   pub fn from_dir(dir: &Path) -> Result<Self>;
//!   pub fn from_tokenizer(tok: tokenizers::Tokenizer) -> Result<Self>; // joint, e.g. trained BPE
//!   pub fn save(&self, dir: &Path) -> Result<()>;
//!   pub fn encode_source(&self, text: &str) -> Result<Vec<u32>>;   // `</s>` appended
//!   pub fn encode_target(&self, text: &str) -> Result<Vec<u32>>;   // `</s>` appended
//!   pub fn decode(&self, ids: &[u32]) -> Result<String>;           // specials skipped
//!   pub fn pad_id/eos_id/unk_id/vocab_size
//! }
//! ```

pub mod device;
pub mod generate;
pub mod tokenizer;
