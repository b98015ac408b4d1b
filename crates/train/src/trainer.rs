//! The training loop: a [`Trainer`] holds a run and takes its named steps (one update,
//! validation, a checkpoint, resuming); [`train`] runs them until the budget, patience or a signal.

use crate::checkpoint::{self, RunLock, TrainerState};
use crate::data;
use crate::error::{Error, Result};
use crate::optim::{self, AdamW, Grads};
use crate::prepare::{self, RunData};
use crate::recipe::{CriterionKind, Precision, Recipe, ValidMetric};
use crate::runlog::{hms, Clock, Console, PhaseClock, RunLog, Window};
use candle_core::DType;
use indicatif::{ProgressBar, ProgressStyle};
use rdrop_loss::{Criterion, LossSums};
use rdrop_seq2seq::dropout::{DropoutRng, Mode};
use std::path::{Path, PathBuf};
use std::time::Instant;

// The pieces a run is made of keep their old paths here, where callers found them.
pub use crate::run::{RunOptions, Summary};
pub use crate::session::{
    autocast_model, batch_loss, build_session, forward_logits, frozen_model, make_criterion,
    make_device, model_loss, prepare_examples, save_checkpoint, scratch_config, Session,
};
pub use crate::validate::{
    corpus_bleu, dropout_consistency, translate, translate_ids, validate, Validation,
};

/// Runs (or resumes) the training job a recipe describes.
pub fn train(r: &Recipe, opts: &RunOptions) -> Result<Summary> {
    let mut t = Trainer::new(r, opts)?;
    while !t.budget_spent() {
        let epoch_ended = match t.step()? {
            Step::Updated { epoch_ended } => epoch_ended,
            Step::Skipped => continue,
            Step::EpochLimit => break,
        };
        let last = t.is_last_update();
        if t.wants_validation(epoch_ended, last) {
            t.validate()?;
        }
        if t.wants_checkpoint(epoch_ended, last) {
            t.save()?;
        }
        if t.stopped_early {
            break;
        }
        t.stop_if_signalled()?;
    }
    t.finish()
}

/// What one [`Trainer::step`] did.
pub enum Step {
    /// The optimiser stepped; `epoch_ended` if a new epoch began during the update.
    Updated {
        /// A new epoch began during the update.
        epoch_ended: bool,
    },
    /// The loss was NaN/inf: nothing was stepped (within the recipe's `nan` limits).
    Skipped,
    /// The epoch limit was reached before the update had a batch.
    EpochLimit,
}

/// A training run in progress: the session, optimiser, data, position and bookkeeping.
pub struct Trainer<'a> {
    r: &'a Recipe,
    opts: &'a RunOptions,
    s: Session,
    criterion: Box<dyn Criterion>,
    opt: AdamW,
    state: TrainerState,
    dropout: DropoutRng,
    data: RunData,
    /// This epoch's batches (example indices).
    plan: Vec<Vec<usize>>,
    out: Console,
    best_by: ValidMetric,
    /// The update count the run aims at (for progress and ETA).
    total: u64,
    clock: Clock,
    window: Window,
    last_dir: PathBuf,
    saved_at: u64,
    validated_at: u64,
    last_valid: Option<Validation>,
    /// Patience ran out at the last validation.
    pub stopped_early: bool,
    _lock: RunLock,
}

