//! Rotary position embedding of q/k (HF's "rotate half") and its autodiff node, whose backward
//! is the rotation by `-θ`. The tables come from the model (`crate::model::RopeParams::cos_sin`):
//! `[batch, 1, seq, head_dim]`, the second half a copy of the first.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

use super::backend::{float, ModelBackend};

/// Applies rotary embeddings to `x` `[batch, heads, seq, head_dim]` with tables from
/// `RopeParams::cos_sin` (the "rotate half" convention of HF Qwen2).
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
/// `RopeParams::cos_sin` builds them).
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
    use crate::kernels::TrainBackend;
    use burn::tensor::{Distribution, TensorData};

    /// Tables as the model builds them (RoPE base 10000, attention factor 1.25) for positions
    /// `[batch, seq]`, two rows with different offsets.
    fn tables<B: Backend>(b: usize, s: usize, d: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = d / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / 10_000f32.powf((2 * i) as f32 / d as f32))
            .collect();
        let device = Default::default();
        let pos: Vec<f32> = (0..b * s).map(|i| (i % s + 3 * (i / s)) as f32).collect();
        let pos = Tensor::<B, 3>::from_data(TensorData::new(pos, [b, s, 1]), &device);
        let inv = Tensor::<B, 3>::from_data(TensorData::new(inv_freq, [1, 1, half]), &device);
        let freqs = pos * inv;
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        (
            emb.clone().cos().mul_scalar(1.25),
            emb.sin().mul_scalar(1.25),
        )
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
