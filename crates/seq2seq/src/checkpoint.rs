//! Hugging Face checkpoints in and out: find a model (local directory, weights file, or hub id through
//! hf-hub's cache), load `model.safetensors` or a zip-format `pytorch_model.bin`, and save
//! `config.json` + `model.safetensors` that transformers' `MarianMTModel.from_pretrained` reads back.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::inference::InferenceModel;
use crate::model::MarianModel;

/// Weight files looked for in a model directory, in order of preference.
pub const WEIGHT_FILES: [&str; 3] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
];

/// Files besides config and weights that belong to a Marian model directory (tokenizer and generation
/// settings). They are fetched from the hub when present there and copied by `rdrop convert`.
pub const COMPANION_FILES: [&str; 8] = [
    "source.spm",
    "target.spm",
    "vocab.json",
    "target_vocab.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// A located model: its directory (holding `config.json`) and its weights file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The directory with `config.json` and the companion files.
    pub dir: PathBuf,
    /// The weights file (`model.safetensors`, an index of shards, or `pytorch_model.bin`).
    pub weights: PathBuf,
}

/// The directory of a model given as a local directory, a weights file inside one, or a hub id
/// (`org/name`, optionally `@revision`) fetched through hf-hub's cache.
pub fn resolve(model: &str) -> Result<PathBuf> {
    Ok(locate(model)?.dir)
}

/// Like [`resolve`], also naming the weights file. A path to a file selects that file as the weights.
///
/// Hub ids use the cache in `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`. A
/// revision whose config and weights are cached is used without a request; otherwise the files are
/// downloaded, unless `HF_HUB_OFFLINE=1`, which gives [`Error::NotCached`].
pub fn locate(model: &str) -> Result<Checkpoint> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(Checkpoint {
            dir: path.to_path_buf(),
            weights: weights_in(path)?,
        });
    }
    if path.is_file() {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return Ok(Checkpoint {
            dir,
            weights: path.to_path_buf(),
        });
    }
    if let Some(kind) = path_like(model) {
        return Err(Error::NoSuchPath {
            path: model.to_string(),
            kind,
        });
    }
    let Some((repo_id, revision)) = parse_hub_id(model) else {
        return Err(Error::NotFound(model.to_string()));
    };
    let cache = hub_cache_dir();
    if offline() {
        return from_cache(model, &cache, repo_id, revision);
    }
    // A complete cached copy is used as is: no request, so no wait on a slow or absent network.
    if let Ok(found) = from_cache(model, &cache, repo_id, revision) {
        return Ok(found);
    }
    download(model, &cache, repo_id, revision)
}

/// The weights file of a model directory.
pub fn weights_in(dir: &Path) -> Result<PathBuf> {
    WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingFile {
            dir: dir.to_path_buf(),
            what: WEIGHT_FILES.join(" or "),
        })
}

/// For a `model` that exists neither as a directory nor as a file: whether it is meant as a local
/// path, and then as a `"directory"` or a `"file"`. A missing `runs/nope` asked of the hub would
/// fail as a hub fetch (or worse, find an unrelated repository), so anything shaped like a path is
/// not tried there: a leading `/`, `./`, `../` or `~`, a trailing `/`, two or more `/` before any
/// `@revision`, a first component that is a local directory, or a weights file name.
fn path_like(model: &str) -> Option<&'static str> {
    let id = model.split_once('@').map_or(model, |(id, _)| id);
    if [".bin", ".safetensors", ".pt", ".pth", ".json"]
        .iter()
        .any(|ext| model.ends_with(ext))
    {
        return Some("file");
    }
    let first = model.split('/').next().unwrap_or_default();
    let looks = model.starts_with('/')
        || model.starts_with("./")
        || model.starts_with("../")
        || model.starts_with('~')
        || model.ends_with('/')
        || model.contains('\\')
        || matches!(model, "." | "..")
        || id.matches('/').count() > 1
        || (model.contains('/') && Path::new(first).is_dir());
    looks.then_some("directory")
}

