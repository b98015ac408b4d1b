//! Progress of `translate` and `score` on standard error: a bar on a terminal, plain lines when
//! `RDROP_PROGRESS=plain`, nothing when quiet; advanced by whichever thread finishes a batch.

use std::io::{self, IsTerminal};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown on standard error.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Shown {
    Off,
    /// An indicatif bar (or a spinner when the total is unknown).
    Bar,
    /// `progress: 64/300 sentences` lines, one per update, for logs and tests: a bar draws nothing
    /// when standard error is not a terminal. Asked for with the undocumented
    /// `RDROP_PROGRESS=plain`.
    Plain,
}

impl Shown {
    /// `--quiet` wins; then `RDROP_PROGRESS=plain`; else a bar only on a terminal.
    pub(crate) fn from_env(quiet: bool) -> Shown {
        if quiet {
            Shown::Off
        } else if std::env::var_os("RDROP_PROGRESS").is_some_and(|v| v == "plain") {
            Shown::Plain
        } else if io::stderr().is_terminal() {
            Shown::Bar
        } else {
            Shown::Off
        }
    }
}

/// Sentences (or pairs) done out of a total, with items/s and tokens/s, advanced by whichever
/// thread finishes a batch.
pub(crate) struct Progress {
    bar: indicatif::ProgressBar,
    shown: Shown,
    total: Option<u64>,
    unit: &'static str,
    per: &'static str,
    /// Items and tokens done. Plain lines are printed under this lock so that batches finishing on
    /// two threads at once still print their counts in increasing order.
    done: Mutex<(u64, u64)>,
    start: Instant,
}

impl Progress {
    /// A bar over `total` items, or a spinner with a running count when the total is unknown;
    /// `unit` names the items, `per` their rate (`sentences`, `sent/s`).
    pub(crate) fn new(
        shown: Shown,
        total: Option<u64>,
        unit: &'static str,
        per: &'static str,
    ) -> Progress {
        let bar = match (shown, total) {
            (Shown::Bar, Some(n)) => {
                let pb = indicatif::ProgressBar::new(n);
                pb.set_style(
                    indicatif::ProgressStyle::with_template(&format!(
                        "{{wide_bar}} {{human_pos}}/{{human_len}} {unit}  {{msg}}  {{elapsed_precise}} < {{eta_precise}}"
                    ))
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                pb
            }
            (Shown::Bar, None) => {
                let pb = indicatif::ProgressBar::new_spinner();
                pb.set_style(
                    indicatif::ProgressStyle::with_template(&format!(
                        "{{spinner}} {{human_pos}} {unit}  {{msg}}  {{elapsed_precise}}"
                    ))
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                pb
            }
            _ => indicatif::ProgressBar::hidden(),
        };
        if shown == Shown::Bar {
            bar.set_message(rates(0, 0, 0.0, per));
            // Elapsed time and ETA keep moving during a long batch.
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Progress {
            bar,
            shown,
            total,
            unit,
            per,
            done: Mutex::new((0, 0)),
            start: Instant::now(),
        }
    }

    /// Records `items` finished items that produced `tokens` tokens.
    pub(crate) fn add(&self, items: usize, tokens: usize) {
        if self.shown == Shown::Off || items == 0 {
            return;
        }
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.0 += items as u64;
        done.1 += tokens as u64;
        let msg = rates(done.0, done.1, self.start.elapsed().as_secs_f64(), self.per);
        match self.shown {
            Shown::Bar => {
                self.bar.set_message(msg);
                self.bar.inc(items as u64);
            }
            Shown::Plain => match self.total {
                Some(t) => eprintln!("progress: {}/{t} {}, {msg}", done.0, self.unit),
                None => eprintln!("progress: {} {}, {msg}", done.0, self.unit),
            },
            Shown::Off => {}
        }
    }

    /// Runs `f` with the bar cleared from the terminal, for other output to the same screen.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Leaves the bar drawn at its final count and rates.
    pub(crate) fn finish(&self) {
        if self.shown == Shown::Bar {
            self.bar.finish();
        }
    }
}

fn rates(items: u64, tokens: u64, secs: f64, per: &str) -> String {
    // Rates over the whole run so far: they settle instead of swinging from batch to batch.
    let secs = secs.max(1e-3);
    format!(
        "{:.1} {per}, {:.0} tok/s",
        items as f64 / secs,
        tokens as f64 / secs
    )
}
