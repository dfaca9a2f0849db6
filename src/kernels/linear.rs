//! The linear projection, `x W + b`, with an optional LoRA adapter adding
//! `scaling * (dropout(x) A) B` (PEFT's `lora.Linear`). The model's projections and the
//! recomputing layer ([`super::recompute`]) both run it, so the adapter is in every forward and
//! every backward.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};

/// `t` in `dtype` (a cast only when it differs).
pub(crate) fn in_dtype<const D: usize, B: Backend>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

/// A low-rank adapter of one projection: `A` `[in, r]`, `B` `[r, out]` (PEFT stores them
/// transposed, `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `lora_A`, `[in, r]`.
    pub a: Param<Tensor<B, 2>>,
    /// `lora_B`, `[r, out]`.
    pub b: Param<Tensor<B, 2>>,
    /// Multiplier of the update (`lora_alpha / r`, or `/ sqrt(r)` with rsLoRA).
    #[module(skip)]
    pub scaling: f64,
    /// Dropout probability on the adapter's input while training.
    #[module(skip)]
    pub dropout: f64,
}

impl<B: Backend> LoraAdapter<B> {
    /// An adapter from `A` `[in, r]` and `B` `[r, out]`.
    pub fn new(a: Tensor<B, 2>, b: Tensor<B, 2>, scaling: f64, dropout: f64) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scaling,
            dropout,
        }
    }

    /// `scaling * (dropout(x) A) B` for `x` `[.., in]`, computed in `x`'s dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = if self.dropout > 0.0 && B::ad_enabled(&x.device()) {
            let keep = x.random_like(Distribution::Bernoulli(1.0 - self.dropout));
            x * keep.cast(dtype) / (1.0 - self.dropout)
        } else {
            x
        };
        let a = in_dtype(self.a.val(), dtype);
        let b = in_dtype(self.b.val(), dtype);
        burn::tensor::module::linear(burn::tensor::module::linear(x, a, None), b, None)
            .mul_scalar(self.scaling)
    }

    /// The update as a dense `[in, out]` matrix, `scaling * A B` (what merging adds to `W`).
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scaling)
    }
}

/// `y = x W + b`, HF's `nn.Linear` with burn's weight layout, plus an optional adapter.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]` (the transpose of HF's `[out, in]`).
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`, when the projection has one.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The LoRA adapter, when this projection is one of `[lora] target_modules`.
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.shape().dims()
    }

    /// `x` `[.., in]` -> `[.., out]`. The base weights are used in `x`'s dtype (a bf16 base
    /// under f32 activations is cast, as is an f32 adapter under bf16 activations).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let w = in_dtype(self.weight.val(), dtype);
        let bias = self.bias.as_ref().map(|b| in_dtype(b.val(), dtype));
        match &self.lora {
            None => burn::tensor::module::linear(x, w, bias),
            Some(lora) => burn::tensor::module::linear(x.clone(), w, bias) + lora.forward(x),
        }
    }

    /// The projection without its adapter (shares the weights).
    pub fn without_adapter(&self) -> Self {
        Self {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            lora: None,
        }
    }

    /// The adapter folded into the weight, `W + scaling * A B` (PEFT's `merge_and_unload`),
    /// in the weight's dtype.
    pub fn merged(&self) -> Self {
        let weight = match &self.lora {
            None => return self.without_adapter(),
            Some(lora) => {
                let w = self.weight.val();
                let dtype = w.dtype();
                let merged = in_dtype(w, DType::F32) + lora.delta();
                Param::initialized(self.weight.id, in_dtype(merged, dtype).detach())
            }
        };
        Self {
            weight,
            bias: self.bias.clone(),
            lora: None,
        }
    }
}
