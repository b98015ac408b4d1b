//! Choosing what `--resume` continues from: every file of a checkpoint is loaded before it is
//! trusted (a damaged newest one falls back to the newest intact one), and a recipe that changed the
//! model, tokenizer or data since the checkpoint is refused with the keys that differ.

use crate::checkpoint::{self, OPTIMIZER_FILE, RECIPE_FILE};
use crate::error::{with_causes, Error, Result};
use crate::recipe::Recipe;
use crate::runlog::Console;
use crate::trainer::RunOptions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Loads every file `--resume` will read from `dir`; the error names the damaged file.
pub fn verify(dir: &Path) -> Result<()> {
    checkpoint::read_state(dir)?;
    rdrop_seq2seq::checkpoint::load_config(dir)?;
    for name in ["model.safetensors", OPTIMIZER_FILE] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // Parsing checks the header and that every tensor's bytes are there: a truncated file fails.
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            message: e.to_string(),
        })?;
    }
    rdrop_seq2seq::tokenizer::MarianTokenizer::from_dir(dir).map_err(|e| Error::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("tokenizer: {}", with_causes(&e)),
    })?;
    let recipe = dir.join(RECIPE_FILE);
    Recipe::load(&recipe, &[]).map_err(|e| Error::Checkpoint {
        path: recipe.clone(),
        message: with_causes(&e),
    })?;
    Ok(())
}

/// The checkpoint to resume from: `explicit` (which must be intact), or the newest intact periodic
/// checkpoint under `ck_dir`. Returns it with one warning per damaged newer checkpoint passed over.
pub fn pick(ck_dir: &Path, explicit: Option<&Path>) -> Result<(PathBuf, Vec<String>)> {
    if let Some(dir) = explicit {
        if !dir.join(checkpoint::STATE_FILE).is_file() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "--resume-from: not a checkpoint directory (no {})",
                    checkpoint::STATE_FILE
                ),
            });
        }
        verify(dir)?;
        return Ok((dir.to_path_buf(), Vec::new()));
    }
    let all = checkpoint::list_checkpoints(ck_dir)?;
    let mut warnings = Vec::new();
    for (_, dir) in all.iter().rev() {
        match verify(dir) {
            Ok(()) => return Ok((dir.clone(), warnings)),
            Err(e) => warnings.push(format!(
                "warning: checkpoint {} is damaged ({}); trying an older one",
                dir.display(),
                with_causes(&e)
            )),
        }
    }
    let why = if all.is_empty() {
        "no complete checkpoint".to_string()
    } else {
        format!("all {} checkpoints are damaged", all.len())
    };
    let mut msg = format!("--resume: {why} under {}", ck_dir.display());
    for w in &warnings {
        msg.push_str(&format!("; {}", w.trim_start_matches("warning: ")));
    }
    Err(Error::Other(msg))
}

/// Keys that fix what the checkpoint's weights mean, or the order of its data: they may not change
/// on resume. Everything else (schedule, budget, validation, checkpointing, lr, device, threads)
/// may, and the new value is what later checkpoints record.
const FIXED: &[&str] = &[
    "model.pretrained",
    "model.arch.",
    "tokenizer.",
    "data.format",
    "data.train.",
    "data.source_",
    "data.target_",
    "data.max_len",
    "data.max_sentences",
    "batching.max_tokens",
    "batching.oversize",
];

/// Every leaf of the recipe as `dotted.key -> value`.
fn flatten(r: &Recipe) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(r) {
        walk("", &v, &mut out);
    }
    out
}

/// Refuses a recipe whose fixed keys differ from the checkpoint's recipe, listing each change.
pub fn check_recipe(dir: &Path, now: &Recipe) -> Result<()> {
    let path = dir.join(RECIPE_FILE);
    let then = Recipe::load(&path, &[])?;
    let (a, b) = (flatten(&then), flatten(now));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(unset)".to_string();
    let changed: Vec<String> = keys
        .into_iter()
        .filter(|k| FIXED.iter().any(|f| k.starts_with(f) || k.as_str() == *f))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k} ({} -> {})",
                a.get(k).unwrap_or(&none),
                b.get(k).unwrap_or(&none)
            )
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(Error::Recipe {
        origin: format!("--resume from {}", dir.display()),
        message: format!(
            "the recipe changes the model, tokenizer or data of the checkpoint ({} is what it was trained with): {}; restore them or train into a new output_dir (schedule, budget, validation and checkpoint keys may change)",
            path.display(),
            changed.join(", ")
        ),
    })
}

/// A fingerprint of the tokenised training set (count + FNV-1a over the token ids), stored in the
/// trainer state so a resume notices a corpus edited in place.
pub fn data_fingerprint(examples: &[crate::data::Example]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for e in examples {
        eat(e.source.len() as u32);
        e.source.iter().for_each(|&t| eat(t));
        eat(e.target.len() as u32);
        e.target.iter().for_each(|&t| eat(t));
    }
    format!("{} pairs, fnv1a {h:016x}", examples.len())
}

/// The checkpoint to resume from (`--resume`: the newest intact one, with warnings for those
/// passed over; `--resume-from`: that one), after checking the recipe still fits it.
pub fn choose(r: &Recipe, opts: &RunOptions, out: &mut Console) -> Result<Option<PathBuf>> {
    let ck_dir = r.output_dir.join("checkpoints");
    if opts.resume || opts.resume_from.is_some() {
        let (dir, warnings) = pick(&ck_dir, opts.resume_from.as_deref())?;
        for w in warnings {
            out.say(&w);
        }
        check_recipe(&dir, r)?;
        return Ok(Some(dir));
    }
    if !checkpoint::list_checkpoints(&ck_dir)?.is_empty() {
        return Err(Error::Other(format!(
            "{} already holds checkpoints: pass --resume to continue that run, or choose another output_dir",
            ck_dir.display()
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keys_are_listed_and_budget_keys_pass() {
        let d = tempfile::tempdir().unwrap();
        let then = Recipe::default();
        std::fs::write(d.path().join(RECIPE_FILE), then.to_toml()).unwrap();
        let mut now = then.clone();
        now.training.max_updates = 99;
        now.optimizer.lr = 1e-3;
        now.validation.patience = 3;
        check_recipe(d.path(), &now).unwrap();
        now.model.arch.d_model = 512;
        now.tokenizer.vocab_size = 4000;
        let msg = check_recipe(d.path(), &now).unwrap_err().to_string();
        assert!(
            msg.contains("model.arch.d_model (256 -> 512)")
                && msg.contains("tokenizer.vocab_size (8000 -> 4000)")
                && !msg.contains("max_updates"),
            "{msg}"
        );
    }

    #[test]
    fn fingerprint_sees_one_changed_token() {
        let ex = |t: u32| {
            vec![crate::data::Example {
                source: vec![5, 6],
                target: vec![7, t],
            }]
        };
        assert_eq!(data_fingerprint(&ex(8)), data_fingerprint(&ex(8)));
        assert_ne!(data_fingerprint(&ex(8)), data_fingerprint(&ex(9)));
    }
}