/// `org/name` or `name`, with an optional `@revision` (branch, tag or commit).
fn parse_hub_id(model: &str) -> Option<(&str, &str)> {
    let (id, rev) = model.split_once('@').unwrap_or((model, "main"));
    let parts: Vec<&str> = id.split('/').collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (parts.len() <= 2 && parts.iter().all(part_ok) && !rev.is_empty()).then_some((id, rev))
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The hub cache directory as huggingface_hub chooses it (hf-hub 0.5 itself ignores HF_HUB_CACHE).
pub fn hub_cache_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = non_empty("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = non_empty("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = non_empty("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// The snapshot directory of `repo_id` at `revision` in the cache, if the revision is known there.
fn cached_snapshot(cache: &Path, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        // A commit hash needs no ref.
        Err(_) => revision.to_string(),
    };
    let snap = repo_dir.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

fn from_cache(model: &str, cache: &Path, repo_id: &str, revision: &str) -> Result<Checkpoint> {
    let not_cached = || Error::NotCached {
        model: model.to_string(),
        cache: cache.to_path_buf(),
    };
    let dir = cached_snapshot(cache, repo_id, revision).ok_or_else(not_cached)?;
    if !dir.join("config.json").is_file() {
        return Err(not_cached());
    }
    let weights = weights_in(&dir).map_err(|_| not_cached())?;
    Ok(Checkpoint { dir, weights })
}

fn download(model: &str, cache: &Path, repo_id: &str, revision: &str) -> Result<Checkpoint> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    let hub_err = |file: &str, e: &dyn std::fmt::Display| Error::Hub {
        model: model.to_string(),
        file: file.to_string(),
        message: e.to_string(),
    };
    let mut builder =
        ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| hub_err("(connection)", &e))?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let config = repo
        .get("config.json")
        .map_err(|e| hub_err("config.json", &e))?;
    let mut weights = None;
    let mut failures = Vec::new();
    for file in ["model.safetensors", "pytorch_model.bin"] {
        match repo.get(file) {
            Ok(p) => {
                weights = Some(p);
                break;
            }
            Err(e) => failures.push(format!("{file}: {e}")),
        }
    }
    let weights = weights.ok_or_else(|| hub_err("weights", &failures.join("; ")))?;
    for file in COMPANION_FILES {
        // Optional: most repositories have only some of them.
        let _ = repo.get(file);
    }
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Checkpoint { dir, weights })
}

/// A `VarBuilder` backend that hands out zero-cost broadcast tensors and records what was asked
/// for: building a model on it lists the parameters without allocating them.
/// (name, shape) of each parameter, in the order the model asked for them.
type ParamList = Vec<(String, Vec<usize>)>;

struct Recorder {
    seen: Arc<Mutex<ParamList>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.iter().any(|(n, _)| n == name) {
            seen.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter `{name}` requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Every parameter the model for `cfg` has, by Hugging Face key, with its shape, in build order.
/// Tied weights appear once (e.g. only `model.shared.weight` for opus-mt models).
pub fn param_shapes(cfg: &Config) -> Result<Vec<(String, Vec<usize>)>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = Recorder { seen: seen.clone() };
    // Positions are not parameters: a one-row table keeps the dry build cheap.
    let small = Config {
        max_position_embeddings: 1,
        ..cfg.clone()
    };
    MarianModel::new(
        &small,
        VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu),
    )?;
    let list = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(list)
}

/// Keys that may hold a parameter under another name: tied copies written by older exports, and the
/// shared matrix transformers 5 unties when `tie_word_embeddings` is false.
fn aliases(key: &str, cfg: &Config) -> Vec<&'static str> {
    let share = cfg.share_encoder_decoder_embeddings;
    let tie = cfg.tie_word_embeddings;
    match key {
        "model.shared.weight" => {
            let mut a = vec![
                "model.encoder.embed_tokens.weight",
                "model.decoder.embed_tokens.weight",
            ];
            if tie {
                a.push("lm_head.weight");
            }
            a
        }
        "model.encoder.embed_tokens.weight" | "model.decoder.embed_tokens.weight" if share => {
            vec!["model.shared.weight"]
        }
        "model.decoder.embed_tokens.weight" if tie => vec!["lm_head.weight"],
        _ => vec![],
    }
}