impl<'a> Trainer<'a> {
    /// Locks the output directory, builds the session (fresh, pretrained or from the checkpoint
    /// `--resume` picks), prepares the data and the optimiser, and restores a resumed run.
    pub fn new(r: &'a Recipe, opts: &'a RunOptions) -> Result<Self> {
        if r.training.threads > 0 {
            // candle's CPU kernels read this when they first build their thread pool.
            std::env::set_var("RAYON_NUM_THREADS", r.training.threads.to_string());
        }
        let dir = &r.output_dir;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let lock = checkpoint::lock_run_dir(dir)?;
        // Holding the lock, nothing else writes here: temporaries are a killed run's (e.g. the
        // old best/ swapped out by a save that was killed before deleting it).
        checkpoint::remove_temporaries(dir)?;
        // Errors reach train.log through the caller's message only; everything printed goes
        // there too.
        let mut out = Console {
            runlog: RunLog::open(dir)?,
            pb: ProgressBar::hidden(),
            quiet: opts.quiet,
        };
        let resume_from = crate::resume::choose(r, opts, &mut out)?;

        let splits = prepare::read_splits(r)?;
        let s = crate::session::build_session(r, &splits.0, resume_from.as_deref())?;
        for w in &s.warnings {
            out.say(w);
        }
        let data = prepare::prepare(&s, splits)?;
        out.say(&format!("train: {}", data.train_stats));
        out.say(&format!("valid: {}", data.valid_stats));
        if data.train.is_empty() {
            return Err(Error::NoData {
                what: "data.train".into(),
                stats: data.train_stats.to_string(),
            });
        }
        let criterion = make_criterion(r, s.tokenizer.pad_id())?;
        let (opt, n_params) = crate::session::make_optimizer(&s)?;
        let mut t = Trainer {
            r,
            opts,
            criterion,
            opt,
            state: TrainerState {
                shuffle_seed: r.seed,
                ..Default::default()
            },
            dropout: DropoutRng::new(r.seed.wrapping_add(0x0d0d)),
            data,
            plan: Vec::new(),
            out,
            best_by: r.validation.best_metric(),
            total: 0,
            clock: Clock {
                started: Instant::now(),
                wall_before: 0.0,
                first_update: 0,
            },
            window: Window::start(),
            last_dir: PathBuf::new(),
            saved_at: 0,
            validated_at: u64::MAX,
            last_valid: None,
            stopped_early: false,
            _lock: lock,
            s,
        };
        let fingerprint = crate::resume::data_fingerprint(&t.data.train);
        if let Some(dir) = &resume_from {
            t.resume(dir, &fingerprint)?;
        }
        t.state.data_fingerprint = Some(fingerprint);
        // Checkpoints from before best_by kept only the best BLEU.
        if t.state.best_value.is_none() && t.best_by == ValidMetric::Bleu {
            t.state.best_value = t.state.best_bleu;
        }
        let line = crate::session::describe(&t.s, n_params);
        t.out.say(&line);
        t.out.runlog.open_metrics(
            &r.output_dir,
            resume_from.as_ref().map(|_| t.state.update),
            r.training.tensorboard,
        )?;
        t.plan = t.plan_for(t.state.epoch);
        t.total = if r.training.max_updates > 0 {
            r.training.max_updates
        } else {
            r.training.max_epochs * (t.plan.len() as u64).div_ceil(r.batching.update_freq as u64)
        };
        if opts.progress && !opts.quiet {
            t.out.pb = ProgressBar::new(t.total);
        }
        t.out.pb.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        t.out.pb.set_position(t.state.update);
        t.clock = Clock {
            started: Instant::now(),
            wall_before: t.state.wall_seconds,
            first_update: t.state.update,
        };
        t.window = Window::start();
        t.saved_at = t.state.update;
        Ok(t)
    }

