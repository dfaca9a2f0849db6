//! The Qwen2 / Qwen3 decoder (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen, QwenLong-L1, Qwen3 dense),
//! generic over burn backends. Field names are HuggingFace's parameter names, so a checkpoint's
//! tensors map onto the module tree without a rename table
//! (`model.layers.3.self_attn.q_proj.weight`, `model.layers.3.self_attn.q_norm.weight`, ...).
//!
//! One code path serves both architectures: Qwen3 is Qwen2 with a per-head RMSNorm on queries and
//! keys before RoPE (`q_norm`, `k_norm`), q/k/v/o biases only under `attention_bias`, and a
//! `head_dim` of its own ([`crate::model::config::ModelType`]). [`Qwen3ForCausalLM`] names the
//! same type.

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::{backend::Backend, Bool, DType, FloatDType, Int, Tensor};

use super::cache::{CacheStep, KvCache, LayerKv};
use super::config::Qwen2Config;
use super::lora::LoraConfig;
use super::rope::RopeParams;
use super::weights::{RandomInit, TensorKind, WeightSource};
use crate::error::{Error, Result};
use crate::kernels::{DecoderWeights, HeadLayout, Linear, LoraAdapter, ModelBackend};

/// Root-mean-square layer norm with a learned scale (`weight`, as HF names it).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    fn new<S: WeightSource<B>>(source: &mut S, name: &str, dim: usize, eps: f64) -> Self {
        Self {
            weight: source.param(&format!("{name}.weight"), [dim], TensorKind::NormScale),
            eps,
        }
    }
}

impl<B: ModelBackend> RmsNorm<B> {
    /// Normalises the last dimension of `x` `[.., hidden]`, in f32 whatever the input's dtype
    /// (as transformers does), then scales in the input's dtype ([`ModelBackend::rms_norm`]).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let hidden = dims[D - 1];
        let rows = x.shape().num_elements() / hidden.max(1);
        B::rms_norm(x.reshape([rows, hidden]), self.weight.val(), self.eps).reshape(dims)
    }
}

/// Grouped-query self-attention. Qwen2: biased q/k/v projections, unbiased output projection, no
/// q/k norm. Qwen3: biases on all four only under `attention_bias`, and q/k RMSNorm per head.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[hidden, heads * head_dim]`; bias `[heads * head_dim]` when the config has one.
    pub q_proj: Linear<B>,
    /// `[hidden, kv_heads * head_dim]`; bias when the config has one.
    pub k_proj: Linear<B>,
    /// `[hidden, kv_heads * head_dim]`; bias when the config has one.
    pub v_proj: Linear<B>,
    /// `[heads * head_dim, hidden]`; bias only for Qwen3 with `attention_bias`.
    pub o_proj: Linear<B>,
    /// Qwen3: RMSNorm over each query head, weight `[head_dim]`, applied before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    /// Qwen3: RMSNorm over each key head, weight `[head_dim]`, applied before RoPE.
    pub k_norm: Option<RmsNorm<B>>,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    num_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[hidden, intermediate]`.
    pub gate_proj: Linear<B>,
    /// `[hidden, intermediate]`.
    pub up_proj: Linear<B>,
    /// `[intermediate, hidden]`.
    pub down_proj: Linear<B>,
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Attention block.
    pub self_attn: Attention<B>,
    /// MLP block.
    pub mlp: Mlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The decoder stack without the language-model head (HF `Qwen2Model`).
#[derive(Module, Debug)]
pub struct Qwen2Model<B: Backend> {
    /// Token embeddings, `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
}

/// Qwen2 or Qwen3 with its language-model head (HF `Qwen2ForCausalLM` / `Qwen3ForCausalLM`; the
/// config's [`crate::model::config::ModelType`] says which).
#[derive(Module, Debug)]
pub struct Qwen2ForCausalLM<B: Backend> {
    /// The decoder.
    pub model: Qwen2Model<B>,
    /// Output projection `[hidden, vocab]`; `None` when tied to the embeddings.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    config: Qwen2Config,
    #[module(skip)]
    rope: RopeParams,
    #[module(skip)]
    gradient_checkpointing: bool,
    #[module(skip)]
    compute_dtype: Option<FloatDType>,
}

