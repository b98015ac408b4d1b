//! AdamW with decoupled weight decay and saveable moments, learning-rate schedules, global-norm
//! gradient clipping and gradient accumulation.
//!
//! candle-nn's AdamW decays every variable and cannot save its moments, so exact resume needs this one.

mod fused;

use crate::error::{Error, Result};
use crate::recipe::{OptimizerSection, ScheduleKind, ScheduleSection};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// True for parameters that get no weight decay: biases and layer-norm weights (as in fairseq's and
/// transformers' usual "no_decay" groups).
pub fn no_decay(name: &str) -> bool {
    name.ends_with(".bias")
        || name.ends_with("_bias")
        || name.contains("layer_norm")
        || name.contains("layernorm")
        || name.contains("norm.weight")
}

/// One trainable parameter and its moments.
struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// Gradients of one update, aligned with [`AdamW::names`] (None: the parameter got no gradient).
#[derive(Clone)]
pub struct Grads(pub Vec<Option<Tensor>>);

/// AdamW exactly like `torch.optim.AdamW` (bias correction, eps added after the sqrt of the
/// corrected second moment), weight decay skipped for [`no_decay`] names.
pub struct AdamW {
    params: Vec<Param>,
    /// Updates taken so far (the `t` of the bias correction).
    pub step: u64,
    cfg: OptimizerSection,
}

impl AdamW {
    /// Optimises every variable of `vars` (sorted by name, so the order is reproducible).
    pub fn new(vars: &HashMap<String, Var>, cfg: &OptimizerSection) -> Result<Self> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut params = Vec::with_capacity(names.len());
        for name in names {
            let var = vars[name].clone();
            // Two allocations: the fused update writes each moment in place.
            params.push(Param {
                name: name.clone(),
                decay: !no_decay(name),
                m: var.as_tensor().zeros_like()?,
                v: var.as_tensor().zeros_like()?,
                var,
            });
        }
        Ok(AdamW {
            params,
            step: 0,
            cfg: cfg.clone(),
        })
    }

    /// Parameter names in optimiser order.
    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// Which parameters are decayed (name, decayed).
    pub fn decay_flags(&self) -> Vec<(&str, bool)> {
        self.params
            .iter()
            .map(|p| (p.name.as_str(), p.decay))
            .collect()
    }

    /// Pulls this update's gradients out of a backward pass.
    pub fn grads_from(&self, store: &GradStore) -> Grads {
        Grads(
            self.params
                .iter()
                .map(|p| store.get(p.var.as_tensor()).cloned())
                .collect(),
        )
    }

    /// Adds `other` into `acc` (gradient accumulation over `update_freq` batches).
    pub fn accumulate(acc: &mut Option<Grads>, other: Grads) -> Result<()> {
        match acc {
            None => *acc = Some(other),
            Some(a) => {
                for (x, y) in a.0.iter_mut().zip(other.0) {
                    *x = match (x.take(), y) {
                        (Some(x), Some(y)) => Some((x + y)?),
                        (x, y) => x.or(y),
                    };
                }
            }
        }
        Ok(())
    }

    /// One AdamW update with learning rate `lr`: in place by the fused passes (`fused.rs`) for f32
    /// on the CPU or CUDA, else from composed tensor ops (the same f32 operations in the same order).
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for (p, g) in self.params.iter_mut().zip(&grads.0) {
            let Some(g) = g else { continue };
            let g = g.to_dtype(p.m.dtype())?;
            let s = fused::Step {
                beta1: b1,
                beta2: b2,
                decay: if p.decay && self.cfg.weight_decay != 0.0 {
                    1.0 - lr * self.cfg.weight_decay
                } else {
                    1.0
                },
                inv_bc2_sqrt: 1.0 / bc2_sqrt,
                eps: self.cfg.eps,
                step: lr / bc1,
            };
            if !fused::update(p.var.as_tensor(), &p.m, &p.v, &g, s)? {
                composed_update(p, &g, s)?;
            }
        }
        Ok(())
    }

    /// Writes moments and step as safetensors (`m.<name>`, `v.<name>`, `step`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for p in &self.params {
            map.insert(format!("m.{}", p.name), p.m.clone());
            map.insert(format!("v.{}", p.name), p.v.clone());
        }
        map.insert(
            "step".into(),
            Tensor::new(&[self.step as i64], &Device::Cpu)?,
        );
        // candle's error would not say which file a full disk stopped.
        candle_core::safetensors::save(&map, path).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("cannot write: {e}"),
        })
    }

    /// Restores moments and step saved by [`AdamW::save`]; every parameter must be present.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(Device::Cpu);
        let map = candle_core::safetensors::load(path, &device)?;
        for p in &mut self.params {
            for (slot, key) in [
                (&mut p.m, format!("m.{}", p.name)),
                (&mut p.v, format!("v.{}", p.name)),
            ] {
                let t = map
                    .get(&key)
                    .ok_or_else(|| bad(format!("optimizer state lacks {key}")))?;
                if t.dims() != slot.dims() {
                    return Err(bad(format!(
                        "{key} has shape {:?}, parameter has {:?}",
                        t.dims(),
                        slot.dims()
                    )));
                }
                *slot = t.to_dtype(slot.dtype())?;
            }
        }
        let step = map
            .get("step")
            .ok_or_else(|| bad("optimizer state lacks step".into()))?;
        self.step = step
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?
            .first()
            .copied()
            .unwrap_or(0) as u64;
        Ok(())
    }
}

