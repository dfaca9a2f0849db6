//! Gradient checkpointing per decoder layer: under `Autodiff`, a layer is one graph node that
//! keeps only its input; the backward re-runs the layer's forward (on the inner backend, one
//! layer's activations at a time) and back-propagates through it by hand.
//!
//! This is HF's `gradient_checkpointing_enable()`: activation memory becomes one residual stream
//! per layer plus one layer's intermediates, for about one extra forward of compute. burn 0.21
//! cannot run a nested `backward()` from inside a backward step (its graph locks are not
//! re-entrant), so the layer's backward is written out: linear layers, RMSNorm, RoPE (whose
//! adjoint is the rotation by `-θ`), SwiGLU, and the blockwise attention backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{Bool, DType, Tensor, TensorMetadata, TensorPrimitive};

use super::backend::{float, ModelBackend};
use super::qwen2::{DecoderLayer, RmsNorm};

/// Parameters of a decoder layer, in the order [`layer_backward`] returns their gradients: input
/// norm; q, k, v weight and bias; o weight; post-attention norm; gate, up, down weights.
const PARAMS: usize = 12;
/// Graph parents of a checkpointed layer: its input, then its parameters.
const NODES: usize = PARAMS + 1;

/// The layer's parameters as primitives, in [`PARAMS`] order.
fn params<B: Backend>(layer: &DecoderLayer<B>) -> [FloatTensor<B>; PARAMS] {
    let a = &layer.self_attn;
    let m = &layer.mlp;
    let w = |l: &Linear<B>| l.weight.val().into_primitive().tensor();
    let bias = |l: &Linear<B>| {
        l.bias
            .as_ref()
            .expect("Qwen2 q/k/v projections have a bias")
            .val()
            .into_primitive()
            .tensor()
    };
    [
        layer.input_layernorm.weight.val().into_primitive().tensor(),
        w(&a.q_proj),
        bias(&a.q_proj),
        w(&a.k_proj),
        bias(&a.k_proj),
        w(&a.v_proj),
        bias(&a.v_proj),
        w(&a.o_proj),
        layer
            .post_attention_layernorm
            .weight
            .val()
            .into_primitive()
            .tensor(),
        w(&m.gate_proj),
        w(&m.up_proj),
        w(&m.down_proj),
    ]
}

/// `x W (+ b)` on rows `[n, in]`.
fn linear<B: Backend>(l: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    l.forward(x)
}

/// `(dx, dW)` of `y = x W` given `dy`.
fn linear_backward<B: Backend>(
    l: &Linear<B>,
    x: Tensor<B, 2>,
    dy: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let w = l.weight.val();
    // dx = dy Wᵀ = (W dyᵀ)ᵀ: multiplies the weight as stored.
    let dx = w.matmul(dy.clone().transpose()).transpose();
    (dx, x.transpose().matmul(dy))
}

/// The layer's input and everything else its recomputation needs.
#[derive(Clone, Debug)]
struct LayerInputs<B: Backend> {
    x: Tensor<B, 3>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
}