/// Qwen3 dense: the same type as [`Qwen2ForCausalLM`], which builds q/k norms and the bias layout
/// from a `model_type: "qwen3"` config.
pub type Qwen3ForCausalLM<B> = Qwen2ForCausalLM<B>;

/// A projection named `name` (`...q_proj`) from `source`.
fn linear<B: Backend, S: WeightSource<B>>(
    source: &mut S,
    name: &str,
    [d_in, d_out]: [usize; 2],
    bias: bool,
) -> Linear<B> {
    Linear {
        weight: source.param(
            &format!("{name}.weight"),
            [d_in, d_out],
            TensorKind::LinearWeight,
        ),
        bias: bias.then(|| source.param(&format!("{name}.bias"), [d_out], TensorKind::LinearBias)),
        lora: None,
    }
}

/// Applies `layer` to `[batch, seq, in]` as one `[batch * seq, in]` matrix product: a 3-D input
/// would be a batched matmul against a broadcast weight, which CPU backends run as one product
/// (re-reading the whole weight) per sequence.
fn linear_3d<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = layer.forward(x.reshape([b * t, d]));
    let out = y.dims()[1];
    y.reshape([b, t, out])
}

impl<B: Backend> Attention<B> {
    fn new<S: WeightSource<B>>(source: &mut S, name: &str, c: &Qwen2Config) -> Self {
        let (h, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let (bias, o_bias) = (c.qkv_bias, c.o_proj_bias);
        let head_norm = |source: &mut S, which: &str| {
            c.qk_norm.then(|| {
                RmsNorm::new(
                    source,
                    &format!("{name}.{which}"),
                    c.head_dim,
                    c.rms_norm_eps,
                )
            })
        };
        Self {
            q_proj: linear(source, &format!("{name}.q_proj"), [h, q], bias),
            k_proj: linear(source, &format!("{name}.k_proj"), [h, kv], bias),
            v_proj: linear(source, &format!("{name}.v_proj"), [h, kv], bias),
            o_proj: linear(source, &format!("{name}.o_proj"), [q, h], o_bias),
            q_norm: head_norm(source, "q_norm"),
            k_norm: head_norm(source, "k_norm"),
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        }
    }

    /// `(heads, kv_heads, head_dim)`.
    pub(crate) fn heads(&self) -> (usize, usize, usize) {
        (self.num_heads, self.num_kv_heads, self.head_dim)
    }
}

impl<B: ModelBackend> Attention<B> {
    /// `x` `[batch, seq, hidden]` through `proj` into `heads` heads `[batch, heads, seq,
    /// head_dim]`, each head RMS-normalised by `norm` when given (Qwen3's q/k norm; before RoPE).
    fn project_heads(
        &self,
        proj: &Linear<B>,
        norm: Option<&RmsNorm<B>>,
        x: Tensor<B, 3>,
        heads: usize,
    ) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        let y = linear_3d(proj, x).reshape([b, t, heads, self.head_dim]);
        let y = match norm {
            Some(n) => n.forward(y),
            None => y,
        };
        y.swap_dims(1, 2)
    }

