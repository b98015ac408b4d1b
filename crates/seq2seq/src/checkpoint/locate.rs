//! Finding a model: a local directory or weights file, or a hub id (`org/name`) through hf-hub's
//! cache, fetched unless `HF_HUB_OFFLINE` is set; what a model directory holds.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
