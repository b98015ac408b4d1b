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

mod locate;
pub use locate::{
    hub_cache_dir, locate, resolve, weights_in, Checkpoint, COMPANION_FILES, WEIGHT_FILES,
};

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