    /// Continues from checkpoint `dir`: position, optimiser moments and the dropout stream, so
    /// the run goes on exactly as if it had not stopped. The training data must be unchanged.
    pub fn resume(&mut self, dir: &Path, fingerprint: &str) -> Result<()> {
        self.state = checkpoint::read_state(dir)?;
        if let Some(then) = self
            .state
            .data_fingerprint
            .as_ref()
            .filter(|&t| t != fingerprint)
        {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "--resume: the training data changed since this checkpoint (then {then}, now {fingerprint}): restore it or train into a new output_dir"
                ),
            });
        }
        self.opt.load(&dir.join(checkpoint::OPTIMIZER_FILE))?;
        let rng = self
            .state
            .dropout_rng
            .clone()
            .ok_or_else(|| Error::Checkpoint {
                path: dir.join(checkpoint::STATE_FILE),
                message: "dropout_rng is missing: the dropout stream cannot resume".into(),
            })?;
        self.dropout = DropoutRng::from_state(rng);
        self.last_dir = dir.to_path_buf();
        self.validated_at = self.state.update;
        let msg = format!(
            "resuming from {} (update {}, epoch {})",
            dir.display(),
            self.state.update,
            self.state.epoch + 1
        );
        self.out.say(&msg);
        Ok(())
    }

    fn plan_for(&self, epoch: u64) -> Vec<Vec<usize>> {
        let r = self.r;
        data::epoch_batches(
            &self.data.train,
            r.batching.max_tokens,
            self.state.shuffle_seed,
            epoch,
        )
    }

    fn epochs_done(&self) -> bool {
        self.r.training.max_epochs > 0 && self.state.epoch >= self.r.training.max_epochs
    }

    fn updates_done(&self) -> bool {
        self.r.training.max_updates > 0 && self.state.update >= self.r.training.max_updates
    }

    /// The update or epoch budget is used up.
    pub fn budget_spent(&self) -> bool {
        self.updates_done() || self.epochs_done()
    }

    /// The update just taken is the run's last (by budget).
    pub fn is_last_update(&self) -> bool {
        let r = self.r;
        self.updates_done()
            || (r.training.max_epochs > 0
                && self.state.epoch + 1 >= r.training.max_epochs
                && self.state.next_batch >= self.plan.len())
    }

    /// One update: `update_freq` batches forward and backward (gradients summed), then clipping,
    /// the learning rate and an optimiser step, normalised by the batches' target tokens.
    pub fn step(&mut self) -> Result<Step> {
        let r = self.r;
        let autocast = match r.training.precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(autocast_model(&self.s, DType::BF16)?),
        };
        let model = autocast.as_ref().unwrap_or(&self.s.model);
        let (pad, start) = (self.s.tokenizer.pad_id(), self.s.cfg.decoder_start_token_id);
        let mut acc: Option<Grads> = None;
        let mut sums = LossSums::default();
        let mut nonfinite = false;
        let mut epoch_ended = false;
        for _ in 0..r.batching.update_freq {
            if self.state.next_batch >= self.plan.len() {
                self.state.epoch += 1;
                self.state.next_batch = 0;
                epoch_ended = true;
                if self.epochs_done() {
                    break;
                }
                self.plan = self.plan_for(self.state.epoch);
            }
            let mut clock = PhaseClock::start(self.opts.profile_phases, &self.s.device)?;
            let idx = &self.plan[self.state.next_batch];
            let b = data::make_batch(&self.data.train, idx, pad, start, &self.s.device)?;
            self.state.next_batch += 1;
            self.dropout.seed_device(&self.s.device)?;
            clock.lap(&mut self.window.phases.batch)?;
            let criterion = self.criterion.as_ref();
            let logits = forward_logits(model, criterion, &b, Mode::Train(&self.dropout))?;
            clock.lap(&mut self.window.phases.forward)?;
            let parts = criterion.loss(&logits, &b.labels)?;
            let batch = LossSums::of(&parts)?;
            clock.lap(&mut self.window.phases.loss)?;
            let attempt = self.state.update + self.state.nan_total + 1;
            if !batch.is_finite() || self.opts.fault_nan_updates.contains(&attempt) {
                nonfinite = true;
                continue;
            }
            let grads = parts.loss_sum.backward()?;
            AdamW::accumulate(&mut acc, self.opt.grads_from(&grads))?;
            sums.add(&batch);
            clock.lap(&mut self.window.phases.backward)?;
        }
        if epoch_ended && self.epochs_done() && acc.is_none() && !nonfinite {
            return Ok(Step::EpochLimit);
        }
        let Some(mut grads) = acc.filter(|_| !nonfinite) else {
            self.skip_update()?;
            return Ok(Step::Skipped);
        };
        self.state.nan_consecutive = 0;
        let mut clock = PhaseClock::start(self.opts.profile_phases, &self.s.device)?;
        optim::scale_grads(&mut grads, 1.0 / sums.ntokens.max(1) as f64)?;
        let gnorm = optim::clip_grad_norm(&mut grads, r.optimizer.clip_norm)?;
        let lr = optim::learning_rate(
            &r.schedule,
            r.optimizer.lr,
            r.training.max_updates,
            self.state.update + 1,
        );
        self.opt.step(&grads, lr)?;
        clock.lap(&mut self.window.phases.optimizer)?;
        self.state.update += 1;
        self.state.tokens_seen += sums.ntokens;
        self.log_update(&sums, lr, gnorm);
        Ok(Step::Updated { epoch_ended })
    }

    /// A NaN/inf update: counted, logged, and an error once the recipe's limits are passed.
    fn skip_update(&mut self) -> Result<()> {
        let (r, st) = (self.r, &mut self.state);
        st.nan_total += 1;
        st.nan_consecutive += 1;
        let msg = format!(
            "update {}: loss is NaN/inf, update skipped ({} in a row, {} in total)",
            st.update + 1,
            st.nan_consecutive,
            st.nan_total
        );
        let rec =
            serde_json::json!({"kind": "nan_skip", "update": st.update, "nan_total": st.nan_total});
        let over = st.nan_consecutive > r.nan.max_consecutive || st.nan_total > r.nan.max_total;
        self.out.say(&msg);
        self.out.runlog.record(&rec);
        if !over {
            return Ok(());
        }
        self.out.pb.finish_and_clear();
        let kept = if self.last_dir.as_os_str().is_empty() {
            "no checkpoint was written yet".to_string()
        } else {
            format!("the last good checkpoint is {}", self.last_dir.display())
        };
        let st = &self.state;
        Err(Error::NonFinite {
            message: format!(
                "loss was NaN/inf in {} consecutive updates ({} in total; limits nan.max_consecutive = {}, nan.max_total = {}); stopping at update {}: {kept}",
                st.nan_consecutive, st.nan_total, r.nan.max_consecutive, r.nan.max_total, st.update
            ),
        })
    }

    /// The progress bar after every update; a log line and a metrics record every `log_every`.
    fn log_update(&mut self, u: &LossSums, lr: f64, gnorm: f64) {
        let r = self.r;
        let rdrop = r.criterion.kind == CriterionKind::Rdrop;
        let kl_text = |k: Option<f64>| match k {
            Some(k) if rdrop => format!(" kl {k:.4}"),
            None if rdrop => " kl 0.0000".to_string(),
            _ => String::new(),
        };
        self.window.sums.add(u);
        self.window.updates += 1;
        let m = u.means();
        let secs = self.window.started.elapsed().as_secs_f64().max(1e-9);
        self.out.pb.set_position(self.state.update);
        self.out.pb.set_message(format!(
            "{:.0} tok/s loss {:.3} ce {:.3}{} lr {:.2e}",
            self.window.sums.ntokens as f64 / secs,
            m.loss,
            m.ce,
            kl_text(m.kl),
            lr
        ));
        if r.training.log_every == 0 || !self.state.update.is_multiple_of(r.training.log_every) {
            return;
        }
        let w = self.window.sums.means();
        let tok_s = w.ntokens.max(1) as f64 / secs;
        let mut rec = serde_json::json!({
            "kind": "train", "update": self.state.update, "epoch": self.state.epoch + 1,
            "loss": w.loss, "ce": w.ce, "nll": w.nll,
            "kl": if rdrop { Some(w.kl.unwrap_or(0.0)) } else { None },
            "lr": lr, "grad_norm": gnorm, "tokens_per_s": tok_s,
            "updates_in_window": self.window.updates, "tokens_seen": self.state.tokens_seen,
            "wall_s": self.clock.wall(),
        });
        // From this process's own pace (validation time included), so a resumed run's ETA is honest.
        let done_here = self
            .state
            .update
            .saturating_sub(self.clock.first_update)
            .max(1);
        let eta = self.clock.started.elapsed().as_secs_f64() / done_here as f64
            * self.total.saturating_sub(self.state.update) as f64;
        let msg = format!(
            "update {:>6} epoch {:>3} | loss {:.4} ce {:.4}{} | lr {:.3e} | gnorm {:.3} | {:.0} tok/s | eta {} to update {}",
            self.state.update, self.state.epoch + 1, w.loss, w.ce, kl_text(w.kl),
            lr, gnorm, tok_s, hms(eta), self.total
        );
        let msg = if self.opts.profile_phases {
            let ms = self.window.phases.per_update_ms(self.window.updates);
            rec["phase_ms"] = ms.to_json();
            format!("{msg} | ms/update {ms}")
        } else {
            msg
        };
        self.out.say(&msg);
        self.out.runlog.record(&rec);
        self.window = Window::start();
    }

    /// Validation is due: every `validation.every_updates`, at epoch ends if asked, and last.
    pub fn wants_validation(&self, epoch_ended: bool, last: bool) -> bool {
        let v = &self.r.validation;
        let due = (v.every_updates > 0 && self.state.update.is_multiple_of(v.every_updates))
            || (epoch_ended && v.every_epoch)
            || last;
        due && self.validated_at != self.state.update
    }

    /// Validates, logs and records the result, redraws the curves, keeps `best/` and counts
    /// patience.
    pub fn validate(&mut self) -> Result<()> {
        let (r, update) = (self.r, self.state.update);
        self.validated_at = update;
        let t0 = Instant::now();
        let d = &self.data;
        let mut v = validate(&self.s, &d.valid, &d.valid_refs, &r.validation.metrics)?;
        if r.validation.consistency {
            let seed = r.seed ^ update.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            v.consistency_kl = Some(dropout_consistency(&self.s, &d.valid, seed)?);
        }
        let improved = self.note_best(&v);
        let msg = v.line(update, improved, t0.elapsed().as_secs_f64());
        let rec = v.record(&self.state, self.best_by, self.clock.wall());
        self.out.say(&msg);
        self.out.runlog.record(&rec);
        // The run's own curves, redrawn at every validation; a failure to draw is not a reason
        // to stop training.
        let dir = &r.output_dir;
        let png = dir.join("curves.png");
        if let Err(e) =
            crate::plot::plot_paths(std::slice::from_ref(dir), crate::plot::XAxis::Updates, &png)
        {
            self.out.say(&format!("warning: {e}"));
        }
        if improved {
            self.save_to(&dir.join("best"))?;
        }
        self.last_valid = Some(v);
        let st = &self.state;
        if r.validation.patience > 0 && st.bad_validations >= r.validation.patience {
            let msg = format!(
                "early stop: no {} improvement in {} validations (best {:.4} at update {})",
                self.best_by.name(),
                st.bad_validations,
                st.best_value.unwrap_or(0.0),
                st.best_update.unwrap_or(0)
            );
            self.out.say(&msg);
            self.stopped_early = true;
        }
        Ok(())
    }

    /// Updates the best value and the patience count; true when `v` is a new best.
    fn note_best(&mut self, v: &Validation) -> bool {
        let value = v.metric(self.best_by);
        let st = &mut self.state;
        let improved = match (value, st.best_value) {
            (Some(x), Some(best)) if self.best_by.higher_is_better() => x > best,
            (Some(x), Some(best)) => x < best,
            (Some(_), None) => true,
            _ => false,
        };
        if improved {
            st.best_value = value;
            st.best_bleu = v.bleu;
            st.best_update = Some(st.update);
            st.bad_validations = 0;
        } else if value.is_some() {
            st.bad_validations += 1;
        }
        improved
    }

    /// A periodic checkpoint is due: every `checkpoint.every_updates` (else at epoch ends), last,
    /// and when patience ran out.
    pub fn wants_checkpoint(&self, epoch_ended: bool, last: bool) -> bool {
        let every = self.r.checkpoint.every_updates;
        let due = (every > 0 && self.state.update.is_multiple_of(every))
            || (epoch_ended && every == 0)
            || last
            || self.stopped_early;
        due && self.saved_at != self.state.update
    }

    /// Saves the state after the current update to `dest`, with the dropout stream's position
    /// and the wall time so far.
    fn save_to(&mut self, dest: &Path) -> Result<()> {
        self.state.wall_seconds = self.clock.wall();
        self.state.dropout_rng = Some(self.dropout.state());
        save_checkpoint(&self.s, &self.opt, &self.state, dest)
    }

    /// The periodic checkpoint after the current update (older ones pruned beyond
    /// `checkpoint.keep_last`).
    pub fn save(&mut self) -> Result<()> {
        let ck_dir = self.r.output_dir.join("checkpoints");
        let dest = ck_dir.join(checkpoint::update_dir_name(self.state.update));
        self.save_to(&dest)?;
        checkpoint::prune(&ck_dir, self.r.checkpoint.keep_last)?;
        self.saved_at = self.state.update;
        self.last_dir = dest;
        Ok(())
    }

    /// After a stop signal: saves (unless this update is saved) and returns
    /// [`Error::Interrupted`].
    pub fn stop_if_signalled(&mut self) -> Result<()> {
        let signal = self
            .opts
            .stop
            .as_ref()
            .map_or(0, |f| f.load(std::sync::atomic::Ordering::SeqCst));
        if signal == 0 {
            return Ok(());
        }
        if self.saved_at != self.state.update {
            self.save()?;
        }
        self.out.pb.finish_and_clear();
        Err(Error::Interrupted {
            signal: signal_name(signal),
            update: self.state.update,
            checkpoint: self.last_dir.clone(),
        })
    }

    /// Saves the final state if the loop ended between checkpoints, and reports.
    pub fn finish(mut self) -> Result<Summary> {
        // Epoch limits can end the loop between updates: make sure the final state is on disk.
        if self.saved_at != self.state.update || self.last_dir.as_os_str().is_empty() {
            self.save()?;
        }
        self.out.pb.finish_and_clear();
        let best = checkpoint::complete_dir(&self.r.output_dir.join("best"));
        let st = &self.state;
        Ok(Summary {
            updates: st.update,
            epochs: st.epoch,
            best_bleu: st.best_bleu,
            best_by: self.best_by,
            best_value: st.best_value,
            best_update: st.best_update,
            best_dir: best.unwrap_or_else(|| self.last_dir.clone()),
            last_dir: self.last_dir,
            train_stats: self.data.train_stats,
            valid_stats: self.data.valid_stats,
            nan_skipped: st.nan_total,
            stopped_early: self.stopped_early,
            last_valid: self.last_valid,
        })
    }
}

/// The name of a stop signal for messages.
fn signal_name(n: usize) -> String {
    match n {
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}
