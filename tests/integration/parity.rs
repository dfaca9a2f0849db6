//! Parity with HuggingFace transformers, from fixtures that `scripts/make_parity_fixtures.py`
//! generates: logits of left- and right-padded batches, greedy continuations with the KV cache, and
//! gradient norms of a cross-entropy loss, for GQA, MHA, tied/untied embeddings and rope scaling,
//! and for Qwen3 (per-head q/k norms, `head_dim` != hidden / heads, with and without
//! `attention_bias`); per-token log-probs of the chunked LM head against transformers'. The same
//! suite runs on every compiled-in backend.

use crate::common;

use std::collections::HashMap;

use burn::module::Param;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{fixture, read_safetensors, Arr};
use longrl::generate::{greedy, GreedyConfig};
use longrl::model::{load_model, ModelBackend, Qwen2ForCausalLM, RopeParams, TrainBackend};
use serde_json::Value;

const VARIANTS: &[&str] = &[
    "gqa_untied",
    "mha_tied",
    "rope_linear",
    "rope_yarn",
    "qwen3_untied",
    "qwen3_bias_tied",
];
/// Tolerances of one backend against the transformers fixtures.
#[derive(Clone, Copy)]
struct Tol {
    /// Max |logit difference|.
    logits: f64,
    /// Relative difference of every gradient norm and of the total.
    grad_rel: f64,
    /// Relative difference of the loss.
    loss_rel: f64,
}

/// Exact f32 backends (flex, ndarray, wgpu): the bounds.
const F32: Tol = Tol {
    logits: 1e-4,
    grad_rel: 1e-4,
    loss_rel: 1e-5,
};

/// CUDA: burn's autotuned matmuls run f32 inputs on tensor cores in TF32 (10-bit mantissa, as
/// PyTorch does with `allow_tf32`), so products carry ~1e-3 relative error.
#[cfg(feature = "cuda")]
const TF32: Tol = Tol {
    logits: 5e-3,
    grad_rel: 1e-2,
    loss_rel: 2e-4,
};

fn int2<B: Backend>(a: &Arr, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(a.i64s(), [a.shape[0], a.shape[1]]), device)
}

fn mask2<B: Backend>(a: &Arr, device: &B::Device) -> Tensor<B, 2, Bool> {
    let v: Vec<bool> = a.data.iter().map(|&x| x != 0.0).collect();
    Tensor::from_data(TensorData::new(v, [a.shape[0], a.shape[1]]), device)
}

/// Max |ours - theirs| over positions whose mask is 1.
fn masked_max_diff(ours: &[f32], theirs: &Arr, mask: &Arr) -> f64 {
    let [b, t, v] = [theirs.shape[0], theirs.shape[1], theirs.shape[2]];
    assert_eq!(ours.len(), b * t * v, "logits size");
    let mut worst = 0f64;
    for r in 0..b {
        for p in 0..t {
            if mask.data[r * t + p] == 0.0 {
                continue;
            }
            for k in 0..v {
                let i = (r * t + p) * v + k;
                worst = worst.max((ours[i] as f64 - theirs.data[i]).abs());
            }
        }
    }
    worst
}

fn check_logits<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    fx: &HashMap<String, Arr>,
    prefix: &str,
    device: &B::Device,
    name: &str,
    tol: Tol,
) {
    let ids = &fx[&format!("{prefix}input_ids")];
    let mask = &fx[&format!("{prefix}attention_mask")];
    let pos = &fx[&format!("{prefix}position_ids")];
    let logits = model
        .forward(
            int2::<B>(ids, device),
            mask2::<B>(mask, device),
            int2::<B>(pos, device),
            None,
        )
        .unwrap();
    let ours: Vec<f32> = logits.into_data().iter::<f32>().collect();
    let diff = masked_max_diff(&ours, &fx[&format!("{prefix}logits")], mask);
    eprintln!("{name} {prefix}logits: max abs diff {diff:.2e}");
    assert!(
        diff <= tol.logits,
        "{name} {prefix}logits: max abs diff {diff:e} > {:e}",
        tol.logits
    );
}