    /// `x` `[batch, seq, hidden]` -> `[batch, seq, hidden]`; with a cache, appends this step's
    /// keys/values at its current length and attends over the keys `key_valid` covers (every
    /// cached one; under padded decoding also unwritten ones past the end, masked out).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        key_valid: &Tensor<B, 2, Bool>,
        cache: Option<CacheStep<B>>,
    ) -> (Tensor<B, 3>, Option<LayerKv<B>>) {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.project_heads(&self.q_proj, self.q_norm.as_ref(), x.clone(), nh);
        let k = self.project_heads(&self.k_proj, self.k_norm.as_ref(), x.clone(), nkv);
        let v = self.project_heads(&self.v_proj, None, x, nkv);
        let q = B::rotary(q, cos.clone(), sin.clone());
        let k = B::rotary(k, cos, sin);
        // The cache is moved in and out (not cloned) so that backends can write it in place.
        let (k, v, cache, padded) = match cache {
            None => (k, v, None, false),
            Some(CacheStep { kv, start, padded }) => {
                let end = start + t;
                // Keys `0..key_len` are attended: `end`, or more under padded decoding.
                let key_len = key_valid.dims()[1];
                let kv = LayerKv {
                    k: kv.k.slice_assign([0..b, 0..nkv, start..end, 0..hd], k),
                    v: kv.v.slice_assign([0..b, 0..nkv, start..end, 0..hd], v),
                };
                (
                    kv.k.clone().slice([0..b, 0..nkv, 0..key_len, 0..hd]),
                    kv.v.clone().slice([0..b, 0..nkv, 0..key_len, 0..hd]),
                    Some(kv),
                    padded,
                )
            }
        };
        // Grouped-query attention without repeating K/V: the `nh / nkv` query heads of each KV
        // head are stacked along the query axis, `[b, nkv, groups * t, hd]`.
        let q = q.reshape([b, nkv, (nh / nkv) * t, hd]);
        let out = if padded {
            B::decode_attention(q, k, v, key_valid.clone())
        } else {
            B::causal_attention(q, k, v, key_valid.clone(), nh / nkv)
        };
        let out = out
            .reshape([b, nh, t, hd])
            .swap_dims(1, 2)
            .reshape([b, t, nh * hd]);
        (linear_3d(&self.o_proj, out), cache)
    }
}

impl<B: Backend> Mlp<B> {
    fn new<S: WeightSource<B>>(source: &mut S, name: &str, c: &Qwen2Config) -> Self {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Self {
            gate_proj: linear(source, &format!("{name}.gate_proj"), [h, i], false),
            up_proj: linear(source, &format!("{name}.up_proj"), [h, i], false),
            down_proj: linear(source, &format!("{name}.down_proj"), [i, h], false),
        }
    }
}

impl<B: ModelBackend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, h] = x.dims();
        let x = x.reshape([b * t, h]);
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        let y = self.down_proj.forward(B::swiglu(gate, up));
        y.reshape([b, t, h])
    }
}

impl<B: Backend> DecoderLayer<B> {
    fn new<S: WeightSource<B>>(source: &mut S, name: &str, c: &Qwen2Config) -> Self {
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        Self {
            self_attn: Attention::new(source, &format!("{name}.self_attn"), c),
            mlp: Mlp::new(source, &format!("{name}.mlp"), c),
            input_layernorm: RmsNorm::new(source, &format!("{name}.input_layernorm"), h, eps),
            post_attention_layernorm: RmsNorm::new(
                source,
                &format!("{name}.post_attention_layernorm"),
                h,
                eps,
            ),
        }
    }
}

impl<B: Backend> DecoderLayer<B> {
    /// The layer's parameters (shared, not copied) as the recomputing kernel takes them
    /// ([`ModelBackend::checkpointed_layer`]).
    pub fn weights(&self) -> DecoderWeights<B> {
        let (a, m) = (&self.self_attn, &self.mlp);
        DecoderWeights {
            input_norm: self.input_layernorm.weight.clone(),
            q_proj: a.q_proj.clone(),
            k_proj: a.k_proj.clone(),
            v_proj: a.v_proj.clone(),
            o_proj: a.o_proj.clone(),
            q_norm: a.q_norm.as_ref().map(|n| n.weight.clone()),
            k_norm: a.k_norm.as_ref().map(|n| n.weight.clone()),
            post_norm: self.post_attention_layernorm.weight.clone(),
            gate_proj: m.gate_proj.clone(),
            up_proj: m.up_proj.clone(),
            down_proj: m.down_proj.clone(),
            eps: (self.input_layernorm.eps, self.post_attention_layernorm.eps),
            qk_eps: a.q_norm.as_ref().map_or(0.0, |n| n.eps),
            heads: a.heads(),
        }
    }
}

impl<B: ModelBackend> DecoderLayer<B> {
    /// `x` `[batch, seq, hidden]` through attention and the MLP, each with its residual; with a
    /// cache, as [`Attention::forward`].
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        key_valid: &Tensor<B, 2, Bool>,
        cache: Option<CacheStep<B>>,
    ) -> (Tensor<B, 3>, Option<LayerKv<B>>) {
        let (h, kv) = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            cos,
            sin,
            key_valid,
            cache,
        );
        let x = x + h;
        let h = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        (x + h, kv)
    }
}

