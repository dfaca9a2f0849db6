//! Rotary position embeddings: inverse frequencies for plain, linear and YaRN scaling, computed as
//! transformers computes them (f32 arithmetic where it uses f32), and their application to q/k.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData, TensorPrimitive};

use super::backend::{float, ModelBackend};
use super::config::{Qwen2Config, RopeScaling};

/// Per-dimension inverse frequencies and the cos/sin scale of a model's RoPE.
#[derive(Debug, Clone)]
pub struct RopeParams {
    /// `head_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// Factor applied to cos and sin (YaRN's attention factor; 1 otherwise).
    pub attention_factor: f32,
}

impl RopeParams {
    /// Computes the inverse frequencies of `config`, matching transformers' `ROPE_INIT_FUNCTIONS`.
    pub fn new(config: &Qwen2Config) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta;
        // transformers: base ** (arange(0, dim, 2).float() / dim), in f32.
        let pos_freqs: Vec<f32> = (0..dim / 2)
            .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
            .collect();
        let plain: Vec<f32> = pos_freqs.iter().map(|p| 1.0 / p).collect();
        match &config.rope_scaling {
            RopeScaling::None => Self {
                inv_freq: plain,
                attention_factor: 1.0,
            },
            RopeScaling::Linear { factor } => Self {
                inv_freq: plain.iter().map(|f| f / *factor as f32).collect(),
                attention_factor: 1.0,
            },
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention_factor =
                    attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                        (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                            get_mscale(*factor, *m) / get_mscale(*factor, *a)
                        }
                        _ => get_mscale(*factor, 1.0),
                    });
                let correction_dim = |rotations: f64| {
                    (dim as f64
                        * (*original_max_position_embeddings as f64
                            / (rotations * 2.0 * std::f64::consts::PI))
                            .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim as f64 - 1.0);
                let (low, high) = (
                    low as f32,
                    if low == high { high + 0.001 } else { high } as f32,
                );
                let inv_freq = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        let interpolation = 1.0 / (*factor as f32 * p);
                        let extrapolation = 1.0 / p;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect();
                Self {
                    inv_freq,
                    attention_factor: attention_factor as f32,
                }
            }
        }
    }

    /// cos and sin tables for `position_ids` `[batch, seq]`, each `[batch, 1, seq, head_dim]`.
    pub fn cos_sin<B: Backend>(
        &self,
        position_ids: Tensor<B, 2, Int>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let device = position_ids.device();
        let [batch, seq] = position_ids.dims();
        let half = self.inv_freq.len();
        let inv_freq =
            Tensor::<B, 1>::from_data(TensorData::new(self.inv_freq.clone(), [half]), &device)
                .reshape([1, 1, half]);
        let freqs = position_ids.float().reshape([batch, seq, 1]) * inv_freq;
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        let cos = emb.clone().cos();
        let sin = emb.sin();
        if self.attention_factor != 1.0 {
            (
                cos.mul_scalar(self.attention_factor),
                sin.mul_scalar(self.attention_factor),
            )
        } else {
            (cos, sin)
        }
    }
}

/// Applies rotary embeddings to `x` `[batch, heads, seq, head_dim]` with tables from
/// [`RopeParams::cos_sin`] (the "rotate half" convention of HF Qwen2).
pub fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// The autodiff node of [`ModelBackend::rotary`]: saves the tables. RoPE rotates each pair of
/// coordinates by a position's angle, so its adjoint rotates by minus that angle:
/// `dx = rotary(d, cos, -sin)` (the tables repeat their first half in the second, as
/// [`RopeParams::cos_sin`] builds them).
#[derive(Debug)]
struct RotaryBackward;

impl<B: ModelBackend> Backward<B, 1> for RotaryBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let d = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        let dx = B::rotary(float(d), float(cos), float::<B, 4>(sin).neg());
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
    }
}

/// [`ModelBackend::rotary`] under `Autodiff`: the inner backend's kernel and one graph node (the
/// tables are constants: no gradient flows to them).
pub(super) fn tracked_rotary<B: ModelBackend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 4>,
    cos: Tensor<Autodiff<B, C>, 4>,
    sin: Tensor<Autodiff<B, C>, 4>,
) -> Tensor<Autodiff<B, C>, 4> {
    let x = x.into_primitive().tensor();
    let cos = cos.into_primitive().tensor().primitive;
    let sin = sin.into_primitive().tensor().primitive;
    let out = B::rotary(float(x.primitive), float(cos.clone()), float(sin.clone()))
        .into_primitive()
        .tensor();
    let node = match RotaryBackward
        .prepare::<C>([x.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos, sin), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TrainBackend;
    use burn::tensor::Distribution;

    /// Tables of a tiny model for positions `[batch, seq]` (two rows with different offsets).
    fn tables<B: Backend>(b: usize, s: usize, d: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let rope = RopeParams {
            inv_freq: (0..d / 2)
                .map(|i| 1.0 / 10_000f32.powf((2 * i) as f32 / d as f32))
                .collect(),
            attention_factor: 1.25,
        };
        let ids: Vec<i64> = (0..b * s).map(|i| (i % s + 3 * (i / s)) as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, s]), &Default::default());
        rope.cos_sin(ids)
    }

    /// The backend's RoPE node gives the output and the input gradient of the tensor-op version
    /// (`apply_rotary` under autodiff), on a head-major view like the model's.
    fn node_matches_ops<B: TrainBackend>() {
        let device = Default::default();
        let (b, h, s, d) = (2, 3, 11, 16);
        let (cos, sin) = tables::<B>(b, s, d);
        let normal = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<B, 4>::random([b, s, h, d], normal, &device);
        let up = Tensor::<B, 4>::random([b, h, s, d], normal, &device);
        let run = |kernel: bool| {
            let x = x.clone().require_grad();
            let view = x.clone().swap_dims(1, 2);
            let y = if kernel {
                B::rotary(view, cos.clone(), sin.clone())
            } else {
                apply_rotary(view, cos.clone(), sin.clone())
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            (y.inner().into_data(), x.grad(&grads).unwrap().into_data())
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        let tol = burn::tensor::Tolerance::absolute(1e-6);
        y1.assert_approx_eq::<f32>(&y2, tol);
        g1.assert_approx_eq::<f32>(&g2, tol);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn rotary_node_matches_ops_on_flex() {
        node_matches_ops::<Autodiff<burn::backend::Flex>>();
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn rotary_node_matches_ops_on_ndarray() {
        node_matches_ops::<Autodiff<burn::backend::NdArray>>();
    }

    /// The flex kernel is the tensor-op RoPE bit for bit, on a strided view and on a contiguous
    /// tensor.
    #[cfg(feature = "flex")]
    #[test]
    fn flex_rotary_is_the_ops_version() {
        use burn::backend::Flex;
        let (b, h, s, d) = (2, 4, 9, 32);
        let (cos, sin) = tables::<Flex>(b, s, d);
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([b, s, h, d], Distribution::Default, &device);
        let packed = Tensor::<Flex, 4>::from_data(x.clone().swap_dims(1, 2).into_data(), &device);
        for x in [x.swap_dims(1, 2), packed] {
            let want = apply_rotary(x.clone(), cos.clone(), sin.clone()).into_data();
            assert_eq!(Flex::rotary(x, cos.clone(), sin.clone()).into_data(), want);
        }
    }
}