/// Tensors of a weights file, read lazily where the format allows.
enum Source {
    Tensors(HashMap<String, Tensor>),
    Pth(candle_core::pickle::PthTensors),
}

impl Source {
    fn open(file: &Path) -> Result<Self> {
        let werr = |e: &dyn std::fmt::Display| Error::Weights {
            file: file.to_path_buf(),
            message: e.to_string(),
        };
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".index.json") {
            // Sharded safetensors: {"weight_map": {key: shard file}}.
            let text = std::fs::read_to_string(file).map_err(Error::io(file))?;
            let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| werr(&e))?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| werr(&"no `weight_map` object"))?;
            let dir = file.parent().unwrap_or(Path::new("."));
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort_unstable();
            shards.dedup();
            let mut all = HashMap::new();
            for shard in shards {
                let p = dir.join(shard);
                if !p.is_file() {
                    return Err(Error::MissingFile {
                        dir: dir.to_path_buf(),
                        what: shard.to_string(),
                    });
                }
                all.extend(load_safetensors(&p)?);
            }
            return Ok(Source::Tensors(all));
        }
        if is_zip(file)? {
            let pth = candle_core::pickle::PthTensors::new(file, None).map_err(|e| werr(&e))?;
            return Ok(Source::Pth(pth));
        }
        Ok(Source::Tensors(load_safetensors(file)?))
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        match self {
            Source::Tensors(m) => m.get(key).map(|t| t.dims().to_vec()),
            Source::Pth(p) => p.tensor_infos().get(key).map(|i| i.layout.dims().to_vec()),
        }
    }

    fn get(&self, key: &str, file: &Path) -> Result<Option<Tensor>> {
        match self {
            Source::Tensors(m) => Ok(m.get(key).cloned()),
            Source::Pth(p) => p.get(key).map_err(|e| Error::Weights {
                file: file.to_path_buf(),
                message: format!("`{key}`: {e}"),
            }),
        }
    }
}

fn load_safetensors(file: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| Error::Weights {
        file: file.to_path_buf(),
        message: e.to_string(),
    })
}

/// PyTorch's zip format starts with a local file header; safetensors with a little-endian length.
fn is_zip(file: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(file).map_err(Error::io(file))?;
    let n = f.read(&mut magic).map_err(Error::io(file))?;
    Ok(n == 4 && magic == *b"PK\x03\x04")
}

/// The weights for `cfg` from `weights` (a file, or a directory to look in), checked against the
/// config, converted to `dtype` and moved to `device`, keyed by Hugging Face name.
pub fn load_tensors(
    weights: &Path,
    cfg: &Config,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let file = if weights.is_dir() {
        weights_in(weights)?
    } else {
        weights.to_path_buf()
    };
    if !file.is_file() {
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Err(Error::MissingFile {
            dir,
            what: file.display().to_string(),
        });
    }
    let source = Source::open(&file)?;
    let mut out = HashMap::new();
    for (key, expected) in param_shapes(cfg)? {
        let found = std::iter::once(key.as_str())
            .chain(aliases(&key, cfg))
            .find_map(|k| source.shape(k).map(|s| (k, s)));
        let tensor = match found {
            Some((k, actual)) => {
                if actual != expected {
                    return Err(Error::WeightShape {
                        file,
                        key: k.to_string(),
                        expected,
                        actual,
                    });
                }
                source.get(k, &file)?.ok_or_else(|| Error::MissingWeight {
                    file: file.clone(),
                    key: k.to_string(),
                    expected: expected.clone(),
                })?
            }
            // transformers treats a missing final_logits_bias as zeros (`_keys_to_ignore_on_load_missing`).
            None if key == "final_logits_bias" => {
                Tensor::zeros(expected.as_slice(), DType::F32, &Device::Cpu)?
            }
            None => {
                return Err(Error::MissingWeight {
                    file,
                    key,
                    expected,
                })
            }
        };
        out.insert(key, tensor.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(out)
}

/// Every parameter of the checkpoint as a trainable `Var` in a new `VarMap`, under its Hugging Face
/// key (tied weights stay one `Var`). Build the model with `VarBuilder::from_varmap`.
/// `final_logits_bias` is included: transformers keeps it as a frozen buffer, so a training loop that
/// wants the same behaviour leaves it out of the optimiser.
pub fn load_varmap(weights: &Path, cfg: &Config, dtype: DType, device: &Device) -> Result<VarMap> {
    let tensors = load_tensors(weights, cfg, dtype, device)?;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for (k, t) in tensors {
            data.insert(k, Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}

/// Reads `config.json` from a model directory.
pub fn load_config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            what: "config.json".into(),
        });
    }
    Config::from_file(&path)
}

