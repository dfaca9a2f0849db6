//! Where a model's tensors come from while it is built: a checkpoint ([`super::checkpoint`])
//! or a random initialisation ([`RandomInit`]). The model's constructors ask for each tensor by
//! its HF name, so a loaded model is built from the file's tensors directly, never initialised
//! first and overwritten.

use burn::module::Param;
use burn::nn::Initializer;
use burn::tensor::{backend::Backend, Tensor};

/// How a tensor is initialised when not read from a file, and how it is laid out in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// A linear weight: burn's `[in, out]`, stored by HF as `[out, in]`; normal(0, 0.02).
    LinearWeight,
    /// A linear bias `[out]`; normal(0, 0.02) as burn's `Linear`.
    LinearBias,
    /// Token embeddings `[vocab, hidden]`; normal(0, 0.02).
    Embedding,
    /// A norm scale; ones.
    NormScale,
}

/// A supplier of named tensors in the shape the module wants.
pub trait WeightSource<B: Backend> {
    /// The tensor HF names `name`, shaped `shape` (burn's layout), as a parameter.
    fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        kind: TensorKind,
    ) -> Param<Tensor<B, D>>;
}

/// Fresh weights as HF's `initializer_range = 0.02` (normal), norms at one.
pub struct RandomInit<'a, B: Backend> {
    /// Where the tensors are made.
    pub device: &'a B::Device,
}

impl<B: Backend> WeightSource<B> for RandomInit<'_, B> {
    fn param<const D: usize>(
        &mut self,
        _name: &str,
        shape: [usize; D],
        kind: TensorKind,
    ) -> Param<Tensor<B, D>> {
        let init = match kind {
            TensorKind::NormScale => Initializer::Ones,
            _ => Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            },
        };
        // Drawn now: a lazily initialised parameter draws again in each clone.
        Param::from_tensor(init.init(shape, self.device).val())
    }
}
