//! Gradient checkpointing per decoder layer: under `Autodiff`, a layer is one graph node that
//! keeps only its input; the backward re-runs the layer's forward (on the inner backend, one
//! layer's activations at a time) and back-propagates through it by hand.
//!
//! This is HF's `gradient_checkpointing_enable()`: activation memory becomes one residual stream
//! per layer plus one layer's intermediates, for about one extra forward of compute. burn 0.21
//! cannot run a nested `backward()` from inside a backward step (its graph locks are not
//! re-entrant), so the layer's backward is written out: linear layers, RMSNorm, RoPE (whose
//! adjoint is the rotation by `-θ`), SwiGLU, and the blockwise attention backward.

use super::linear::{in_dtype, Linear};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{Bool, DType, Tensor, TensorMetadata, TensorPrimitive};

use super::backend::{float, ModelBackend};

/// The weights of one pre-norm decoder layer as the recomputing node re-runs it:
/// `x2 = x + o(attn(rope(qn(q(n1))), rope(kn(k(n1))), v(n1)))` with `n1 = norm1(x)`, then
/// `x2 + down(silu(gate(n2)) ∘ up(n2))` with `n2 = norm2(x2)`; `qn`/`kn` are Qwen3's per-head
/// RMSNorms (identity for Qwen2), and any projection's bias is optional. The model hands its
/// layer's parameters over (`crate::model::qwen2::DecoderLayer::weights`): shared, not copied.
#[derive(Module, Debug)]
pub struct DecoderWeights<B: Backend> {
    /// Scale of the norm before attention, `[hidden]`.
    pub input_norm: Param<Tensor<B, 1>>,
    /// Query projection (biased for Qwen2).
    pub q_proj: Linear<B>,
    /// Key projection (biased for Qwen2).
    pub k_proj: Linear<B>,
    /// Value projection (biased for Qwen2).
    pub v_proj: Linear<B>,
    /// Output projection (biased only for Qwen3 with `attention_bias`).
    pub o_proj: Linear<B>,
    /// Qwen3's per-head query norm scale, `[head_dim]`.
    pub q_norm: Option<Param<Tensor<B, 1>>>,
    /// Qwen3's per-head key norm scale, `[head_dim]`.
    pub k_norm: Option<Param<Tensor<B, 1>>>,
    /// Scale of the norm before the MLP, `[hidden]`.
    pub post_norm: Param<Tensor<B, 1>>,
    /// MLP gate projection.
    pub gate_proj: Linear<B>,
    /// MLP up projection.
    pub up_proj: Linear<B>,
    /// MLP down projection.
    pub down_proj: Linear<B>,
    /// `(input_norm, post_norm)` epsilons.
    #[module(skip)]
    pub eps: (f64, f64),
    /// Epsilon of the q/k norms (unused without them).
    #[module(skip)]
    pub qk_eps: f64,
    /// `(heads, kv_heads, head_dim)`.
    #[module(skip)]
    pub heads: (usize, usize, usize),
}

/// `y` `[rows, heads * head_dim]` with each head RMS-normalised by `norm` `[head_dim]` (Qwen3's
/// q/k norm), or `y` itself without one: the model's `RmsNorm` on the same `[rows * heads,
/// head_dim]` layout, so both agree bit for bit.
fn head_norm<B: ModelBackend>(
    y: Tensor<B, 2>,
    norm: Option<&Param<Tensor<B, 1>>>,
    eps: f64,
    head_dim: usize,
) -> Tensor<B, 2> {
    match norm {
        None => y,
        Some(w) => {
            let [n, d] = y.dims();
            B::rms_norm(y.reshape([n * d / head_dim, head_dim]), w.val(), eps).reshape([n, d])
        }
    }
}

impl<B: ModelBackend> DecoderWeights<B> {
    /// The layer's forward on `x` `[batch, seq, hidden]` without a graph of its own: the same
    /// ops, on the same layouts, as the model's layer (so the two agree bit for bit).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        key_valid: &Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let (nh, nkv, hd) = self.heads;
        let [b, t, h] = x.dims();
        let n = b * t;
        let groups = nh / nkv;
        let heads = |y: Tensor<B, 2>, k: usize| y.reshape([b, t, k, hd]).swap_dims(1, 2);
        let x = x.reshape([n, h]);
        let n1 = B::rms_norm(x.clone(), self.input_norm.val(), self.eps.0);
        let qn = head_norm(
            self.q_proj.forward(n1.clone()),
            self.q_norm.as_ref(),
            self.qk_eps,
            hd,
        );
        let kn = head_norm(
            self.k_proj.forward(n1.clone()),
            self.k_norm.as_ref(),
            self.qk_eps,
            hd,
        );
        let q = B::rotary(heads(qn, nh), cos.clone(), sin.clone());
        let k = B::rotary(heads(kn, nkv), cos, sin);
        let v = heads(self.v_proj.forward(n1), nkv);
        let q = q.reshape([b, nkv, groups * t, hd]);
        let out = B::causal_attention(q, k, v, key_valid.clone(), groups);
        let a = out
            .reshape([b, nh, t, hd])
            .swap_dims(1, 2)
            .reshape([n, nh * hd]);
        let x2 = x + self.o_proj.forward(a);
        let n2 = B::rms_norm(x2.clone(), self.post_norm.val(), self.eps.1);
        let mlp_in = B::swiglu(self.gate_proj.forward(n2.clone()), self.up_proj.forward(n2));
        (x2 + self.down_proj.forward(mlp_in)).reshape([b, t, h])
    }
}