/// The model (plain tensors, nothing tracks them) from a directory, weights file or hub id;
/// [`load_frozen`] for decoding.
pub fn load(model: &str, dtype: DType, device: &Device) -> Result<(Config, MarianModel)> {
    let ckpt = locate(model)?;
    let cfg = load_config(&ckpt.dir)?;
    let tensors = load_tensors(&ckpt.weights, &cfg, dtype, device)?;
    let m = MarianModel::new(&cfg, VarBuilder::from_tensors(tensors, dtype, device))?;
    Ok((cfg, m))
}

/// [`load`], then [`MarianModel::freeze`]: the model as translation and scoring run it.
pub fn load_frozen(model: &str, dtype: DType, device: &Device) -> Result<(Config, InferenceModel)> {
    let (cfg, m) = load(model, dtype, device)?;
    Ok((cfg, m.freeze()?))
}

/// Writes `config.json` and `model.safetensors` (f32 stays f32) into `dir`, creating it; each file is
/// written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
///
/// Tied weights are stored once, as transformers stores them. With shared embeddings but
/// `tie_word_embeddings = false`, transformers 5 also expects an (unused) `model.shared.weight`: it is
/// written as a copy of the encoder embeddings.
pub fn save(dir: &Path, cfg: &Config, varmap: &VarMap) -> Result<()> {
    let vars = varmap
        .data()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let tensors = param_shapes(cfg)?
        .into_iter()
        .map(|(key, expected)| {
            let var = vars.get(&key).ok_or_else(|| Error::MissingWeight {
                file: PathBuf::from("<varmap>"),
                key: key.clone(),
                expected: expected.clone(),
            })?;
            let actual = var.dims().to_vec();
            if actual != expected {
                return Err(Error::WeightShape {
                    file: PathBuf::from("<varmap>"),
                    key,
                    expected,
                    actual,
                });
            }
            Ok((key, var.as_tensor().clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    save_tensors(dir, cfg, tensors)
}

/// [`save`] for named tensors (e.g. a loaded model's weights, or averaged parameters).
pub fn save_tensors(dir: &Path, cfg: &Config, mut tensors: Vec<(String, Tensor)>) -> Result<()> {
    if cfg.share_encoder_decoder_embeddings
        && !cfg.tie_word_embeddings
        && !tensors.iter().any(|(k, _)| k == "model.shared.weight")
    {
        if let Some((_, t)) = tensors
            .iter()
            .find(|(k, _)| k == "model.encoder.embed_tokens.weight")
        {
            let t = t.clone();
            tensors.push(("model.shared.weight".into(), t));
        }
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let bytes = safetensors_bytes(&tensors)?;
    write_atomic(&dir.join("model.safetensors"), &bytes)?;
    write_atomic(&dir.join("config.json"), cfg.to_json().as_bytes())
}

/// The safetensors encoding (8-byte header length, JSON header, little-endian data), with the
/// `{"format": "pt"}` metadata transformers writes.
fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, t) in sorted {
        let shape = t.dims().to_vec();
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        let t = match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => t,
            _ => t.to_dtype(DType::F32)?,
        };
        let (code, bytes): (&str, Vec<u8>) = match t.dtype() {
            DType::F16 => (
                "F16",
                t.to_vec1::<half::f16>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => (
                "BF16",
                t.to_vec1::<half::bf16>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::F64 => (
                "F64",
                t.to_vec1::<f64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            _ => (
                "F32",
                t.to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        };
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": code, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::Input(format!("cannot encode safetensors header: {e}")))?;
    // The data section starts 8-byte aligned, padded with spaces as the reference writer does.
    while (head.len() + 8) % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes `path` via a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}