/// FNV-1a of `s`: a stable per-module seed offset.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Default number of positions per chunk when projecting to the vocabulary.
pub const DEFAULT_LOGITS_CHUNK: usize = 256;

impl<B: Backend> Qwen2ForCausalLM<B> {
    /// A randomly initialised model (normal(0, 0.02) weights, as HF's `initializer_range`).
    pub fn init(config: &Qwen2Config, device: &B::Device) -> Self {
        Self::build(config, &mut RandomInit { device })
    }

    /// The model with every tensor taken from `source` by its HF name, in module order.
    pub fn build<S: WeightSource<B>>(config: &Qwen2Config, source: &mut S) -> Self {
        let (h, v) = (config.hidden_size, config.vocab_size);
        let model = Qwen2Model {
            embed_tokens: Embedding {
                weight: source.param("model.embed_tokens.weight", [v, h], TensorKind::Embedding),
            },
            layers: (0..config.num_hidden_layers)
                .map(|i| DecoderLayer::new(source, &format!("model.layers.{i}"), config))
                .collect(),
            norm: RmsNorm::new(source, "model.norm", h, config.rms_norm_eps),
        };
        let lm_head =
            (!config.tie_word_embeddings).then(|| linear(source, "lm_head", [h, v], false));
        Self {
            model,
            lm_head,
            config: config.clone(),
            rope: RopeParams::new(config),
            gradient_checkpointing: false,
            compute_dtype: None,
        }
    }

    /// Every projection of the decoder layers with its HF module path
    /// (`model.layers.3.self_attn.q_proj`) and PEFT module name (`q_proj`), in module order.
    pub fn projections(&self) -> Vec<(String, &'static str, &Linear<B>)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            let (a, m) = (&l.self_attn, &l.mlp);
            for (group, name, p) in [
                ("self_attn", "q_proj", &a.q_proj),
                ("self_attn", "k_proj", &a.k_proj),
                ("self_attn", "v_proj", &a.v_proj),
                ("self_attn", "o_proj", &a.o_proj),
                ("mlp", "gate_proj", &m.gate_proj),
                ("mlp", "up_proj", &m.up_proj),
                ("mlp", "down_proj", &m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{group}.{name}"), name, p));
            }
        }
        out
    }

    /// The model with `f` applied to every decoder projection (module path, PEFT name, layer).
    pub fn map_projections(
        mut self,
        mut f: impl FnMut(&str, &'static str, Linear<B>) -> Result<Linear<B>>,
    ) -> Result<Self> {
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            for (group, name, p) in [
                ("self_attn", "q_proj", &mut a.q_proj),
                ("self_attn", "k_proj", &mut a.k_proj),
                ("self_attn", "v_proj", &mut a.v_proj),
                ("self_attn", "o_proj", &mut a.o_proj),
                ("mlp", "gate_proj", &mut m.gate_proj),
                ("mlp", "up_proj", &mut m.up_proj),
                ("mlp", "down_proj", &mut m.down_proj),
            ] {
                let path = format!("model.layers.{i}.{group}.{name}");
                let owned = std::mem::replace(p, p.without_adapter());
                *p = f(&path, name, owned)?;
            }
        }
        Ok(self)
    }

    /// Whether any projection carries a LoRA adapter.
    pub fn has_adapters(&self) -> bool {
        self.projections().iter().any(|(_, _, p)| p.lora.is_some())
    }