/// Base parameters of a decoder layer, in the order [`layer_backward`] returns their
/// gradients: input norm; q, k, v weight and bias; o weight; post-attention norm; gate, up, down
/// weights; o bias; q norm; k norm. A slot the layer lacks (Qwen3 without biases, Qwen2 without
/// o bias or q/k norms) is empty.
const BASE_PARAMS: usize = 15;
/// Projections that may carry a LoRA adapter, in the order of their `(A, B)` gradients after
/// the base ones: q, k, v, o, gate, up, down.
const PROJECTIONS: usize = 7;
/// All parameter slots: the base ones, then `A` and `B` of each projection's adapter (empty
/// slots when a projection has none).
const PARAMS: usize = BASE_PARAMS + 2 * PROJECTIONS;
/// Graph parents of a checkpointed layer: its input, then its parameters.
const NODES: usize = PARAMS + 1;

impl<B: Backend> DecoderWeights<B> {
    /// The projections in adapter-slot order.
    fn projections(&self) -> [&Linear<B>; PROJECTIONS] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }
}

/// The layer's parameters as primitives in [`PARAMS`] order (`None`: a projection without an
/// adapter).
fn params<B: Backend>(w: &DecoderWeights<B>) -> [Option<FloatTensor<B>>; PARAMS] {
    let p = |l: &Linear<B>| Some(l.weight.val().into_primitive().tensor());
    let bias = |l: &Linear<B>| l.bias.as_ref().map(|b| b.val().into_primitive().tensor());
    let norm = |n: &Param<Tensor<B, 1>>| Some(n.val().into_primitive().tensor());
    let head_norm = |n: &Option<Param<Tensor<B, 1>>>| n.as_ref().and_then(norm);
    let mut out: [Option<FloatTensor<B>>; PARAMS] = Default::default();
    let base = [
        norm(&w.input_norm),
        p(&w.q_proj),
        bias(&w.q_proj),
        p(&w.k_proj),
        bias(&w.k_proj),
        p(&w.v_proj),
        bias(&w.v_proj),
        p(&w.o_proj),
        norm(&w.post_norm),
        p(&w.gate_proj),
        p(&w.up_proj),
        p(&w.down_proj),
        bias(&w.o_proj),
        head_norm(&w.q_norm),
        head_norm(&w.k_norm),
    ];
    for (slot, t) in out.iter_mut().zip(base) {
        *slot = t;
    }
    for (j, l) in w.projections().into_iter().enumerate() {
        if let Some(lora) = &l.lora {
            out[BASE_PARAMS + 2 * j] = Some(lora.a.val().into_primitive().tensor());
            out[BASE_PARAMS + 2 * j + 1] = Some(lora.b.val().into_primitive().tensor());
        }
    }
    out
}

/// `x W (+ b)` (plus the adapter's update) on rows `[n, in]`.
fn linear<B: Backend>(l: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    l.forward(x)
}

/// Gradients of one projection `y = x W + s (x A) B` given `dy`: always `dx`; `dW`, `dA` and
/// `dB` only when asked for (a frozen base weight costs no product).
struct LinearGrads<B: Backend> {
    dx: Tensor<B, 2>,
    dw: Option<Tensor<B, 2>>,
    da: Option<Tensor<B, 2>>,
    db: Option<Tensor<B, 2>>,
}