/// `(dx, parameter gradients)` of the layer's output given its gradient `dy`, re-running the
/// forward first.
fn layer_backward<B: ModelBackend>(
    layer: &DecoderLayer<B>,
    inputs: LayerInputs<B>,
    dy: Tensor<B, 3>,
) -> (Tensor<B, 3>, [Tensor<B, 2>; PARAMS]) {
    let LayerInputs {
        x,
        cos,
        sin,
        key_valid,
    } = inputs;
    let attn = &layer.self_attn;
    let (nh, nkv, hd) = attn.heads();
    let [b, t, h] = x.dims();
    let n = b * t;
    let groups = nh / nkv;
    let rows = |y: Tensor<B, 3>| {
        let d = y.dims()[2];
        y.reshape([n, d])
    };
    let heads = |y: Tensor<B, 2>, k: usize| y.reshape([b, t, k, hd]).swap_dims(1, 2);
    let unheads = |y: Tensor<B, 4>, k: usize| y.swap_dims(1, 2).reshape([n, k * hd]);

    // Forward, keeping this layer's intermediates.
    let x = rows(x);
    let norm = |n: &RmsNorm<B>, x: Tensor<B, 2>| B::rms_norm(x, n.weight.val(), n.eps());
    let norm_backward = |n: &RmsNorm<B>, x: Tensor<B, 2>, d: Tensor<B, 2>| {
        let (dx, dw) = B::rms_norm_backward(x, n.weight.val(), n.eps(), d);
        (dx, dw.unsqueeze::<2>())
    };
    let n1 = norm(&layer.input_layernorm, x.clone());
    let q = B::rotary(
        heads(linear(&attn.q_proj, n1.clone()), nh),
        cos.clone(),
        sin.clone(),
    );
    let k = B::rotary(
        heads(linear(&attn.k_proj, n1.clone()), nkv),
        cos.clone(),
        sin.clone(),
    );
    let v = heads(linear(&attn.v_proj, n1.clone()), nkv);
    let q = q.reshape([b, nkv, groups * t, hd]);
    let (out, lse) =
        B::causal_attention_lse(q.clone(), k.clone(), v.clone(), key_valid.clone(), groups);
    let a = unheads(out.clone().reshape([b, nh, t, hd]), nh);
    let x2 = x.clone() + linear(&attn.o_proj, a.clone());
    let n2 = norm(&layer.post_attention_layernorm, x2.clone());
    let gate = linear(&layer.mlp.gate_proj, n2.clone());
    let up = linear(&layer.mlp.up_proj, n2.clone());
    let mlp_in = B::swiglu(gate.clone(), up.clone());

    // Backward.
    let dy = rows(dy);
    let (d_mlp_in, d_down) = linear_backward(&layer.mlp.down_proj, mlp_in, dy.clone());
    let (d_gate, d_up) = B::swiglu_backward(gate, up, d_mlp_in);
    let (dn2_gate, d_gate_w) = linear_backward(&layer.mlp.gate_proj, n2.clone(), d_gate);
    let (dn2_up, d_up_w) = linear_backward(&layer.mlp.up_proj, n2, d_up);
    let (dx2_norm, d_norm2) = norm_backward(&layer.post_attention_layernorm, x2, dn2_gate + dn2_up);
    let dx2 = dy + dx2_norm;
    let (da, d_o) = linear_backward(&attn.o_proj, a, dx2.clone());
    let d_out = heads(da, nh).reshape([b, nkv, groups * t, hd]);
    // In f32, as the attention node of the plain graph.
    let dtype = q.dtype();
    let f32 = |x: Tensor<B, 4>| x.cast(DType::F32);
    let (dq, dk, dv) = B::causal_attention_backward(
        f32(q),
        f32(k),
        f32(v),
        key_valid,
        groups,
        f32(out),
        f32(d_out),
        lse.map(|l| l.cast(DType::F32)),
    );
    let (dq, dk, dv) = (dq.cast(dtype), dk.cast(dtype), dv.cast(dtype));
    // RoPE is a rotation: its adjoint rotates by -θ.
    let unrotate = |d: Tensor<B, 4>, k: usize| {
        unheads(
            B::rotary(d.reshape([b, k, t, hd]), cos.clone(), sin.clone().neg()),
            k,
        )
    };
    let (dq, dk, dv) = (unrotate(dq, nh), unrotate(dk, nkv), unheads(dv, nkv));
    let bias = |d: &Tensor<B, 2>| d.clone().sum_dim(0);
    let (d_qb, d_kb, d_vb) = (bias(&dq), bias(&dk), bias(&dv));
    let (dn1_q, d_qw) = linear_backward(&attn.q_proj, n1.clone(), dq);
    let (dn1_k, d_kw) = linear_backward(&attn.k_proj, n1.clone(), dk);
    let (dn1_v, d_vw) = linear_backward(&attn.v_proj, n1, dv);
    let (dx_norm, d_norm1) = norm_backward(&layer.input_layernorm, x, dn1_q + dn1_k + dn1_v);
    let dx = (dx2 + dx_norm).reshape([b, t, h]);
    (
        dx,
        [
            d_norm1, d_qw, d_qb, d_kw, d_kb, d_vw, d_vb, d_o, d_norm2, d_gate_w, d_up_w, d_down,
        ],
    )
}

