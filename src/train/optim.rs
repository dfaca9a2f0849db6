//! The optimiser side shared by SFT and RL: AdamW with PyTorch's defaults, a learning-rate
//! schedule that is a pure function of the step (so resuming needs only the step), global-norm
//! gradient clipping with `torch.nn.utils.clip_grad_norm_` semantics, and optimiser state that
//! survives a restart (parameters get ids derived from their names).

use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, Optimizer, SimpleOptimizer,
};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::kernels::{AdamWHyper, ModelBackend, TrainBackend};

/// Shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Constant (QwenLong-L1's RL: 2e-6 constant).
    #[default]
    Constant,
    /// Half a cosine from `lr` down to `lr * min_lr_ratio` at the last step.
    Cosine,
    /// Linear decay to `lr * min_lr_ratio` at the last step.
    Linear,
}

/// AdamW and schedule settings (names as HF `TrainingArguments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam's beta1.
    pub adam_beta1: f64,
    /// Adam's beta2.
    pub adam_beta2: f64,
    /// Adam's epsilon.
    pub adam_epsilon: f64,
    /// Decoupled weight decay (applied to every parameter, as verl's FSDP actor does).
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub max_grad_norm: f64,
    /// Linear warm-up steps (from 0).
    pub warmup_steps: usize,
    /// Warm-up as a fraction of the total steps (used when `warmup_steps` is 0).
    pub warmup_ratio: f64,
    /// Schedule after warm-up.
    pub lr_scheduler: LrSchedule,
    /// Final learning rate of the cosine / linear schedules, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Updates skipped in a row (non-finite loss or gradient norm) after which the run stops with
    /// an error; 0 never stops early (a run with no applied update still fails at its end).
    pub max_skipped_updates: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            lr_scheduler: LrSchedule::Constant,
            min_lr_ratio: 0.0,
            max_skipped_updates: 8,
        }
    }
}

impl OptimConfig {
    /// Checks every option, naming the bad one (`section` prefixes the names, e.g. `optim`).
    pub fn validate(&self, section: &str) -> Result<()> {
        let bad = |name: &str, v: f64, want: &str| {
            Err(Error::Invalid(format!(
                "{section}.{name} = {v}: expected {want}"
            )))
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr, "a positive number");
        }
        for (name, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return bad(name, b, "a number in [0, 1)");
            }
        }
        if self.adam_epsilon.is_nan() || self.adam_epsilon <= 0.0 {
            return bad("adam_epsilon", self.adam_epsilon, "a positive number");
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return bad("weight_decay", self.weight_decay, "a number >= 0");
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return bad(
                "max_grad_norm",
                self.max_grad_norm,
                "a number >= 0 (0 is off)",
            );
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", self.warmup_ratio, "a number in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]");
        }
        Ok(())
    }

    /// Warm-up steps for a run of `total_steps` optimiser steps.
    pub fn warmup(&self, total_steps: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total_steps as f64).ceil() as usize
        }
    }

    /// The learning rate of optimiser step `step` (0-based) out of `total_steps`, as HF's
    /// schedulers give it: `lr * step / warmup` during warm-up, then the schedule.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        let warmup = self.warmup(total_steps);
        if step < warmup {
            return self.lr * step as f64 / warmup as f64;
        }
        let decay_steps = total_steps.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
        let floor = self.min_lr_ratio;
        let factor = match self.lr_scheduler {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => {
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            LrSchedule::Linear => floor + (1.0 - floor) * (1.0 - progress),
        };
        self.lr * factor
    }
}

/// FNV-1a: a stable 64-bit hash of a parameter's name.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Gives every parameter an id derived from its module path (`model.layers.0.mlp.up_proj.weight`),
/// so optimiser state saved by one process finds its parameters in the next.
struct StableIds {
    path: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for StableIds {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.id = ParamId::from(fnv1a64(self.path.join(".").as_bytes()));
        param
    }
}

/// Re-keys a module's parameters by name (see [`StableIds`]); call it on every model that is
/// trained, right after loading, in every process of a run.
pub fn stable_param_ids<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut StableIds { path: Vec::new() })
}