/// Per-token log-probs through the model's chunked LM head ([`Qwen2ForCausalLM::sequence_logprobs`]
/// on each unpadded prompt) against the log-softmax of transformers' logits.
fn check_token_logprobs<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    fx: &HashMap<String, Arr>,
    device: &B::Device,
    name: &str,
    tol: Tol,
) {
    let (ids, mask, logits) = (&fx["input_ids"], &fx["attention_mask"], &fx["logits"]);
    let [b, t, v] = [logits.shape[0], logits.shape[1], logits.shape[2]];
    let mut worst = 0f64;
    for r in 0..b {
        let start = (0..t).find(|&p| mask.data[r * t + p] != 0.0).unwrap();
        let row: Vec<u32> = ids.row(r)[start..].iter().map(|&x| x as u32).collect();
        let ours = model.sequence_logprobs(&row, 4, device).unwrap();
        for (k, got) in ours.iter().enumerate() {
            let at = &logits.row(r)[(start + k) * v..(start + k + 1) * v];
            let max = at.iter().copied().fold(f64::MIN, f64::max);
            let lse = max + at.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            let want = at[row[k + 1] as usize] - lse;
            worst = worst.max((*got as f64 - want).abs());
        }
    }
    eprintln!("{name} token log-probs: max abs diff {worst:.2e}");
    assert!(
        worst <= tol.logits,
        "{name}: token log-probs max abs diff {worst:e} > {:e}",
        tol.logits
    );
}

fn check_greedy<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    fx: &HashMap<String, Arr>,
    new_tokens: usize,
    device: &B::Device,
    name: &str,
) {
    let mut prompts = Vec::new();
    let mut expected = Vec::new();
    for i in 0.. {
        let Some(seq) = fx.get(&format!("greedy_{i}")) else {
            break;
        };
        let ids: Vec<u32> = seq.i64s().iter().map(|&x| x as u32).collect();
        let (p, c) = ids.split_at(ids.len() - new_tokens);
        prompts.push(p.to_vec());
        expected.push(c.to_vec());
    }
    assert!(
        prompts.len() >= 3,
        "{name}: fixture has {} greedy cases",
        prompts.len()
    );
    let cfg = GreedyConfig {
        max_new_tokens: new_tokens,
        stop_token_ids: vec![],
        pad_token_id: 0,
        prefill_chunk: 5,
        ..GreedyConfig::default()
    };
    // One at a time, then all together (left-padded in one batch, chunked prefill).
    for (p, e) in prompts.iter().zip(&expected) {
        let out = greedy(model, std::slice::from_ref(p), &cfg, device).unwrap();
        assert_eq!(
            &out[0].output_ids, e,
            "{name}: greedy continuation of {p:?}"
        );
    }
    let out = greedy(model, &prompts, &cfg, device).unwrap();
    for (o, e) in out.iter().zip(&expected) {
        assert_eq!(&o.output_ids, e, "{name}: batched greedy continuation");
    }
}

/// Gradient norm of a parameter of any rank (the gradient is looked up on the parameter itself).
fn grad_norm<B: AutodiffBackend, const D: usize>(
    p: &Param<Tensor<B, D>>,
    grads: &B::Gradients,
    name: &str,
) -> f64 {
    let g = p
        .val()
        .grad(grads)
        .unwrap_or_else(|| panic!("no gradient for {name}"));
    g.square().sum().into_scalar().elem::<f64>().sqrt()
}