/// The autodiff node of one checkpointed layer: saves the inner layer (its weights are shared
/// with the parameters) and the layer's inputs.
#[derive(Debug)]
struct LayerBackward<B: Backend> {
    layer: DecoderLayer<B>,
}

type LayerState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    BoolTensor<B>,
);

impl<B: ModelBackend> Backward<B, NODES> for LayerBackward<B> {
    type State = LayerState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, NODES>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, cos, sin, key_valid) = ops.state;
        let shapes = params(&self.layer).map(|p| p.shape());
        let inputs = LayerInputs {
            x: float(x),
            cos: float(cos),
            sin: float(sin),
            key_valid: Tensor::from_primitive(key_valid),
        };
        let (dx, dparams) = layer_backward(&self.layer, inputs, float(dy));
        let [x_parent, param_parents @ ..] = ops.parents;
        if let Some(node) = x_parent {
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
        for ((parent, grad), shape) in param_parents.into_iter().zip(dparams).zip(shapes) {
            if let Some(node) = parent {
                // Norm weights and biases are 1-D; their gradients come as `[1, n]`.
                let grad = B::float_reshape(grad.into_primitive().tensor(), shape);
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// A decoder layer under `Autodiff` as one recomputing graph node (see the module docs).
pub(super) fn checkpointed_layer<B: ModelBackend, C: CheckpointStrategy>(
    layer: &DecoderLayer<Autodiff<B, C>>,
    x: Tensor<Autodiff<B, C>, 3>,
    cos: Tensor<Autodiff<B, C>, 4>,
    sin: Tensor<Autodiff<B, C>, 4>,
    key_valid: Tensor<Autodiff<B, C>, 2, Bool>,
) -> Tensor<Autodiff<B, C>, 3> {
    let inner = layer.valid();
    let x = x.into_primitive().tensor();
    let (cos, sin) = (cos.into_primitive().tensor(), sin.into_primitive().tensor());
    let key_valid = key_valid.into_primitive();
    let inputs = LayerInputs {
        x: float::<B, 3>(x.primitive.clone()),
        cos: float(cos.primitive.clone()),
        sin: float(sin.primitive.clone()),
        key_valid: Tensor::from_primitive(key_valid.clone()),
    };
    let out = inner
        .forward(inputs.x, inputs.cos, inputs.sin, &inputs.key_valid, None)
        .0
        .into_primitive()
        .tensor();
    let [p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11] = params(layer);
    let nodes = [
        x.node.clone(),
        p0.node,
        p1.node,
        p2.node,
        p3.node,
        p4.node,
        p5.node,
        p6.node,
        p7.node,
        p8.node,
        p9.node,
        p10.node,
        p11.node,
    ];
    let node = match (LayerBackward { layer: inner })
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            prep.finish((x.primitive, cos.primitive, sin.primitive, key_valid), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Qwen2Config, Qwen2ForCausalLM};
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{ElementConversion, Int, TensorData};

    /// Every parameter's gradient, flattened, in visiting order.
    struct Collect<'a, B: burn::tensor::backend::AutodiffBackend> {
        grads: &'a B::Gradients,
        out: Vec<(String, Vec<f32>)>,
    }

    impl<B: burn::tensor::backend::AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = param
                .val()
                .grad(self.grads)
                .map(|g| g.into_data().to_vec::<f32>());
            let grad = grad
                .expect("every parameter has a gradient")
                .expect("f32 gradient");
            self.out.push((format!("{:?}", param.val().dims()), grad));
        }
    }

    /// Loss and parameter gradients of the tiny model (GQA, two layers) on a left-padded batch,
    /// with per-layer recomputation or without.
    fn tiny<B: ModelBackend, C: CheckpointStrategy>() -> Qwen2ForCausalLM<Autodiff<B, C>> {
        let config = Qwen2Config::from_file(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/tiny-qwen2-chatml/config.json"),
        )
        .expect("tiny config");
        Qwen2ForCausalLM::init(&config, &Default::default())
    }

    fn grads<B: ModelBackend, C: CheckpointStrategy>(
        model: &Qwen2ForCausalLM<Autodiff<B, C>>,
        checkpointing: bool,
        bf16: bool,
    ) -> (f32, Vec<(String, Vec<f32>)>) {
        type Ad<B, C> = Autodiff<B, C>;
        let device = Default::default();
        let model = model
            .clone()
            .with_gradient_checkpointing(checkpointing)
            .with_compute_dtype(bf16.then_some(burn::tensor::FloatDType::BF16));
        let (b, t) = (2, 37);
        let ids: Vec<i64> = (0..b * t).map(|i| (i as i64 * 131 + 7) % 1000).collect();
        let valid: Vec<bool> = (0..b * t).map(|i| i / t == 1 || i % t >= 5).collect();
        let pos: Vec<i64> = (0..b * t)
            .map(|i| {
                if i / t == 1 {
                    (i % t) as i64
                } else {
                    (i % t) as i64 - 5
                }
                .max(0)
            })
            .collect();
        let ids = Tensor::<Ad<B, C>, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        let valid = Tensor::<Ad<B, C>, 2, Bool>::from_data(TensorData::new(valid, [b, t]), &device);
        let pos = Tensor::<Ad<B, C>, 2, Int>::from_data(TensorData::new(pos, [b, t]), &device);
        let hidden = model
            .forward_hidden(ids.clone(), valid, pos, None)
            .expect("forward");
        let h = hidden.dims()[2];
        let (logp, entropy) = model.token_logprobs_entropy(
            hidden.slice([0..b, 0..t - 1, 0..h]),
            ids.slice([0..b, 1..t]),
            0.8,
            16,
        );
        let loss = logp.mean().neg() - entropy.mean().mul_scalar(0.01);
        let value = loss.clone().into_scalar().elem::<f32>();
        let grads = loss.backward();
        let mut collect = Collect::<Ad<B, C>> {
            grads: &grads,
            out: Vec::new(),
        };
        model.visit(&mut collect);
        (value, collect.out)
    }

    fn check<B: ModelBackend, C: CheckpointStrategy>() {
        let model = tiny::<B, C>();
        let (loss, reference) = grads(&model, false, false);
        let (loss_ckpt, got) = grads(&model, true, false);
        assert!(
            (loss - loss_ckpt).abs() < 1e-5,
            "loss {loss} vs {loss_ckpt}"
        );
        assert_eq!(reference.len(), got.len());
        for (i, ((name, a), (_, b))) in reference.iter().zip(&got).enumerate() {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let scale = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
            assert!(
                diff <= 1e-4 * scale.max(1e-3),
                "parameter {i} {name}: max difference {diff} (largest gradient {scale})"
            );
        }
    }

    /// Mixed precision: f32 gradients for every (f32) parameter, close to the f32 run's.
    fn check_bf16<B: ModelBackend>(checkpointing: bool) {
        let model = tiny::<B, NoCheckpointing>();
        let (loss, reference) = grads(&model, false, false);
        let (loss_bf16, got) = grads(&model, checkpointing, true);
        assert!(
            (loss - loss_bf16).abs() <= 1e-2 * loss.abs(),
            "loss {loss} vs {loss_bf16} in bf16"
        );
        assert_eq!(reference.len(), got.len());
        for (i, ((name, a), (_, b))) in reference.iter().zip(&got).enumerate() {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
            let cosine = dot / (norm(a) * norm(b)).max(1e-30);
            assert!(
                cosine > 0.99,
                "parameter {i} {name}: bf16 gradient has cosine {cosine} with the f32 one"
            );
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn bf16_compute_gives_f32_gradients_close_to_f32_on_flex() {
        check_bf16::<burn::backend::Flex>(false);
        check_bf16::<burn::backend::Flex>(true);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn recomputed_layers_give_the_same_gradients_on_flex() {
        check::<burn::backend::Flex, NoCheckpointing>();
        check::<burn::backend::Flex, BalancedCheckpointing>();
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn recomputed_layers_give_the_same_gradients_on_ndarray() {
        check::<burn::backend::NdArray, NoCheckpointing>();
    }
}
