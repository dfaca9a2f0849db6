//! RMSNorm as one autodiff node (as Liger's fused RMSNorm does for PyTorch trainers): burn's
//! decomposed ops keep the f32 copy, the squares, the root and the normalised rows in the graph
//! and walk back through about eight broadcast ops; this node keeps the input only and its
//! backward is one formula per row, with `x̂ = x / rms(x)`, `g = d ∘ w`:
//! `dx = (g − x̂ mean(g ∘ x̂)) / rms(x)`, `dw = Σ_rows d ∘ x̂`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use super::backend::{float, ModelBackend};

/// `x / sqrt(mean(x²) + eps) · weight` over each row of `x` `[rows, hidden]`, normalised in f32
/// whatever the input's dtype (as transformers does) and scaled in the input's dtype; the
/// default of [`ModelBackend::rms_norm`].
pub fn rms_norm_ops<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let rms = x.clone().square().mean_dim(1).add_scalar(eps).sqrt();
    x.div(rms).cast(dtype).mul(weight.unsqueeze::<2>())
}

/// `(dx, dweight)` of [`rms_norm_ops`] given the output's gradient `d`, in tensor ops.
pub fn rms_norm_backward_ops<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f64,
    d: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let [_, h] = x.dims();
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let xhat = x * inv_rms.clone();
    let dweight = (d.clone() * xhat.clone().cast(dtype))
        .sum_dim(0)
        .reshape([h]);
    let dxhat = (d * weight.unsqueeze::<2>()).cast(DType::F32);
    let proj = (dxhat.clone() * xhat.clone()).mean_dim(1);
    let dx = (dxhat - xhat * proj) * inv_rms;
    (dx.cast(dtype), dweight)
}

/// The autodiff node of [`ModelBackend::rms_norm`]: saves the input and the weight.
#[derive(Debug)]
struct RmsNormBackward;

impl<B: ModelBackend> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let d = grads.consume::<B>(&ops.node);
        let (x, weight, eps) = ops.state;
        let (dx, dw) = B::rms_norm_backward(float(x), float(weight), eps, float(d));
        let [px, pw] = ops.parents;
        if let Some(node) = px {
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
        if let Some(node) = pw {
            grads.register::<B>(node.id, dw.into_primitive().tensor());
        }
    }
}

/// [`ModelBackend::rms_norm`] under `Autodiff`: the inner backend's kernel and one graph node.
pub(super) fn tracked_rms_norm<B: ModelBackend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<B, C>, 2>,
    weight: Tensor<Autodiff<B, C>, 1>,
    eps: f64,
) -> Tensor<Autodiff<B, C>, 2> {
    let (x, weight) = (
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    );
    let out = B::rms_norm(
        float(x.primitive.clone()),
        float(weight.primitive.clone()),
        eps,
    )
    .into_primitive()
    .tensor();
    let node = match RmsNormBackward
        .prepare::<C>([x.node, weight.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, eps), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::TrainBackend;
    use burn::tensor::{Distribution, Tolerance};

    /// The backend's node gives the output and both gradients of burn's decomposed ops.
    fn node_matches_ops<B: TrainBackend>() {
        let device = Default::default();
        let (rows, h) = (67, 48);
        let x = Tensor::<B, 2>::random([rows, h], Distribution::Normal(0.5, 2.0), &device);
        let w = Tensor::<B, 1>::random([h], Distribution::Normal(1.0, 0.3), &device);
        let up = Tensor::<B, 2>::random([rows, h], Distribution::Normal(0.0, 1.0), &device);
        let run = |kernel: bool| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let y = if kernel {
                B::rms_norm(x.clone(), w.clone(), 1e-6)
            } else {
                rms_norm_ops(x.clone(), w.clone(), 1e-6)
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            [
                y.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                w.grad(&grads).unwrap().into_data(),
            ]
        };
        let (a, b) = (run(true), run(false));
        for (p, q) in a.iter().zip(&b) {
            p.assert_approx_eq::<f32>(q, Tolerance::rel_abs(1e-5, 1e-5));
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn rms_norm_node_matches_ops_on_flex() {
        node_matches_ops::<Autodiff<burn::backend::Flex>>();
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn rms_norm_node_matches_ops_on_ndarray() {
        node_matches_ops::<Autodiff<burn::backend::NdArray>>();
    }
}