/// One AdamW update of `p` from tensor ops, for what the fused passes do not take; the passes
/// apply the same f32 operations in this order.
fn composed_update(p: &mut Param, g: &Tensor, s: fused::Step) -> Result<()> {
    let mut theta = p.var.as_tensor().detach();
    if s.decay != 1.0 {
        theta = (theta * s.decay)?;
    }
    p.m = ((&p.m * s.beta1)? + (g * (1.0 - s.beta1))?)?;
    p.v = ((&p.v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
    let denom = ((p.v.sqrt()? * s.inv_bc2_sqrt)? + s.eps)?;
    let upd = ((&p.m / denom)? * s.step)?;
    p.var.set(&(theta - upd)?)?;
    Ok(())
}

/// Global L2 norm of all gradients: per-parameter sums of squares in f32, added in f64.
/// The sums stay on the device until one read at the end: a read per parameter would wait for
/// the GPU a few hundred times per update.
pub fn grad_norm(grads: &Grads) -> Result<f64> {
    let sums = grads
        .0
        .iter()
        .flatten()
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    let total: f64 = Tensor::stack(&sums, 0)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .sum();
    Ok(total.sqrt())
}

/// Multiplies every gradient by `factor` (loss normalisation over accumulated batches, clipping).
pub fn scale_grads(grads: &mut Grads, factor: f64) -> Result<()> {
    if factor == 1.0 {
        return Ok(());
    }
    for g in grads.0.iter_mut().flatten() {
        *g = (&*g * factor)?;
    }
    Ok(())
}

/// Scales gradients so their global norm is at most `max_norm` (0 = off); returns the norm before.
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        // torch.nn.utils.clip_grad_norm_ uses the same 1e-6 guard.
        scale_grads(grads, max_norm / (norm + 1e-6))?;
    }
    Ok(norm)
}

