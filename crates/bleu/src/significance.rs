//! Paired significance tests between a baseline and other systems, as sacreBLEU's `--paired-bs`
//! (paired bootstrap resampling, Koehn 2004) and `--paired-ar` (approximate randomization, Riezler &
//! Maxwell 2005), with the same statistics: p-value `(c + 1) / (n + 1)`, 95% interval as half the
//! distance between the `n/40`-th smallest and largest resampled scores.
//!
//! The resamples differ from sacreBLEU's (which come from numpy's generator): sample `s` draws from
//! ChaCha8 stream `s` of the seed, so results are reproducible, parallel, and need no index matrix.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::metric::{Metric, SegmentStats};

/// sacreBLEU's default seed (`SACREBLEU_SEED`).
pub const DEFAULT_SEED: u64 = 12345;

/// One system's result in a paired test.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PairedResult {
    /// The actual corpus score.
    pub score: f64,
    /// p-value against the baseline (`None` for the baseline).
    pub p_value: Option<f64>,
    /// Mean of the bootstrap scores (bootstrap test only).
    pub mean: Option<f64>,
    /// Half-width of the 95% bootstrap interval (bootstrap test only).
    pub ci: Option<f64>,
}

/// sacreBLEU's `estimate_ci`: mean of `scores` and half the span between the `n/40`-th lowest and
/// highest values.
pub fn estimate_ci(scores: &[f64]) -> (f64, f64) {
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let lo = n / 40;
    let hi = n - lo - 1;
    let mean = s.iter().sum::<f64>() / n as f64;
    (mean, 0.5 * (s[hi] - s[lo]))
}

/// sacreBLEU's `_compute_p_value`: `(#{stats > real} + 1) / (n + 1)`.
pub fn p_value(stats: &[f64], real_difference: f64) -> f64 {
    let c = stats.iter().filter(|&&x| x > real_difference).count();
    (c as f64 + 1.0) / (stats.len() as f64 + 1.0)
}

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// The segment indices of bootstrap sample `sample` (with replacement, `n` of `0..n`).
pub fn bootstrap_indices(n: usize, seed: u64, sample: usize) -> Vec<u32> {
    let mut rng = rng_for(seed, sample as u64);
    (0..n).map(|_| rng.gen_range(0..n as u32)).collect()
}

/// Scores of `stats` resampled with each index set produced by `indices(sample)`.
pub fn resampled_scores(
    metric: &dyn Metric,
    stats: &SegmentStats,
    n_samples: usize,
    indices: &(dyn Fn(usize) -> Vec<u32> + Sync),
) -> Vec<f64> {
    (0..n_samples)
        .into_par_iter()
        .map(|s| metric.score(&stats.sum_indexed(&indices(s))))
        .collect()
}

/// Bootstrap mean and 95% interval of one system (sacreBLEU's `--confidence`).
pub fn bootstrap_ci(
    metric: &dyn Metric,
    stats: &SegmentStats,
    n_samples: usize,
    seed: u64,
) -> (f64, f64) {
    let n = stats.len();
    estimate_ci(&resampled_scores(metric, stats, n_samples, &|s| {
        bootstrap_indices(n, seed, s)
    }))
}

/// Paired bootstrap resampling of `system` against `baseline` with explicit index sets, one per sample.
pub fn paired_bootstrap_with(
    metric: &dyn Metric,
    baseline: &SegmentStats,
    system: &SegmentStats,
    n_samples: usize,
    indices: &(dyn Fn(usize) -> Vec<u32> + Sync),
) -> PairedResult {
    let bl_score = metric.score(&baseline.sum());
    let sys_score = metric.score(&system.sum());
    let pairs: Vec<(f64, f64)> = (0..n_samples)
        .into_par_iter()
        .map(|s| {
            let idx = indices(s);
            (
                metric.score(&baseline.sum_indexed(&idx)),
                metric.score(&system.sum_indexed(&idx)),
            )
        })
        .collect();
    let sys_scores: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let (mean, ci) = estimate_ci(&sys_scores);
    let diffs: Vec<f64> = pairs.iter().map(|(b, s)| (s - b).abs()).collect();
    let avg = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
    let centered: Vec<f64> = diffs.iter().map(|d| d - avg).collect();
    PairedResult {
        score: sys_score,
        p_value: Some(p_value(&centered, (bl_score - sys_score).abs())),
        mean: Some(mean),
        ci: Some(ci),
    }
}

/// Paired bootstrap resampling (`--paired-bs`) with `n_samples` seeded resamples.
pub fn paired_bootstrap(
    metric: &dyn Metric,
    baseline: &SegmentStats,
    system: &SegmentStats,
    n_samples: usize,
    seed: u64,
) -> PairedResult {
    let n = baseline.len();
    paired_bootstrap_with(metric, baseline, system, n_samples, &|s| {
        bootstrap_indices(n, seed, s)
    })
}

/// The swap mask of randomization trial `trial`: `true` keeps the baseline's segment in pseudo-system A.
pub fn randomization_mask(n: usize, seed: u64, trial: usize) -> Vec<bool> {
    // Streams above 2^32 keep these draws apart from the bootstrap indices of the same seed.
    let mut rng = rng_for(seed, (1u64 << 32) + trial as u64);
    (0..n).map(|_| rng.gen::<bool>()).collect()
}

/// Approximate randomization with explicit swap masks, one per trial.
pub fn paired_ar_with(
    metric: &dyn Metric,
    baseline: &SegmentStats,
    system: &SegmentStats,
    n_trials: usize,
    masks: &(dyn Fn(usize) -> Vec<bool> + Sync),
) -> PairedResult {
    let bl_score = metric.score(&baseline.sum());
    let sys_score = metric.score(&system.sum());
    let w = baseline.width;
    let diffs: Vec<f64> = (0..n_trials)
        .into_par_iter()
        .map(|t| {
            let mask = masks(t);
            let (mut a, mut b) = (vec![0u64; w], vec![0u64; w]);
            for (i, &keep) in mask.iter().enumerate() {
                let (ra, rb) = if keep {
                    (baseline.row(i), system.row(i))
                } else {
                    (system.row(i), baseline.row(i))
                };
                for k in 0..w {
                    a[k] += ra[k];
                    b[k] += rb[k];
                }
            }
            (metric.score(&a) - metric.score(&b)).abs()
        })
        .collect();
    PairedResult {
        score: sys_score,
        p_value: Some(p_value(&diffs, (bl_score - sys_score).abs())),
        mean: None,
        ci: None,
    }
}

/// Paired approximate randomization (`--paired-ar`) with `n_trials` seeded trials.
pub fn paired_ar(
    metric: &dyn Metric,
    baseline: &SegmentStats,
    system: &SegmentStats,
    n_trials: usize,
    seed: u64,
) -> PairedResult {
    let n = baseline.len();
    paired_ar_with(metric, baseline, system, n_trials, &|t| {
        randomization_mask(n, seed, t)
    })
}
