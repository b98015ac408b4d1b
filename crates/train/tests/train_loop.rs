//! End-to-end checks of the training loop on a tiny model and a tiny generated corpus:
//! the loss falls, R-Drop's KL is positive in train mode and exactly zero in eval mode,
//! a resumed run is bit-identical to an uninterrupted one, and NaN losses are skipped and counted.

use rdrop_train::recipe::{CriterionKind, Recipe};
use rdrop_train::synthetic::{write_corpus, Sizes};
use rdrop_train::trainer::{self, RunOptions};
use std::path::Path;

fn tiny_recipe(dir: &Path) -> Recipe {
    write_corpus(
        &dir.join("data"),
        5,
        Sizes {
            train: 300,
            valid: 16,
            test: 4,
        },
    )
    .unwrap();
    let text = format!(
        r#"
output_dir = "{out}"
seed = 3
[model]
dropout = 0.1
[model.arch]
d_model = 32
encoder_layers = 1
decoder_layers = 1
heads = 2
ffn_dim = 64
max_positions = 64
[tokenizer]
vocab_size = 200
[data]
train = {{ source = "{d}/train.de", target = "{d}/train.en" }}
valid = {{ source = "{d}/valid.de", target = "{d}/valid.en" }}
max_len = 60
[criterion]
alpha = 1.0
[optimizer]
lr = 3e-3
[schedule]
warmup_updates = 5
[batching]
max_tokens = 512
[training]
max_updates = 30
max_epochs = 0
log_every = 5
[validation]
every_updates = 0
every_epoch = false
bleu = false
batch_size = 16
[checkpoint]
every_updates = 0
keep_last = 0
"#,
        out = dir.join("run").display(),
        d = dir.join("data").display()
    );
    Recipe::from_str_with(&text, "tiny", &[]).unwrap()
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..Default::default()
    }
}

fn train_records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .collect()
}

#[test]
fn loss_falls_and_kl_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path());
    let s = trainer::train(&r, &quiet()).unwrap();
    assert_eq!(s.updates, 30);
    let recs = train_records(&r.output_dir);
    assert_eq!(recs.len(), 6);
    let first = recs[0]["ce"].as_f64().unwrap();
    let last = recs[5]["ce"].as_f64().unwrap();
    // 30 updates of a 1+1-layer d32 model: from ~ln(vocab) down by at least half a nat.
    assert!(last < first - 0.5, "CE should fall: {first} -> {last}");
    assert!(recs.iter().all(|v| v["kl"].as_f64().unwrap() > 0.0));
    // R-Drop's loss is CE of two copies plus α·KL (α = 1): ≈ 2·ce + kl per token.
    let (loss, ce, kl) = (
        recs[5]["loss"].as_f64().unwrap(),
        recs[5]["ce"].as_f64().unwrap(),
        recs[5]["kl"].as_f64().unwrap(),
    );
    assert!(
        (loss - (2.0 * ce + kl)).abs() < 1e-3 * loss,
        "{loss} vs 2*{ce}+{kl}"
    );
    // The checkpoint carries the resolved recipe and an HF config.
    let again = Recipe::load(&s.last_dir.join("recipe.toml"), &[]).unwrap();
    assert_eq!(again, r);
    assert!(
        s.last_dir.join("config.json").is_file() && s.last_dir.join("model.safetensors").is_file()
    );
}

/// A session for `r`, one batch of its first 8 training pairs, and the recipe's criterion.
fn session_with_batch(
    r: &Recipe,
) -> (
    trainer::Session,
    rdrop_train::data::Batch,
    Box<dyn rdrop_loss::Criterion>,
) {
    let (pairs, mut stats) =
        rdrop_train::data::read_split(&r.data.train, &r.data, "train").unwrap();
    let sess = trainer::build_session(r, &pairs, None).unwrap();
    let ex = trainer::prepare_examples(&sess, &pairs[..8], &mut stats, 60, 3.0, 0).unwrap();
    let idx: Vec<usize> = (0..ex.len()).collect();
    let pad = sess.tokenizer.pad_id();
    let b = rdrop_train::data::make_batch(
        &ex,
        &idx,
        pad,
        sess.cfg.decoder_start_token_id,
        &sess.device,
    )
    .unwrap();
    let crit = trainer::make_criterion(r, pad).unwrap();
    (sess, b, crit)
}

#[test]
fn kl_positive_in_train_mode_zero_in_eval_mode() {
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path());
    let (sess, b, crit) = session_with_batch(&r);
    let rng = rdrop_seq2seq::dropout::DropoutRng::new(1);
    let train = trainer::batch_loss(
        &sess,
        crit.as_ref(),
        &b,
        rdrop_seq2seq::dropout::Mode::Train(&rng),
    )
    .unwrap();
    let eval =
        trainer::batch_loss(&sess, crit.as_ref(), &b, rdrop_seq2seq::dropout::Mode::Eval).unwrap();
    let kl = |p: &rdrop_loss::LossParts| p.values().unwrap().kl.unwrap();
    assert!(
        kl(&train) > 1e-6,
        "dropout must reach the model: KL {}",
        kl(&train)
    );
    assert_eq!(kl(&eval), 0.0);
}