/// (HF name, gradient norm) of every float parameter of the model.
fn grad_norms<B: AutodiffBackend>(
    m: &Qwen2ForCausalLM<B>,
    grads: &B::Gradients,
) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut push2 = |name: String, p: &Param<Tensor<B, 2>>| {
        let n = grad_norm(p, grads, &name);
        out.push((name, n));
    };
    push2(
        "model.embed_tokens.weight".into(),
        &m.model.embed_tokens.weight,
    );
    let mut ones = Vec::new();
    for (i, l) in m.model.layers.iter().enumerate() {
        let pre = format!("model.layers.{i}");
        for (n, lin) in [
            ("self_attn.q_proj", &l.self_attn.q_proj),
            ("self_attn.k_proj", &l.self_attn.k_proj),
            ("self_attn.v_proj", &l.self_attn.v_proj),
            ("self_attn.o_proj", &l.self_attn.o_proj),
            ("mlp.gate_proj", &l.mlp.gate_proj),
            ("mlp.up_proj", &l.mlp.up_proj),
            ("mlp.down_proj", &l.mlp.down_proj),
        ] {
            push2(format!("{pre}.{n}.weight"), &lin.weight);
            if let Some(b) = &lin.bias {
                ones.push((format!("{pre}.{n}.bias"), b));
            }
        }
        for (n, norm) in [
            ("q_norm", &l.self_attn.q_norm),
            ("k_norm", &l.self_attn.k_norm),
        ] {
            if let Some(norm) = norm {
                ones.push((format!("{pre}.self_attn.{n}.weight"), &norm.weight));
            }
        }
        ones.push((
            format!("{pre}.input_layernorm.weight"),
            &l.input_layernorm.weight,
        ));
        ones.push((
            format!("{pre}.post_attention_layernorm.weight"),
            &l.post_attention_layernorm.weight,
        ));
    }
    ones.push(("model.norm.weight".into(), &m.model.norm.weight));
    if let Some(h) = &m.lm_head {
        push2("lm_head.weight".into(), &h.weight);
    }
    for (name, p) in ones {
        let n = grad_norm(p, grads, &name);
        out.push((name, n));
    }
    out
}

fn check_gradients<B: TrainBackend>(
    model: &Qwen2ForCausalLM<B>,
    fx: &HashMap<String, Arr>,
    meta: &Value,
    device: &B::Device,
    name: &str,
    tol: Tol,
) {
    let ids = &fx["input_ids"];
    let mask = &fx["attention_mask"];
    let [b, t] = [ids.shape[0], ids.shape[1]];
    let logits = model
        .forward(
            int2::<B>(ids, device),
            mask2::<B>(mask, device),
            int2::<B>(&fx["position_ids"], device),
            None,
        )
        .unwrap();
    let v = logits.dims()[2];
    let logp = log_softmax(logits.slice([0..b, 0..t - 1, 0..v]), 2);
    let targets = int2::<B>(ids, device)
        .slice([0..b, 1..t])
        .unsqueeze_dim::<3>(2);
    let tok_lp = logp.gather(2, targets).squeeze_dim::<2>(2);
    let m: Vec<f32> = (0..b)
        .flat_map(|r| (0..t - 1).map(move |p| (r, p)))
        .map(|(r, p)| (mask.data[r * t + p] * mask.data[r * t + p + 1]) as f32)
        .collect();
    let count: f32 = m.iter().sum();
    let w = Tensor::<B, 2>::from_data(TensorData::new(m, [b, t - 1]), device);
    let loss = (tok_lp * w).sum().neg().div_scalar(count);
    let loss_val = loss.clone().into_scalar().elem::<f64>();
    let want_loss = fx["loss"].data[0];
    let loss_rel = (loss_val - want_loss).abs() / want_loss.abs().max(1.0);
    eprintln!("{name}: loss rel diff {loss_rel:.2e}");
    assert!(
        loss_rel <= tol.loss_rel,
        "{name}: loss {loss_val} vs transformers {want_loss}"
    );
    let grads = loss.backward();
    let want = meta["grad_norms"]
        .as_object()
        .expect("grad_norms in fixture.json");
    let norms = grad_norms(model, &grads);
    assert_eq!(
        norms.len(),
        want.len(),
        "{name}: parameter count vs fixture grad_norms"
    );
    let mut total_sq = 0f64;
    let mut worst = 0f64;
    for (pname, norm) in norms {
        total_sq += norm * norm;
        let expect = want
            .get(&pname)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{name}: fixture lacks {pname}"));
        let rel = (norm - expect).abs() / expect.abs().max(1e-12);
        worst = worst.max(rel);
        assert!(
            rel <= tol.grad_rel,
            "{name}: grad norm of {pname}: {norm:e} vs transformers {expect:e} (rel {rel:e})"
        );
    }
    let total = meta["total_grad_norm"].as_f64().unwrap();
    let rel = (total_sq.sqrt() - total).abs() / total;
    eprintln!("{name}: grad norms worst rel diff {worst:.2e}, total {rel:.2e}");
    assert!(
        rel <= tol.grad_rel,
        "{name}: total grad norm rel diff {rel:e}"
    );
}