    /// Every weight of the model marked frozen (no gradient, no optimiser state): the base of a
    /// LoRA run. Adapters attached afterwards train.
    pub fn frozen(self) -> Self {
        struct Freeze;
        impl<B: Backend> burn::module::ModuleMapper<B> for Freeze {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                param.set_require_grad(false)
            }
        }
        self.map(&mut Freeze)
    }

    /// Fresh adapters on the projections `lora` targets, on a frozen base, initialised as PEFT
    /// does (`A` Kaiming-uniform with `a = sqrt(5)`, i.e. uniform in `±1/sqrt(in)`; `B` zero),
    /// from `seed` on the host (the same adapters on every backend): the model computes exactly
    /// what the base does until the adapters train.
    pub fn with_lora(self, lora: &LoraConfig, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        lora.targets()?;
        let device = self.model.norm.weight.device();
        self.frozen().map_projections(|path, _, p| {
            if !lora.targets_path(path) {
                return Ok(p);
            }
            let [d_in, d_out] = p.dims();
            let bound = 1.0 / (d_in as f32).sqrt();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ fnv1a(path));
            let a: Vec<f32> = (0..d_in * lora.r)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_data(burn::tensor::TensorData::new(a, [d_in, lora.r]), &device);
            let b = Tensor::zeros([lora.r, d_out], &device);
            let adapter = LoraAdapter::new(a, b, lora.scaling(), lora.lora_dropout);
            Ok(Linear {
                lora: Some(adapter),
                ..p
            })
        })
    }

    /// The same model without its adapters (the weights are shared, not copied): the base that
    /// a LoRA run's KL term compares against.
    pub fn without_adapters(&self) -> Self {
        self.clone()
            .map_projections(|_, _, p| Ok(p.without_adapter()))
            .expect("dropping adapters cannot fail")
    }

    /// The adapters folded into the weights (PEFT's `merge_and_unload`): a plain model that
    /// computes what the adapted one does.
    pub fn merged(&self) -> Self {
        self.clone()
            .map_projections(|_, _, p| Ok(p.merged()))
            .expect("merging cannot fail")
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &Qwen2Config {
        &self.config
    }

    /// Recomputes each decoder layer in the backward pass instead of keeping its activations
    /// (HF's `gradient_checkpointing_enable()`): under `Autodiff`, a layer keeps only its input.
    /// No effect without a graph or with a KV cache.
    pub fn with_gradient_checkpointing(mut self, on: bool) -> Self {
        self.gradient_checkpointing = on;
        self
    }

    /// Mixed precision: forwards without a KV cache (training, scoring) compute in `dtype` (bf16
    /// on GPUs) from copies of the parameters cast inside the graph, so gradients flow back to
    /// the parameters as stored (f32 master weights, f32 optimiser state). RMSNorm and the
    /// softmaxes of attention and of the LM head still run in f32. `None`: the parameters' dtype.
    pub fn with_compute_dtype(mut self, dtype: Option<FloatDType>) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// The dtype set by [`Self::with_compute_dtype`].
    pub fn compute_dtype(&self) -> Option<FloatDType> {
        self.compute_dtype
    }

    /// A copy whose parameters are this model's cast to `dtype` (tracked casts under
    /// `Autodiff`), with no compute dtype of its own.
    fn cast_params(&self, dtype: FloatDType) -> Self {
        struct Cast(FloatDType);
        impl<B: Backend> burn::module::ModuleMapper<B> for Cast {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let dtype = self.0;
                param.map(|t| t.cast(dtype))
            }
        }
        self.clone().with_compute_dtype(None).map(&mut Cast(dtype))
    }

    /// The dtype the forward computes in when given no KV cache.
    fn needs_cast(&self) -> Option<FloatDType> {
        let dtype = self.compute_dtype?;
        let current = self.model.embed_tokens.weight.val().dtype();
        (DType::from(dtype) != current).then_some(dtype)
    }

    /// Whether [`Self::with_gradient_checkpointing`] is on.
    pub fn gradient_checkpointing(&self) -> bool {
        self.gradient_checkpointing
    }

    /// The rotary-embedding parameters in use.
    pub fn rope(&self) -> &RopeParams {
        &self.rope
    }
}