/// [`LinearGrads`] of `l` at input `x`; `need` = `(dW, dA, dB)` wanted.
fn linear_backward<B: Backend>(
    l: &Linear<B>,
    x: Tensor<B, 2>,
    dy: Tensor<B, 2>,
    need: (bool, bool, bool),
) -> LinearGrads<B> {
    let dtype = dy.dtype();
    let as_dy = |t: Tensor<B, 2>| in_dtype(t, dtype);
    let w = as_dy(l.weight.val());
    // dx = dy Wᵀ = (W dyᵀ)ᵀ: multiplies the weight as stored.
    let mut dx = w.matmul(dy.clone().transpose()).transpose();
    let dw = need.0.then(|| x.clone().transpose().matmul(dy.clone()));
    let (mut da, mut db) = (None, None);
    if let Some(lora) = &l.lora {
        let (a, b) = (as_dy(lora.a.val()), as_dy(lora.b.val()));
        // g = s dy Bᵀ `[n, r]`: the gradient at the adapter's bottleneck.
        let g = dy.clone().matmul(b.transpose()).mul_scalar(lora.scaling);
        dx = dx + g.clone().matmul(a.clone().transpose());
        if need.1 {
            da = Some(x.clone().transpose().matmul(g));
        }
        if need.2 {
            db = Some(x.matmul(a).transpose().matmul(dy).mul_scalar(lora.scaling));
        }
    }
    LinearGrads { dx, dw, da, db }
}

/// The layer's input and everything else its recomputation needs.
#[derive(Clone, Debug)]
struct LayerInputs<B: Backend> {
    x: Tensor<B, 3>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
}

/// Parameter gradients in [`PARAMS`] order; `None` where not asked for.
type ParamGrads<B> = [Option<Tensor<B, 2>>; PARAMS];

/// `(dx, parameter gradients)` of the layer's output given its gradient `dy`, re-running the
/// forward first; only the gradients `need` marks are computed (frozen weights cost nothing).
fn layer_backward<B: ModelBackend>(
    layer: &DecoderWeights<B>,
    inputs: LayerInputs<B>,
    dy: Tensor<B, 3>,
    need: [bool; PARAMS],
) -> (Tensor<B, 3>, ParamGrads<B>) {
    let LayerInputs {
        x,
        cos,
        sin,
        key_valid,
    } = inputs;
    let (nh, nkv, hd) = layer.heads;
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
    let norm =
        |(w, eps): (&Param<Tensor<B, 1>>, f64), x: Tensor<B, 2>| B::rms_norm(x, w.val(), eps);
    let norm_backward =
        |(w, eps): (&Param<Tensor<B, 1>>, f64), x: Tensor<B, 2>, d: Tensor<B, 2>| {
            let (dx, dw) = B::rms_norm_backward(x, w.val(), eps, d);
            (dx, dw.unsqueeze::<2>())
        };
    let input_norm = (&layer.input_norm, layer.eps.0);
    let post_norm = (&layer.post_norm, layer.eps.1);
    let n1 = norm(input_norm, x.clone());
    // Qwen3's q/k norm: its input is kept for the backward.
    let (q_norm, k_norm) = (layer.q_norm.as_ref(), layer.k_norm.as_ref());
    let (q_pre, k_pre) = (
        linear(&layer.q_proj, n1.clone()),
        linear(&layer.k_proj, n1.clone()),
    );
    let q = B::rotary(
        heads(head_norm(q_pre.clone(), q_norm, layer.qk_eps, hd), nh),
        cos.clone(),
        sin.clone(),
    );
    let k = B::rotary(
        heads(head_norm(k_pre.clone(), k_norm, layer.qk_eps, hd), nkv),
        cos.clone(),
        sin.clone(),
    );
    let v = heads(linear(&layer.v_proj, n1.clone()), nkv);
    let q = q.reshape([b, nkv, groups * t, hd]);
    let (out, lse) =
        B::causal_attention_lse(q.clone(), k.clone(), v.clone(), key_valid.clone(), groups);
    let a = unheads(out.clone().reshape([b, nh, t, hd]), nh);
    let x2 = x.clone() + linear(&layer.o_proj, a.clone());
    let n2 = norm(post_norm, x2.clone());
    let gate = linear(&layer.gate_proj, n2.clone());
    let up = linear(&layer.up_proj, n2.clone());
    let mlp_in = B::swiglu(gate.clone(), up.clone());

    // Backward.
    let mut grads: ParamGrads<B> = Default::default();
    // Projection `j` (adapter-slot order) with base weight slot `w`, leaving its gradients.
    let mut proj = |j: usize, w: usize, x: Tensor<B, 2>, dy: Tensor<B, 2>| {
        let l = layer.projections()[j];
        let (a, b) = (BASE_PARAMS + 2 * j, BASE_PARAMS + 2 * j + 1);
        let g = linear_backward(l, x, dy, (need[w], need[a], need[b]));
        (grads[w], grads[a], grads[b]) = (g.dw, g.da, g.db);
        g.dx
    };
    let dy = rows(dy);
    let d_mlp_in = proj(6, 11, mlp_in, dy.clone());
    let (d_gate, d_up) = B::swiglu_backward(gate, up, d_mlp_in);
    let dn2_gate = proj(4, 9, n2.clone(), d_gate);
    let dn2_up = proj(5, 10, n2, d_up);
    let (dx2_norm, d_norm2) = norm_backward(post_norm, x2, dn2_gate + dn2_up);
    let dx2 = dy + dx2_norm;
    let d_ob = need[12].then(|| dx2.clone().sum_dim(0));
    let da = proj(3, 7, a, dx2.clone());
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
    // Through the q/k norms (per head, rows `[n * heads, head_dim]`) to the projections' outputs.
    let head_norm_backward =
        |w: Option<&Param<Tensor<B, 1>>>, pre: Tensor<B, 2>, d: Tensor<B, 2>| {
            let Some(w) = w else { return (d, None) };
            let [rows, width] = d.dims();
            let r = rows * width / hd;
            let (dx, dw) = B::rms_norm_backward(
                pre.reshape([r, hd]),
                w.val(),
                layer.qk_eps,
                d.reshape([r, hd]),
            );
            (dx.reshape([rows, width]), Some(dw.unsqueeze::<2>()))
        };
    let (dq, d_qnorm) = head_norm_backward(q_norm, q_pre, dq);
    let (dk, d_knorm) = head_norm_backward(k_norm, k_pre, dk);
    let bias = |d: &Tensor<B, 2>, slot: usize| need[slot].then(|| d.clone().sum_dim(0));
    let (d_qb, d_kb, d_vb) = (bias(&dq, 2), bias(&dk, 4), bias(&dv, 6));
    let dn1_q = proj(0, 1, n1.clone(), dq);
    let dn1_k = proj(1, 3, n1.clone(), dk);
    let dn1_v = proj(2, 5, n1, dv);
    let (dx_norm, d_norm1) = norm_backward(input_norm, x, dn1_q + dn1_k + dn1_v);
    let dx = (dx2 + dx_norm).reshape([b, t, h]);
    grads[0] = need[0].then_some(d_norm1);
    grads[8] = need[8].then_some(d_norm2);
    (grads[2], grads[4], grads[6]) = (d_qb, d_kb, d_vb);
    grads[12] = d_ob;
    grads[13] = d_qnorm.filter(|_| need[13]);
    grads[14] = d_knorm.filter(|_| need[14]);
    (dx, grads)
}

