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
metrics = ["loss"]
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

/// The records of `metrics.jsonl`, all kinds.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect()
}

fn train_records(run: &Path) -> Vec<serde_json::Value> {
    metrics(run)
        .into_iter()
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

/// The dropout-consistency diagnostic against the KL written out by hand on the same doubled pass:
/// log-softmax of both halves, Σ_v p1 (log p1 − log p2) and the reverse, halved, averaged over the
/// non-pad target tokens. Without dropout the two passes are one model: exactly 0.
#[test]
fn dropout_consistency_is_the_mean_symmetric_kl_of_two_train_passes() {
    use candle_core::{DType, Tensor, D};
    let d = tempfile::tempdir().unwrap();
    let mut r = tiny_recipe(d.path());
    r.model.dropout = 0.3;
    let (sess, b, _) = session_with_batch(&r);
    let (pairs, mut stats) =
        rdrop_train::data::read_split(&r.data.train, &r.data, "train").unwrap();
    let ex = trainer::prepare_examples(&sess, &pairs[..8], &mut stats, 60, 3.0, 0).unwrap();
    let got = trainer::dropout_consistency(&sess, &ex, 77).unwrap();

    let rng = rdrop_seq2seq::dropout::DropoutRng::new(77);
    let cat = |t: &Tensor| Tensor::cat(&[t, t], 0).unwrap();
    let logits = sess
        .model
        .forward(
            &cat(&b.src_ids),
            &cat(&b.src_mask),
            &cat(&b.tgt_in),
            rdrop_seq2seq::dropout::Mode::Train(&rng),
        )
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let n = b.labels.dim(0).unwrap();
    let lp1 = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n).unwrap(), D::Minus1).unwrap();
    let lp2 = candle_nn::ops::log_softmax(&logits.narrow(0, n, n).unwrap(), D::Minus1).unwrap();
    let kl = |a: &Tensor, b: &Tensor| {
        (a.exp().unwrap() * (a - b).unwrap())
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
    };
    let per_token = ((kl(&lp1, &lp2) + kl(&lp2, &lp1)).unwrap() * 0.5).unwrap();
    let keep = b
        .labels
        .ne(sess.tokenizer.pad_id())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let total = (per_token * &keep)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let want = total / keep.sum_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(
        want > 1e-5,
        "dropout 0.3 must make the passes differ: {want}"
    );
    assert!(
        (got - want).abs() <= 1e-4 * want,
        "diagnostic {got} vs hand-written KL {want}"
    );

    r.model.dropout = 0.0;
    let (sess, _, _) = session_with_batch(&r);
    assert_eq!(trainer::dropout_consistency(&sess, &ex, 77).unwrap(), 0.0);
}

/// Every number of every metrics record is in the TensorBoard event file (read back with its
/// framing and CRCs checked), and train.log has the terminal's lines with timestamps, appended on
/// resume.
#[test]
fn tensorboard_and_train_log_hold_every_record() {
    let d = tempfile::tempdir().unwrap();
    let mut r = tiny_recipe(d.path());
    r.training.max_updates = 10;
    r.validation.every_updates = 5;
    r.checkpoint.every_updates = 5;
    trainer::train(&r, &quiet()).unwrap();
    let tb: Vec<_> = std::fs::read_dir(r.output_dir.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tb.len(), 1, "{tb:?}");
    let scalars = rdrop_train::tensorboard::read_scalars(&tb[0]).unwrap();
    let metrics = metrics(&r.output_dir);
    let mut expected = 0;
    for rec in &metrics {
        let kind = rec["kind"].as_str().unwrap();
        let step = rec["update"].as_i64().unwrap();
        for (k, v) in rec.as_object().unwrap() {
            let Some(x) = v.as_f64().filter(|_| k != "update") else {
                continue;
            };
            expected += 1;
            let tag = format!("{kind}/{k}");
            assert!(
                scalars
                    .iter()
                    .any(|(t, s, y)| *t == tag && *s == step && *y == x as f32),
                "{tag} at {step} = {x} missing"
            );
        }
    }
    assert!(
        expected > 20 && scalars.len() == expected,
        "{expected} vs {}",
        scalars.len()
    );
    assert!(metrics
        .iter()
        .any(|m| m["kind"] == "valid" && m["consistency_kl"].as_f64().is_some()));
    assert!(metrics
        .iter()
        .all(|m| m["wall_s"].as_f64().is_some_and(|w| w > 0.0)));

    let log = std::fs::read_to_string(r.output_dir.join("train.log")).unwrap();
    assert!(log.lines().next().unwrap().starts_with("[20"), "{log}");
    assert!(
        log.contains("train: ") && log.contains("valid at update 10"),
        "{log}"
    );
    let before = log.lines().count();
    r.training.max_updates = 12;
    trainer::train(
        &r,
        &RunOptions {
            resume: true,
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let log = std::fs::read_to_string(r.output_dir.join("train.log")).unwrap();
    assert!(
        log.lines().count() > before && log.contains("resuming from"),
        "{log}"
    );
}

/// `validation.metrics` are all logged, and `best_by = "loss"` keeps the checkpoint of the lowest
/// validation loss in best/ (a falling metric, unlike BLEU); patience counts that metric too.
#[test]
fn best_by_loss_picks_the_lowest_validation_loss() {
    use rdrop_train::recipe::ValidMetric;
    let d = tempfile::tempdir().unwrap();
    let mut r = tiny_recipe(d.path());
    r.training.max_updates = 12;
    r.validation.every_updates = 3;
    r.validation.metrics = vec![ValidMetric::Bleu, ValidMetric::Chrf, ValidMetric::Loss];
    r.validation.best_by = Some(ValidMetric::Loss);
    let s = trainer::train(&r, &quiet()).unwrap();
    let valid: Vec<serde_json::Value> = metrics(&r.output_dir)
        .into_iter()
        .filter(|v| v["kind"] == "valid")
        .collect();
    assert_eq!(valid.len(), 4);
    assert!(valid
        .iter()
        .all(|v| v["chrf"].as_f64().is_some() && v["bleu"].as_f64().is_some()));
    let best = valid
        .iter()
        .min_by(|a, b| a["loss"].as_f64().partial_cmp(&b["loss"].as_f64()).unwrap())
        .unwrap();
    assert_eq!(s.best_update, best["update"].as_u64());
    assert_eq!(s.best_value, best["loss"].as_f64());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.best_dir.join("trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["update"], best["update"]);
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