impl<B: ModelBackend> Qwen2ForCausalLM<B> {
    /// Runs the decoder and returns the final hidden states `[batch, seq, hidden]`.
    ///
    /// - `input_ids` `[batch, seq]`: token ids (padding ids are ignored through the mask).
    /// - `attention_mask` `[batch, seq]`: true for real tokens; left or right padding both work.
    /// - `position_ids` `[batch, seq]`: RoPE positions (for left padding, count from each
    ///   sequence's first real token).
    /// - `cache`: when given, this step's keys/values are appended to it and attention covers
    ///   everything cached before (decoding); the cache's length advances by `seq`.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
        position_ids: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        if let (Some(dtype), None) = (self.needs_cast(), cache.as_ref()) {
            return self.cast_params(dtype).forward_hidden(
                input_ids,
                attention_mask,
                position_ids,
                None,
            );
        }
        let [b, t] = input_ids.dims();
        if attention_mask.dims() != [b, t] || position_ids.dims() != [b, t] {
            return Err(Error::Invalid(format!(
                "input_ids {:?}, attention_mask {:?} and position_ids {:?} must have the same shape",
                input_ids.dims(),
                attention_mask.dims(),
                position_ids.dims()
            )));
        }
        let (start, key_len, padded) = match cache.as_deref_mut() {
            Some(c) => {
                if c.batch_size() != b {
                    return Err(Error::Invalid(format!(
                        "KV cache was made for batch {}, got batch {b}",
                        c.batch_size()
                    )));
                }
                c.check_room(t)?;
                let start = c.len;
                c.push_valid(attention_mask.clone());
                let (key_len, padded) = c.attended_keys(t);
                (start, key_len, padded)
            }
            None => (0, t, false),
        };
        let key_valid = match cache.as_deref() {
            Some(c) => c.valid_prefix(key_len),
            None => attention_mask,
        };
        let mut x = self.model.embed_tokens.forward(input_ids);
        let (cos, sin) = self.rope.cos_sin(position_ids);
        let (cos, sin) = (cos.cast(x.dtype()), sin.cast(x.dtype()));
        let mut layer_caches = cache
            .as_deref_mut()
            .map(|c| std::mem::take(&mut c.layers).into_iter());
        let mut updated = Vec::new();
        for layer in &self.model.layers {
            let layer_cache = layer_caches
                .as_mut()
                .and_then(Iterator::next)
                .map(|kv| CacheStep { kv, start, padded });
            if self.gradient_checkpointing && layer_cache.is_none() {
                let weights = layer.weights();
                x = B::checkpointed_layer(&weights, x, cos.clone(), sin.clone(), key_valid.clone());
                continue;
            }
            let (y, kv) = layer.forward(x, cos.clone(), sin.clone(), &key_valid, layer_cache);
            updated.extend(kv);
            x = y;
        }
        if let Some(c) = cache {
            c.layers = updated;
            c.len = start + t;
        }
        Ok(self.model.norm.forward(x))
    }

    /// Projects hidden states `[batch, seq, hidden]` to logits `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => linear_3d(head, hidden),
            None => {
                // logits = (W · hᵀ)ᵀ with the [vocab, hidden] embedding W as stored: transposing W
                // itself would make CPU backends copy the whole matrix (vocab x hidden) per call.
                let [b, t, h] = hidden.dims();
                let w = self.model.embed_tokens.weight.val();
                let v = w.dims()[0];
                w.matmul(hidden.reshape([b * t, h]).transpose())
                    .transpose()
                    .reshape([b, t, v])
            }
        }
    }

    /// Full forward: logits `[batch, seq, vocab]` (see [`Self::forward_hidden`] for the inputs).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
        position_ids: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        let hidden = self.forward_hidden(input_ids, attention_mask, position_ids, cache)?;
        Ok(self.logits(hidden))
    }

    /// Log-probabilities of `targets` `[batch, seq]` under the distribution at each position of
    /// `hidden` `[batch, seq, hidden]`, divided by `temperature` first (as verl does for RL).
    ///
    /// Projects at most `chunk` positions to the vocabulary at a time, in the forward and (under
    /// `Autodiff`) in the backward, so the full `[batch, seq, vocab]` logits never exist (vocab is
    /// 152K for real checkpoints).
    pub fn token_logprobs(
        &self,
        hidden: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        temperature: f32,
        chunk: usize,
    ) -> Tensor<B, 2> {
        self.token_logprobs_entropy(hidden, targets, temperature, chunk)
            .0
    }

    /// As [`Self::token_logprobs`], with the entropy `[batch, seq]` of each position's tempered
    /// distribution (verl's `actor/entropy`; differentiable for an entropy bonus).
    pub fn token_logprobs_entropy(
        &self,
        hidden: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        temperature: f32,
        chunk: usize,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [b, t, h] = hidden.dims();
        let (weight, layout) = match &self.lm_head {
            Some(head) => (head.weight.val(), HeadLayout::HiddenVocab),
            None => (
                self.model.embed_tokens.weight.val(),
                HeadLayout::VocabHidden,
            ),
        };
        // Under mixed precision the hidden states come in the compute dtype.
        let weight = weight.cast(hidden.dtype());
        let out = B::head_logprobs(
            hidden.reshape([b * t, h]),
            weight,
            layout,
            targets.reshape([b * t]),
            temperature,
            chunk.max(1),
        );
        let logp = out.clone().slice([0..b * t, 0..1]).reshape([b, t]);
        let entropy = out.slice([0..b * t, 1..2]).reshape([b, t]);
        (logp, entropy)
    }
}

