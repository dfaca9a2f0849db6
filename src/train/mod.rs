//! What SFT and RL training share: the optimiser (AdamW, schedule, clipping, resumable state),
//! packed batches with response-only log-probs, and the run directory with atomic checkpoints.

pub mod batch;
pub mod optim;
pub mod record;
pub mod run_dir;
pub mod skips;
pub mod warmup;

pub use batch::{token_budget_batches, Packed, Sequence};
pub use optim::{
    clip_grad_norm, grad_norm, scale_grads, stable_param_ids, AdamWOptimizer, FusedAdamW,
    LrSchedule, OptimConfig,
};
pub use run_dir::RunDir;
pub use skips::{SkipCounts, SkipGuard};
pub use warmup::{micro_batch_shapes, warm_up_micro_batches, warm_up_optimizer, MicroBatchShape};

/// Refuses `bf16 = true` (in `section`, e.g. `rl`) on a device that cannot hold bf16 tensors
/// (WGSL on most wgpu adapters, ndarray), before any model is loaded.
pub fn check_bf16<B: burn::tensor::backend::Backend>(
    section: &str,
    bf16: bool,
    device: &B::Device,
) -> crate::error::Result<()> {
    if bf16 && !B::supports_dtype(device, burn::tensor::DType::BF16) {
        return Err(crate::error::Error::Invalid(format!(
            "{section}.bf16 = true: the {} backend cannot compute in bf16 on this device; set \
             bf16 = false or use a CUDA device",
            B::name(device)
        )));
    }
    Ok(())
}