/// Learning rate for update `k` (1-based).
pub fn learning_rate(s: &ScheduleSection, peak: f64, max_updates: u64, k: u64) -> f64 {
    let w = s.warmup_updates;
    if w > 0 && k <= w {
        return s.warmup_init_lr + (peak - s.warmup_init_lr) * k as f64 / w as f64;
    }
    match s.kind {
        ScheduleKind::Constant => peak,
        ScheduleKind::InverseSqrt => peak * (w.max(1) as f64).sqrt() / (k.max(1) as f64).sqrt(),
        ScheduleKind::Linear => {
            let span = max_updates.saturating_sub(w).max(1) as f64;
            peak * (max_updates.saturating_sub(k) as f64 / span).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(wd: f64) -> OptimizerSection {
        OptimizerSection {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: wd,
            clip_norm: 0.0,
        }
    }

    #[test]
    fn no_decay_names() {
        assert!(no_decay("model.encoder.layers.0.fc1.bias"));
        assert!(no_decay("final_logits_bias"));
        assert!(no_decay(
            "model.decoder.layers.1.self_attn_layer_norm.weight"
        ));
        assert!(no_decay("model.encoder.layernorm_embedding.weight"));
        assert!(!no_decay("model.encoder.layers.0.fc1.weight"));
        assert!(!no_decay("model.shared.weight"));
    }

    /// Three steps against torch.optim.AdamW with a decay and a no-decay group
    /// (fixture from scripts/adamw_reference.py).
    #[test]
    fn fused_update_gives_the_composed_update_bit_for_bit() {
        // Values spanning magnitudes, zeros and negative zeros among the gradients.
        let wave = |n: usize, k: f32| -> Vec<f32> {
            (0..n)
                .map(|i| match i % 11 {
                    0 => 0.0,
                    1 => -0.0,
                    _ => (k * i as f32).sin() * 10f32.powi((i % 5) as i32 - 3),
                })
                .collect()
        };
        let n = 3000;
        let t = |v: Vec<f32>| Tensor::from_vec(v, n, &Device::Cpu).unwrap();
        let fresh = || Param {
            name: "w".into(),
            var: Var::from_tensor(&t(wave(n, 0.37))).unwrap(),
            m: t(wave(n, 0.11)),
            v: t(wave(n, 0.23).iter().map(|x| x.abs()).collect()),
            decay: true,
        };
        let (mut composed, fused_p) = (fresh(), fresh());
        for (k, decay) in [(1u64, 1.0 - 1e-3 * 0.01), (2, 1.0), (3, 0.99)] {
            let g = t(wave(n, 0.7 + k as f32));
            let s = fused::Step {
                beta1: 0.9,
                beta2: 0.98,
                decay,
                inv_bc2_sqrt: 1.0 / (1.0 - 0.98f64.powi(k as i32)).sqrt(),
                eps: 1e-8,
                step: 1e-3 / (1.0 - 0.9f64.powi(k as i32)),
            };
            composed_update(&mut composed, &g, s).unwrap();
            assert!(fused::update(fused_p.var.as_tensor(), &fused_p.m, &fused_p.v, &g, s).unwrap());
            for (what, a, b) in [
                ("param", composed.var.as_tensor(), fused_p.var.as_tensor()),
                ("m", &composed.m, &fused_p.m),
                ("v", &composed.v, &fused_p.v),
            ] {
                let a = a.to_vec1::<f32>().unwrap();
                let b = b.to_vec1::<f32>().unwrap();
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "step {k} {what}[{i}]: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn matches_torch_adamw() {
        let fx: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/adamw.json")).unwrap();
        let vec_of = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let mut vars = HashMap::new();
        for (name, shape) in fx["shapes"].as_object().unwrap() {
            let shape: Vec<usize> = shape
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let t = Tensor::from_vec(vec_of(&fx["init"][name]), shape, &Device::Cpu).unwrap();
            vars.insert(name.clone(), Var::from_tensor(&t).unwrap());
        }
        let c = OptimizerSection {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.01,
            clip_norm: 0.0,
        };
        let mut opt = AdamW::new(&vars, &c).unwrap();
        for step in fx["steps"].as_array().unwrap() {
            let grads = Grads(
                opt.names()
                    .iter()
                    .map(|n| {
                        let shape = vars[*n].as_tensor().shape().clone();
                        Some(
                            Tensor::from_vec(vec_of(&step["grads"][*n]), shape, &Device::Cpu)
                                .unwrap(),
                        )
                    })
                    .collect(),
            );
            opt.step(&grads, step["lr"].as_f64().unwrap()).unwrap();
        }
        for (name, var) in &vars {
            let got = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (g, e) in got.iter().zip(vec_of(&fx["final"][name])) {
                assert!((g - e).abs() < 2e-6, "{name}: {g} vs torch {e}");
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let mut vars = HashMap::new();
        let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        vars.insert("w".to_string(), w.clone());
        let mut opt = AdamW::new(&vars, &cfg(0.0)).unwrap();
        let g = Grads(vec![Some(
            Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap(),
        )]);
        opt.step(&g, 0.01).unwrap();
        let d = tempfile::tempdir().unwrap();
        opt.save(&d.path().join("o.safetensors")).unwrap();
        let w2 = Var::new(
            w.as_tensor().to_vec1::<f32>().unwrap().as_slice(),
            &Device::Cpu,
        )
        .unwrap();
        let mut vars2 = HashMap::new();
        vars2.insert("w".to_string(), w2.clone());
        let mut opt2 = AdamW::new(&vars2, &cfg(0.0)).unwrap();
        opt2.load(&d.path().join("o.safetensors")).unwrap();
        assert_eq!(opt2.step, 1);
        opt.step(&g, 0.01).unwrap();
        opt2.step(&g, 0.01).unwrap();
        assert_eq!(
            w.as_tensor().to_vec1::<f32>().unwrap(),
            w2.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn clipping_scales_to_the_threshold() {
        let mut g = Grads(vec![
            Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ]);
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        assert!((grad_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let n = clip_grad_norm(&mut g, 0.0).unwrap();
        assert!((n - 1.0).abs() < 1e-5);
    }

    #[test]
    fn schedules() {
        let s = ScheduleSection {
            kind: ScheduleKind::InverseSqrt,
            warmup_updates: 100,
            warmup_init_lr: 0.0,
        };
        assert!((learning_rate(&s, 1e-3, 0, 50) - 5e-4).abs() < 1e-12);
        assert!((learning_rate(&s, 1e-3, 0, 100) - 1e-3).abs() < 1e-12);
        assert!((learning_rate(&s, 1e-3, 0, 400) - 5e-4).abs() < 1e-12);
        let s = ScheduleSection {
            kind: ScheduleKind::Linear,
            warmup_updates: 10,
            warmup_init_lr: 0.0,
        };
        assert!((learning_rate(&s, 1.0, 110, 60) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(&s, 1.0, 110, 110), 0.0);
    }

    #[test]
    fn accumulation_adds() {
        let mut acc = None;
        let t = |x: f32| Some(Tensor::new(&[x], &Device::Cpu).unwrap());
        AdamW::accumulate(&mut acc, Grads(vec![t(1.0), None])).unwrap();
        AdamW::accumulate(&mut acc, Grads(vec![t(2.0), t(5.0)])).unwrap();
        let a = acc.unwrap();
        assert_eq!(
            a.0[0].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            vec![3.0]
        );
        assert_eq!(
            a.0[1].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            vec![5.0]
        );
    }
}