impl<B: ModelBackend> Qwen2ForCausalLM<B> {
    /// Log-probabilities of each token of `ids` given the tokens before it: entry `t` is
    /// `log p(ids[t + 1] | ids[..=t])`, so the result has `ids.len() - 1` entries.
    pub fn sequence_logprobs(
        &self,
        ids: &[u32],
        chunk: usize,
        device: &B::Device,
    ) -> Result<Vec<f32>> {
        let n = ids.len();
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range for the model's vocab_size {vocab}"
            )));
        }
        if n < 2 {
            return Ok(Vec::new());
        }
        let to_tensor = |v: Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(burn::tensor::TensorData::new(v, [1, n]), device)
        };
        let input = to_tensor(ids.iter().map(|&t| t as i64).collect());
        let positions = to_tensor((0..n as i64).collect());
        let mask = Tensor::<B, 2, Int>::ones([1, n], device).bool();
        let hidden = self.forward_hidden(input.clone(), mask, positions, None)?;
        let [_, _, h] = hidden.dims();
        let hidden = hidden.slice([0..1, 0..n - 1, 0..h]);
        let targets = input.slice([0..1, 1..n]);
        let lp = self.token_logprobs(hidden, targets, 1.0, chunk);
        Ok(lp.into_data().iter::<f32>().collect())
    }
}

#[cfg(test)]
mod gradient_checkpointing_tests {
    //! The recomputing layer node (`crate::kernels::recompute`) against the plain graph, through
    //! the whole model.

    use super::*;
    use crate::model::Qwen2Config;
    use burn::backend::autodiff::checkpoint::strategy::{
        BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
    };
    use burn::backend::Autodiff;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{ElementConversion, TensorData};

