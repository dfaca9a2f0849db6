//! The fused ops the model and the optimiser run on, and their autodiff nodes, behind one backend
//! trait, [`ModelBackend`]: burn's [`Backend`](burn::tensor::backend::Backend) plus longrl's
//! memory-bounded and fused kernels.
//!
//! Long-context training cannot keep `L x L` attention scores or `L x vocab` logits for the
//! backward pass, which is what burn 0.21's `Autodiff` does with its decomposed ops. Two kernels
//! ([`attention`], the LM-head log-probs in [`head`]) compute by blocks and, under `Autodiff`,
//! register one graph node each whose backward recomputes the blocks, so memory stays linear in
//! the sequence length; a third makes a whole decoder layer one recomputing node
//! ([`recompute`], gradient checkpointing).
//!
//! RoPE, SwiGLU and RMSNorm are one graph node each too ([`rope`], [`swiglu`], [`norm`]: fewer
//! saved activations and passes than burn's decomposed ops, as Liger's kernels do for PyTorch
//! trainers), and the optimiser's per-parameter AdamW update ([`adamw`]) is a method of the
//! trait, so that a backend can fuse it. Every method has a tensor-op default that any backend
//! runs (wgpu, CUDA, ndarray); burn-flex overrides them with host kernels (`flex`).
//!
//! To add a kernel: a method on [`ModelBackend`] with a tensor-op default, an autodiff node in
//! its own file when the default's graph is too costly (override the method in the
//! `impl ModelBackend for Autodiff<B, C>` of [`backend`]), and a backend's own version in that
//! backend's `impl` (e.g. `flex`), tested against the default.
//!
//! This module knows no model and no training: the model hands it weights
//! ([`DecoderWeights`]), the optimiser hands it per-parameter tensors ([`AdamWHyper`]).

pub mod adamw;
pub mod attention;
pub mod backend;
#[cfg(feature = "flex")]
mod flex;
pub mod head;
pub mod linear;
pub mod norm;
pub mod recompute;
pub mod rope;
pub mod swiglu;

pub use adamw::AdamWHyper;
pub use backend::{ModelBackend, TrainBackend};
pub use head::HeadLayout;
pub use linear::{Linear, LoraAdapter};
pub use recompute::DecoderWeights;
