//! The AdamW update of one parameter: burn's (and PyTorch's) arithmetic in tensor ops, the
//! default of [`super::ModelBackend::adamw_update`], which a backend may fuse into one pass over
//! memory (burn-flex does, in `super::flex`). The optimiser that calls it per parameter is
//! `crate::train::FusedAdamW`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The constants of one AdamW update of one parameter (see [`adamw_update_ops`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    /// Learning rate of this step.
    pub lr: f64,
    /// Adam's beta1.
    pub beta_1: f32,
    /// Adam's beta2.
    pub beta_2: f32,
    /// Adam's epsilon (added to `sqrt(v_hat)`).
    pub epsilon: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// The step count including this step (1 on the first), for the bias corrections.
    pub time: usize,
}

/// One AdamW update of one parameter with burn's (and PyTorch's) arithmetic, in tensor ops:
/// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g²`,
/// `p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
///
/// `moments` is `(m, v)` of the previous step, `None` on the first (zeros). Returns
/// `(p, m, v)`. The default of [`super::ModelBackend::adamw_update`]; a backend may replace it with one
/// pass over memory (about fourteen passes here).
pub fn adamw_update_ops<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    h: &AdamWHyper,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let (f1, f2) = (1.0 - h.beta_1, 1.0 - h.beta_2);
    let (m, v) = match moments {
        Some((m, v)) => (
            m.mul_scalar(h.beta_1).add(grad.clone().mul_scalar(f1)),
            v.mul_scalar(h.beta_2).add(grad.square().mul_scalar(f2)),
        ),
        None => (grad.clone().mul_scalar(f1), grad.square().mul_scalar(f2)),
    };
    let (bc1, bc2) = h.bias_corrections();
    let delta = m
        .clone()
        .div_scalar(bc1)
        .div(v.clone().div_scalar(bc2).sqrt().add_scalar(h.epsilon));
    // Always multiplied (by exactly 1 without decay, which changes no value): one graph for
    // every learning rate and decay, so a JIT backend compiles it once (the warm-up's
    // zero-learning-rate update included).
    let decay = h.lr * h.weight_decay as f64;
    let param = param.mul_scalar(1.0 - decay);
    (param - delta.mul_scalar(h.lr), m, v)
}

impl AdamWHyper {
    /// `(1 - b1^t, 1 - b2^t)` in f32, as burn computes them.
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.time as i32;
        (1.0 - self.beta_1.powi(t), 1.0 - self.beta_2.powi(t))
    }
}