struct NormParts<'a, B: TrainBackend> {
    grads: &'a GradientsParams,
    sum_sq: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: TrainBackend> ModuleVisitor<B> for NormParts<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sum_sq.push(B::InnerBackend::sum_squares(g));
        }
    }
}

struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of all gradients of `module`.
pub fn grad_norm<B: TrainBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut parts = NormParts::<B> {
        grads,
        sum_sq: Vec::new(),
    };
    module.visit(&mut parts);
    if parts.sum_sq.is_empty() {
        return 0.0;
    }
    let total: f64 = Tensor::cat(parts.sum_sq, 0)
        .sum()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(0.0);
    total.sqrt()
}

/// Multiplies every gradient of `module` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    module.visit(&mut ScaleGrads { grads, factor });
}

/// `torch.nn.utils.clip_grad_norm_`: scales all gradients by `max_norm / (norm + 1e-6)` when that
/// is below 1; returns the norm before clipping. `max_norm = 0` only measures.
pub fn clip_grad_norm<B: TrainBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm::<B, M>(module, grads);
    if max_norm > 0.0 {
        let factor = max_norm / (norm + 1e-6);
        // JIT backends always scale (by exactly 1 when no clipping is due, which changes no
        // value), so that every step runs the same kernels and none is compiled mid-run.
        if factor < 1.0 || B::JIT {
            scale_grads::<B, M>(module, grads, factor.min(1.0));
        }
    }
    norm
}

/// AdamW as a burn [`SimpleOptimizer`] whose per-parameter update is the backend's
/// [`ModelBackend::adamw_update`] (on `flex`, one fused pass instead of about fourteen), with
/// burn's own state type, so optimiser checkpoints are those of burn's `AdamW`.
#[derive(Debug, Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl FusedAdamW {
    /// The optimiser for `config`'s betas, epsilon and weight decay.
    pub fn new(config: &OptimConfig) -> Self {
        Self {
            beta_1: config.adam_beta1 as f32,
            beta_2: config.adam_beta2 as f32,
            epsilon: config.adam_epsilon as f32,
            weight_decay: config.weight_decay as f32,
        }
    }
}

impl<B: ModelBackend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (time, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                Some((s.momentum.moment_1, s.momentum.moment_2)),
            ),
            None => (1, None),
        };
        let hyper = AdamWHyper {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time,
        };
        let (tensor, m, v) = B::adamw_update(tensor, grad, moments, &hyper);
        let momentum = AdaptiveMomentumState::new(time, m, v);
        (tensor, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device<B>) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// AdamW over a model, with its state saved and restored exactly.
pub struct AdamWOptimizer<B: TrainBackend, M: AutodiffModule<B>> {
    inner: OptimizerAdaptor<FusedAdamW, M, B>,
    optim: FusedAdamW,
}

type Record<B, M> = <OptimizerAdaptor<FusedAdamW, M, B> as Optimizer<M, B>>::Record;

impl<B: TrainBackend, M: AutodiffModule<B>> AdamWOptimizer<B, M> {
    /// A fresh optimiser (no state) for `config`.
    pub fn new(config: &OptimConfig) -> Self {
        let optim = FusedAdamW::new(config);
        Self {
            inner: OptimizerAdaptor::from(optim.clone()),
            optim,
        }
    }