fn check_rope(model_rope: &RopeParams, meta: &Value, name: &str) {
    if let Some(inv) = meta.get("inv_freq").and_then(Value::as_array) {
        assert_eq!(
            inv.len(),
            model_rope.inv_freq.len(),
            "{name}: inv_freq length"
        );
        for (i, (a, b)) in model_rope.inv_freq.iter().zip(inv).enumerate() {
            let b = b.as_f64().unwrap();
            assert!(
                ((*a as f64) - b).abs() <= 1e-6 * b.abs().max(1e-30) + 1e-12,
                "{name}: inv_freq[{i}] {a} vs {b}"
            );
        }
    }
    if let Some(f) = meta.get("attention_factor").and_then(Value::as_f64) {
        assert!(
            (model_rope.attention_factor as f64 - f).abs() < 1e-6,
            "{name}: attention_factor"
        );
    }
}

/// The variants run on wgpu (lavapipe compiles every shape's kernels, ~90 s per variant): the
/// RoPE-scaling variants are left to the CPU backends, since scaling only changes the host-built
/// inverse frequencies and cos/sin factor that the same device ops consume as in plain RoPE.
const WGPU_VARIANTS: &[&str] = &["gqa_untied", "mha_tied", "qwen3_untied", "qwen3_bias_tied"];

/// The suite on one autodiff backend, for the fixture variants `variants`.
fn parity_suite<B: TrainBackend>(device: B::Device, tol: Tol, variants: &[&str]) {
    for name in variants {
        let dir = fixture(&format!("parity/{name}"));
        let fx = read_safetensors(&dir.join("fixture.safetensors"));
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("fixture.json")).unwrap())
                .unwrap();
        let new_tokens = meta["greedy_new_tokens"].as_u64().unwrap() as usize;
        let model = load_model::<B>(&dir, &device).unwrap();
        check_rope(model.rope(), &meta, name);
        check_gradients(&model, &fx, &meta, &device, name, tol);
        let inner = model.valid();
        let inner_device = device.clone();
        check_logits::<B::InnerBackend>(&inner, &fx, "", &inner_device, name, tol);
        check_logits::<B::InnerBackend>(&inner, &fx, "rp_", &inner_device, name, tol);
        check_token_logprobs::<B::InnerBackend>(&inner, &fx, &inner_device, name, tol);
        check_greedy::<B::InnerBackend>(&inner, &fx, new_tokens, &inner_device, name);
    }
}

use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;

#[cfg(feature = "flex")]
#[test]
fn parity_flex() {
    parity_suite::<burn::backend::Autodiff<burn::backend::Flex>>(Default::default(), F32, VARIANTS);
}

#[cfg(feature = "ndarray")]
#[test]
fn parity_ndarray() {
    parity_suite::<burn::backend::Autodiff<burn::backend::NdArray>>(
        Default::default(),
        F32,
        VARIANTS,
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn parity_wgpu() {
    parity_suite::<burn::backend::Autodiff<burn::backend::Wgpu>>(
        Default::default(),
        F32,
        WGPU_VARIANTS,
    );
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a CUDA machine"]
fn parity_cuda() {
    parity_suite::<burn::backend::Autodiff<burn::backend::Cuda>>(
        Default::default(),
        TF32,
        VARIANTS,
    );
}
