//! The MLP's element-wise part, `silu(gate) ∘ up`, as one autodiff node (as Liger's fused SwiGLU
//! does for PyTorch trainers): burn's decomposed ops keep `sigmoid(gate)`, `silu(gate)` and the
//! product in the graph and make about five passes back; this node keeps `gate` and `up` only
//! (which the projections' backward needs anyway) and its backward is one formula,
//! `d up = d ∘ silu(g)`, `d gate = d ∘ up ∘ σ(g) (1 + g (1 − σ(g)))`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::backend::{float, ModelBackend};

/// `silu(gate) ∘ up` in tensor ops (the default of [`ModelBackend::swiglu`]).
pub fn swiglu_ops<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(gate) * up
}

/// `(d gate, d up)` of [`swiglu_ops`] given the output's gradient `d`, in tensor ops.
pub fn swiglu_backward_ops<B: Backend>(
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
    d: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let sig = sigmoid(gate.clone());
    let d_up = d.clone() * gate.clone() * sig.clone();
    // silu'(g) = σ(g) (1 + g (1 - σ(g))).
    let d_gate = d * up * sig.clone() * (gate * sig.neg().add_scalar(1.0)).add_scalar(1.0);
    (d_gate, d_up)
}

/// The autodiff node of [`ModelBackend::swiglu`]: saves `gate` and `up`.
#[derive(Debug)]
struct SwigluBackward;

impl<B: ModelBackend> Backward<B, 2> for SwigluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let d = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let (d_gate, d_up) = B::swiglu_backward(float(gate), float(up), float(d));
        for (parent, grad) in ops.parents.into_iter().zip([d_gate, d_up]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// [`ModelBackend::swiglu`] under `Autodiff`: the inner backend's kernel and one graph node.
pub(super) fn tracked_swiglu<B: ModelBackend, C: CheckpointStrategy>(
    gate: Tensor<Autodiff<B, C>, 2>,
    up: Tensor<Autodiff<B, C>, 2>,
) -> Tensor<Autodiff<B, C>, 2> {
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let out = B::swiglu(float(gate.primitive.clone()), float(up.primitive.clone()))
        .into_primitive()
        .tensor();
    let node = match SwigluBackward
        .prepare::<C>([gate.node, up.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::TrainBackend;
    use burn::tensor::{Distribution, Tolerance};

    /// The backend's node gives the output and both input gradients of burn's decomposed ops.
    fn node_matches_ops<B: TrainBackend>() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 3.0);
        let [g, u, up_grad] = [0, 1, 2].map(|_| Tensor::<B, 2>::random([37, 45], normal, &device));
        let run = |kernel: bool| {
            let (g, u) = (g.clone().require_grad(), u.clone().require_grad());
            let y = if kernel {
                B::swiglu(g.clone(), u.clone())
            } else {
                swiglu_ops(g.clone(), u.clone())
            };
            let grads = (y.clone() * up_grad.clone()).sum().backward();
            let grad = |t: &Tensor<B, 2>| t.grad(&grads).unwrap().into_data();
            [y.inner().into_data(), grad(&g), grad(&u)]
        };
        let (a, b) = (run(true), run(false));
        for (x, y) in a.iter().zip(&b) {
            x.assert_approx_eq::<f32>(y, Tolerance::rel_abs(1e-5, 1e-6));
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn swiglu_node_matches_ops_on_flex() {
        node_matches_ops::<Autodiff<burn::backend::Flex>>();
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn swiglu_node_matches_ops_on_ndarray() {
        node_matches_ops::<Autodiff<burn::backend::NdArray>>();
    }
}