    /// One update with learning rate `lr`; returns the updated model.
    pub fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        self.inner.step(lr, model, grads)
    }

    /// Writes the optimiser state (moments and step counts, f32) to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(self.inner.to_record(), ())
            .map_err(|e| Error::checkpoint(path, format!("serialising optimiser state: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Replaces the state with the one saved at `path`.
    pub fn load(&mut self, path: &Path, device: &B::Device) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        // The recorder panics on bytes it cannot decode; a damaged file must be an error instead.
        let record = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Recorder::<B>::load::<Record<B, M>>(&recorder, bytes, device)
        }))
        .map_err(|_| Error::checkpoint(path, "optimiser state is damaged (cannot be decoded)"))?
        .map_err(|e| Error::checkpoint(path, format!("optimiser state cannot be read: {e}")))?;
        let fresh = OptimizerAdaptor::from(self.optim.clone());
        self.inner = fresh.load_record(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::Linear;
    use burn::optim::AdamWConfig;
    use burn::tensor::Distribution;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    fn loss<B: AutodiffBackend>(m: &Two<B>, x: &Tensor<B, 2>) -> Tensor<B, 1> {
        m.b.forward(m.a.forward(x.clone()).tanh())
            .powf_scalar(2.0)
            .mean()
    }

    /// [`AdamWOptimizer`] takes burn's `AdamW` steps exactly (the backend's kernel: on `flex` the
    /// fused one), and resumes from optimiser state that burn's `AdamW` saved.
    fn matches_burns_adamw<B: TrainBackend>() {
        let device = Default::default();
        B::seed(&device, 7);
        let normal = Distribution::Normal(0.0, 0.3);
        let w = [[12, 40], [40, 5]].map(|s| Tensor::<B, 2>::random(s, normal, &device).into_data());
        let b = [40, 5].map(|s| Tensor::<B, 1>::random([s], normal, &device).into_data());
        let linear = |i: usize| Linear {
            weight: Param::from_data(w[i].clone(), &device),
            bias: Some(Param::from_data(b[i].clone(), &device)),
        };
        let copy = || {
            stable_param_ids(Two::<B> {
                a: linear(0),
                b: linear(1),
            })
        };
        let x = Tensor::<B, 2>::random([6, 12], Distribution::Normal(0.0, 1.0), &device);
        let config = OptimConfig {
            weight_decay: 0.05,
            ..OptimConfig::default()
        };
        let mut burns = AdamWConfig::new()
            .with_epsilon(config.adam_epsilon as f32)
            .with_weight_decay(config.weight_decay as f32)
            .init::<B, Two<B>>();
        let mut ours = AdamWOptimizer::<B, Two<B>>::new(&config);
        let (mut m1, mut m2) = (copy(), copy());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optim.bin");
        for step in 0..4 {
            let lr = 1e-2;
            let g1 = GradientsParams::from_grads(loss(&m1, &x).backward(), &m1);
            m1 = burns.step(lr, m1, g1);
            let g2 = GradientsParams::from_grads(loss(&m2, &x).backward(), &m2);
            m2 = ours.step(lr, m2, g2);
            let weight = |m: &Two<B>| m.a.weight.val().into_data();
            assert_eq!(weight(&m1), weight(&m2), "step {step}");
            let bias = |m: &Two<B>| m.b.bias.as_ref().unwrap().val().into_data();
            assert_eq!(bias(&m1), bias(&m2), "step {step}");
            if step == 1 {
                // Burn's AdamW saves its state; ours resumes from it.
                let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
                    .record(burns.to_record(), ())
                    .unwrap();
                std::fs::write(&path, bytes).unwrap();
                ours = AdamWOptimizer::<B, Two<B>>::new(&config);
                ours.load(&path, &device).unwrap();
            }
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn adamw_matches_burn_on_flex() {
        matches_burns_adamw::<burn::backend::Autodiff<burn::backend::Flex>>();
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn adamw_matches_burn_on_ndarray() {
        matches_burns_adamw::<burn::backend::Autodiff<burn::backend::NdArray>>();
    }

    #[test]
    fn schedules_follow_hf() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 2,
            lr_scheduler: LrSchedule::Cosine,
            ..OptimConfig::default()
        };
        assert_eq!(c.lr_at(0, 10), 0.0);
        assert_eq!(c.lr_at(1, 10), 0.5);
        assert_eq!(c.lr_at(2, 10), 1.0);
        assert!((c.lr_at(6, 10) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(10, 10).abs() < 1e-12);
        let lin = OptimConfig {
            lr: 2.0,
            lr_scheduler: LrSchedule::Linear,
            min_lr_ratio: 0.5,
            ..OptimConfig::default()
        };
        assert_eq!(lin.lr_at(0, 4), 2.0);
        assert_eq!(lin.lr_at(2, 4), 1.5);
        let constant = OptimConfig::default();
        assert_eq!(constant.lr_at(7, 10), 1e-5);
        assert!(OptimConfig {
            lr: 0.0,
            ..OptimConfig::default()
        }
        .validate("optim")
        .unwrap_err()
        .to_string()
        .contains("optim.lr"));
    }
}