    /// Every parameter's gradient, flattened, in visiting order.
    struct Collect<'a, B: burn::tensor::backend::AutodiffBackend> {
        grads: &'a B::Gradients,
        out: Vec<(String, Vec<f32>)>,
    }

    impl<B: burn::tensor::backend::AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.val().is_require_grad() {
                let grad = param.val().grad(self.grads);
                assert!(grad.is_none(), "a frozen parameter got a gradient");
                return;
            }
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

    /// The tiny Qwen3 as shipped: q/k norms with weights away from one, head_dim 24 != 64 / 4,
    /// no biases, tied embeddings.
    fn tiny_qwen3<B: ModelBackend, C: CheckpointStrategy>() -> Qwen2ForCausalLM<Autodiff<B, C>> {
        crate::model::load_model(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen3"),
            &Default::default(),
        )
        .expect("tiny Qwen3")
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

    /// The tiny model with all-linear LoRA adapters on a frozen base, `B` drawn non-zero so both
    /// adapter matrices get a gradient.
    fn tiny_lora<B: ModelBackend, C: CheckpointStrategy>() -> Qwen2ForCausalLM<Autodiff<B, C>> {
        let lora = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: Some(crate::model::TargetModules::Shorthand("all-linear".into())),
            ..Default::default()
        };
        let device = Default::default();
        tiny::<B, C>()
            .with_lora(&lora, 5)
            .expect("valid LoRA settings")
            .map_projections(|_, _, mut p| {
                if let Some(l) = p.lora.as_mut() {
                    let dims = l.b.val().dims();
                    let b = Tensor::random(
                        dims,
                        burn::tensor::Distribution::Normal(0.0, 0.05),
                        &device,
                    );
                    l.b = Param::from_tensor(b);
                }
                Ok(p)
            })
            .expect("adapters")
    }

    fn check<B: ModelBackend, C: CheckpointStrategy>() {
        check_model(tiny::<B, C>());
    }

    /// Recomputed layers give `model` the plain graph's loss and gradients.
    fn check_model<B: ModelBackend, C: CheckpointStrategy>(
        model: Qwen2ForCausalLM<Autodiff<B, C>>,
    ) {
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

    /// LoRA through the recomputing node: the adapters' gradients equal the plain graph's, and
    /// the frozen base gets none (checked while collecting).
    #[cfg(feature = "flex")]
    #[test]
    fn recomputed_layers_give_the_same_lora_gradients_on_flex() {
        let model = tiny_lora::<burn::backend::Flex, NoCheckpointing>();
        assert!(model.has_adapters());
        check_model(model);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn recomputed_layers_give_the_same_gradients_on_flex() {
        check::<burn::backend::Flex, NoCheckpointing>();
        check::<burn::backend::Flex, BalancedCheckpointing>();
    }

    /// Qwen3: the recomputing node's hand-written backward through the q/k norms gives the plain
    /// graph's gradients (q/k norm weights included), with full training and with LoRA.
    #[cfg(feature = "flex")]
    #[test]
    fn recomputed_qwen3_layers_give_the_same_gradients_on_flex() {
        type F = burn::backend::Flex;
        let model = tiny_qwen3::<F, NoCheckpointing>();
        assert!(model.model.layers[0].self_attn.q_norm.is_some());
        check_model(model);
        let lora = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: Some(crate::model::TargetModules::Shorthand("all-linear".into())),
            ..Default::default()
        };
        check_model(
            tiny_qwen3::<F, NoCheckpointing>()
                .with_lora(&lora, 5)
                .unwrap(),
        );
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn recomputed_qwen3_layers_give_the_same_gradients_on_ndarray() {
        check_model(tiny_qwen3::<burn::backend::NdArray, NoCheckpointing>());
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn recomputed_layers_give_the_same_gradients_on_ndarray() {
        check::<burn::backend::NdArray, NoCheckpointing>();
    }
}

#[cfg(test)]
mod layer_weights_tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    /// The recomputing kernel's forward over [`DecoderLayer::weights`] is the model's layer
    /// forward bit for bit (left padding, grouped queries), so gradient checkpointing leaves the
    /// forward pass unchanged.
    fn same_forward<B: ModelBackend>(name: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name);
        let device = Default::default();
        let model = crate::model::load_model::<B>(&dir, &device).expect("tiny model");
        let config = model.config().clone();
        let (b, t, h) = (2, 19, config.hidden_size);
        let x = Tensor::<B, 3>::random([b, t, h], Distribution::Normal(0.0, 1.0), &device);
        let valid: Vec<bool> = (0..b * t).map(|i| i / t == 1 || i % t >= 4).collect();
        let valid = Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [b, t]), &device);
        let pos: Vec<i64> = (0..b * t).map(|i| (i % t) as i64).collect();
        let pos = Tensor::<B, 2, Int>::from_data(TensorData::new(pos, [b, t]), &device);
        let (cos, sin) = model.rope().cos_sin(pos);
        for layer in &model.model.layers {
            let (want, _) = layer.forward(x.clone(), cos.clone(), sin.clone(), &valid, None);
            let got = layer
                .weights()
                .forward(x.clone(), cos.clone(), sin.clone(), &valid);
            assert_eq!(got.into_data(), want.into_data());
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn kernel_layer_forward_is_the_models_on_flex() {
        same_forward::<burn::backend::Flex>("tiny-qwen2-chatml");
        same_forward::<burn::backend::Flex>("tiny-qwen3");
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn kernel_layer_forward_is_the_models_on_ndarray() {
        same_forward::<burn::backend::NdArray>("tiny-qwen2-chatml");
        same_forward::<burn::backend::NdArray>("tiny-qwen3");
    }
}