/// The autodiff node of one checkpointed layer: saves the inner layer (its weights are shared
/// with the parameters) and the layer's inputs.
#[derive(Debug)]
struct LayerBackward<B: Backend> {
    layer: DecoderWeights<B>,
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
        let shapes = params(&self.layer).map(|p| p.map(|p| (p.shape(), p.dtype())));
        let need = ops.parents.each_ref().map(Option::is_some);
        let inputs = LayerInputs {
            x: float(x),
            cos: float(cos),
            sin: float(sin),
            key_valid: Tensor::from_primitive(key_valid),
        };
        let mut param_need = [false; PARAMS];
        param_need.copy_from_slice(&need[1..]);
        let (dx, dparams) = layer_backward(&self.layer, inputs, float(dy), param_need);
        let [x_parent, param_parents @ ..] = ops.parents;
        if let Some(node) = x_parent {
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
        for ((parent, grad), meta) in param_parents.into_iter().zip(dparams).zip(shapes) {
            if let (Some(node), Some(grad), Some((shape, dtype))) = (parent, grad, meta) {
                // Norm weights and biases are 1-D; their gradients come as `[1, n]`.
                let grad = B::float_reshape(grad.into_primitive().tensor(), shape);
                let grad = match dtype {
                    DType::F64 | DType::F32 | DType::F16 | DType::BF16 | DType::Flex32
                        if grad.dtype() != dtype =>
                    {
                        B::float_cast(grad, dtype.into())
                    }
                    _ => grad,
                };
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// A decoder layer under `Autodiff` as one recomputing graph node (see the module docs).
pub(super) fn checkpointed_layer<B: ModelBackend, C: CheckpointStrategy>(
    layer: &DecoderWeights<Autodiff<B, C>>,
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
        .forward(inputs.x, inputs.cos, inputs.sin, &inputs.key_valid)
        .into_primitive()
        .tensor();
    // An empty slot (no adapter) is an untracked constant: its parent is `None`.
    let constant = || {
        Tensor::<Autodiff<B, C>, 1>::zeros([1], &layer.input_norm.device())
            .into_primitive()
            .tensor()
            .node
    };
    let params = params(layer);
    let nodes: [_; NODES] = std::array::from_fn(|i| match i {
        0 => x.node.clone(),
        i => params[i - 1]
            .as_ref()
            .map_or_else(constant, |p| p.node.clone()),
    });
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