fn params(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let mut r = tiny_recipe(d.path());
    r.training.max_updates = 8;
    r.checkpoint.every_updates = 4;
    r.batching.update_freq = 2;
    let straight = trainer::train(&r, &quiet()).unwrap();

    let mut half = r.clone();
    half.output_dir = d.path().join("run2");
    half.training.max_updates = 4;
    trainer::train(&half, &quiet()).unwrap();
    let mut rest = half.clone();
    rest.training.max_updates = 8;
    let resumed = trainer::train(
        &rest,
        &RunOptions {
            resume: true,
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(resumed.updates, 8);
    assert!(
        params(&straight.last_dir) == params(&resumed.last_dir),
        "parameters differ after resume"
    );
    let opt = |p: &Path| std::fs::read(p.join("optimizer.safetensors")).unwrap();
    assert!(
        opt(&straight.last_dir) == opt(&resumed.last_dir),
        "optimizer state differs after resume"
    );
}

#[test]
fn nan_losses_are_skipped_counted_and_stop_at_the_limit() {
    let d = tempfile::tempdir().unwrap();
    let mut r = tiny_recipe(d.path());
    r.training.max_updates = 6;
    r.checkpoint.every_updates = 2;
    r.nan.max_consecutive = 1;
    let opts = RunOptions {
        quiet: true,
        fault_nan_updates: vec![3],
        ..Default::default()
    };
    let s = trainer::train(&r, &opts).unwrap();
    assert_eq!((s.updates, s.nan_skipped), (6, 1));

    let mut r2 = r.clone();
    r2.output_dir = d.path().join("run-nan");
    let opts = RunOptions {
        quiet: true,
        fault_nan_updates: vec![3, 4],
        ..Default::default()
    };
    let err = trainer::train(&r2, &opts).unwrap_err().to_string();
    assert!(
        err.contains("NaN/inf in 2 consecutive updates") && err.contains("update_00000002"),
        "{err}"
    );
    assert!(r2
        .output_dir
        .join("checkpoints/update_00000002/model.safetensors")
        .is_file());
}

#[test]
fn label_smoothed_ce_has_no_kl() {
    let d = tempfile::tempdir().unwrap();
    let mut r = tiny_recipe(d.path());
    r.criterion.kind = CriterionKind::LabelSmoothedCe;
    r.training.max_updates = 5;
    trainer::train(&r, &quiet()).unwrap();
    let recs = train_records(&r.output_dir);
    assert!(recs[0]["kl"].is_null());
    let (loss, ce) = (
        recs[0]["loss"].as_f64().unwrap(),
        recs[0]["ce"].as_f64().unwrap(),
    );
    assert!((loss - ce).abs() < 1e-9 * loss.max(1.0));
}

#[test]
fn bf16_autocast_follows_f32_gradients_and_keeps_f32_weights() {
    use candle_core::DType;
    let d = tempfile::tempdir().unwrap();
    let r = tiny_recipe(d.path());
    let (sess, b, crit) = session_with_batch(&r);
    let eval = rdrop_seq2seq::dropout::Mode::Eval;
    let half = trainer::autocast_model(&sess, DType::BF16).unwrap();
    assert_eq!(half.dtype(), DType::BF16);
    let g32 = trainer::model_loss(&sess.model, crit.as_ref(), &b, eval)
        .unwrap()
        .loss
        .backward()
        .unwrap();
    let g16 = trainer::model_loss(&half, crit.as_ref(), &b, eval)
        .unwrap()
        .loss
        .backward()
        .unwrap();
    // Every f32 variable gets an f32 gradient through the casts, pointing where the f32 one does.
    let vars = sess.varmap.data().lock().unwrap().clone();
    let (mut dot, mut n32, mut n16) = (0f64, 0f64, 0f64);
    for (name, var) in &vars {
        if name == "final_logits_bias" {
            continue;
        }
        let a = g32.get(var.as_tensor()).unwrap();
        let h = g16
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no bf16 gradient for {name}"));
        assert_eq!(h.dtype(), DType::F32, "{name}");
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let h = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip(&h) {
            dot += (*x as f64) * (*y as f64);
            n32 += (*x as f64).powi(2);
            n16 += (*y as f64).powi(2);
        }
    }
    let cosine = dot / (n32.sqrt() * n16.sqrt());
    assert!(cosine > 0.99, "bf16 gradient direction: cosine {cosine}");
    assert!((n16.sqrt() / n32.sqrt() - 1.0).abs() < 0.05);
}

#[test]
fn bf16_autocast_run_trains_and_saves_f32() {
    let d = tempfile::tempdir().unwrap();
    let mut r = tiny_recipe(d.path());
    r.training.precision = rdrop_train::recipe::Precision::Bf16;
    let s = trainer::train(&r, &quiet()).unwrap();
    let recs = train_records(&r.output_dir);
    let first = recs[0]["ce"].as_f64().unwrap();
    let last = recs[recs.len() - 1]["ce"].as_f64().unwrap();
    assert!(
        last < first - 0.5,
        "CE should fall under bf16: {first} -> {last}"
    );
    let bytes = std::fs::read(s.last_dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    }
}
