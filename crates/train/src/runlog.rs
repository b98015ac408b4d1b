//! What a run leaves to read besides checkpoints: `metrics.jsonl` (one JSON record per log or
//! validation), `train.log` (every line the terminal shows, timestamped, appended across resumes)
//! and TensorBoard event files under `tb/` (every numeric field of every record as a scalar).

use crate::error::{Error, Result};
use crate::tensorboard::EventWriter;
use indicatif::ProgressBar;
use rdrop_loss::LossSums;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// `YYYY-MM-DD HH:MM:SS` (UTC) for Unix seconds, without a date library (Hinnant's civil_from_days).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The run's logs. Writing them is advisory: a full disk must not kill training here (the next
/// checkpoint save reports it), so write errors are dropped.
pub struct RunLog {
    text: Option<std::fs::File>,
    metrics: Option<std::fs::File>,
    tb: Option<EventWriter>,
}

impl RunLog {
    /// Opens `train.log` for appending (a resumed run continues the same file).
    pub fn open(out: &Path) -> Result<Self> {
        let path = out.join("train.log");
        let text = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::Io { path, source })?;
        Ok(RunLog {
            text: Some(text),
            metrics: None,
            tb: None,
        })
    }

    /// Opens `metrics.jsonl` (on resume, records after the resumed update are dropped: they belong
    /// to the interrupted run's lost tail and will be produced again) and, with `tensorboard`, a new
    /// event file in `tb/`.
    pub fn open_metrics(
        &mut self,
        out: &Path,
        resume_update: Option<u64>,
        tensorboard: bool,
    ) -> Result<()> {
        let path = out.join("metrics.jsonl");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let keep = match (resume_update, std::fs::read_to_string(&path)) {
            (Some(u), Ok(text)) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("update").and_then(|x| x.as_u64()))
                        .is_some_and(|x| x <= u)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            _ => String::new(),
        };
        std::fs::write(&path, keep).map_err(io)?;
        self.metrics = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io)?,
        );
        if tensorboard {
            let dir = out.join("tb");
            self.tb =
                Some(EventWriter::create(&dir).map_err(|source| Error::Io { path: dir, source })?);
        }
        Ok(())
    }

    /// Appends a line to `train.log` with the time.
    pub fn line(&mut self, msg: &str) {
        if let Some(f) = &mut self.text {
            let _ = writeln!(
                f,
                "[{}] {msg}",
                utc_timestamp(crate::tensorboard::now() as u64)
            );
        }
    }

    /// Appends a record to `metrics.jsonl` and its numbers to TensorBoard as `<kind>/<key>` at
    /// step `update`.
    pub fn record(&mut self, v: &serde_json::Value) {
        if let Some(f) = &mut self.metrics {
            let _ = writeln!(f, "{v}");
        }
        let (Some(tb), Some(obj)) = (&mut self.tb, v.as_object()) else {
            return;
        };
        let kind = obj.get("kind").and_then(|k| k.as_str()).unwrap_or("run");
        let step = obj.get("update").and_then(|u| u.as_u64()).unwrap_or(0);
        let scalars: Vec<(String, f32)> = obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "kind" | "update"))
            .filter_map(|(k, x)| Some((format!("{kind}/{k}"), x.as_f64()? as f32)))
            .collect();
        if !scalars.is_empty() {
            let _ = tb.scalars(step, &scalars);
        }
    }
}

/// Lines for the user and train.log, through the progress bar while one is drawn.
pub struct Console {
    /// The run's train.log and metrics.
    pub runlog: RunLog,
    /// Hidden unless a bar is drawn.
    pub pb: ProgressBar,
    /// Print nothing (train.log still gets every line).
    pub quiet: bool,
}

impl Console {
    /// Writes a line to train.log and, unless quiet, to the terminal.
    pub fn say(&mut self, msg: &str) {
        self.runlog.line(msg);
        if self.quiet {
        } else if self.pb.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.pb.println(msg);
        }
    }
}

/// Wall time continues across resumes, so curves against time stay comparable between runs.
pub struct Clock {
    /// When this process started training.
    pub started: Instant,
    /// Seconds trained before (by the runs this one resumes).
    pub wall_before: f64,
    /// The update this process started at.
    pub first_update: u64,
}

impl Clock {
    /// Seconds of training so far, resumed runs included.
    pub fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }
}

/// The logging window: sums since the last periodic log line.
pub struct Window {
    /// The updates' loss sums.
    pub sums: LossSums,
    /// Updates in the window.
    pub updates: u64,
    /// When the window opened.
    pub started: Instant,
    /// Seconds spent in each phase of the window's updates (with `--profile-phases`).
    pub phases: Phases,
}

impl Window {
    /// An empty window opening now.
    pub fn start() -> Self {
        Self {
            sums: LossSums::default(),
            updates: 0,
            started: Instant::now(),
            phases: Phases::default(),
        }
    }
}

/// Time per phase of an update: making the batch (and seeding dropout), the model's forward pass,
/// the criterion, backward (with gradient accumulation) and the optimiser (scaling, clipping, step).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    /// Making the batch and seeding dropout. Every field is seconds summed over a window, or ms
    /// per update after [`Phases::per_update_ms`].
    pub batch: f64,
    /// The model's forward pass (both copies with R-Drop).
    pub forward: f64,
    /// The criterion on the logits.
    pub loss: f64,
    /// Backward and adding the gradients into the accumulated ones.
    pub backward: f64,
    /// Gradient scaling and clipping, the learning rate and the AdamW step.
    pub optimizer: f64,
}

impl Phases {
    fn fields(&self) -> [(&'static str, f64); 5] {
        [
            ("batch", self.batch),
            ("forward", self.forward),
            ("loss", self.loss),
            ("backward", self.backward),
            ("optimizer", self.optimizer),
        ]
    }

    /// Milliseconds per update over `updates` updates.
    pub fn per_update_ms(&self, updates: u64) -> Phases {
        let k = 1e3 / updates.max(1) as f64;
        Phases {
            batch: self.batch * k,
            forward: self.forward * k,
            loss: self.loss * k,
            backward: self.backward * k,
            optimizer: self.optimizer * k,
        }
    }

    /// `{"batch": .., "forward": .., ...}` for a metrics record.
    pub fn to_json(&self) -> serde_json::Value {
        self.fields()
            .iter()
            .map(|&(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .fields()
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

/// Times consecutive phases, waiting for the device before each reading so a phase's queued
/// kernels count in it, not in the next. Off, it reads no clock and never waits.
pub struct PhaseClock<'a> {
    device: &'a candle_core::Device,
    last: Option<Instant>,
}

impl<'a> PhaseClock<'a> {
    /// Starts timing (after the device has finished earlier work) when `on`.
    pub fn start(on: bool, device: &'a candle_core::Device) -> Result<Self> {
        if on {
            device.synchronize()?;
        }
        Ok(Self {
            device,
            last: on.then(Instant::now),
        })
    }

    /// Adds the time since the last reading to `into`.
    pub fn lap(&mut self, into: &mut f64) -> Result<()> {
        if let Some(last) = self.last {
            self.device.synchronize()?;
            let now = Instant::now();
            *into += (now - last).as_secs_f64();
            self.last = Some(now);
        }
        Ok(())
    }
}

/// `H:MM:SS` for a duration in seconds.
pub fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_dates() {
        // `date -u -d @SECS '+%F %T'` for each.
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_timestamp(1_796_161_599), "2026-12-01 21:46:39");
    }
}
