//! What SFT and RL training share: the optimiser (AdamW, schedule, clipping, resumable state),
//! packed batches with response-only log-probs, and the run directory with atomic checkpoints.

pub mod batch;
pub mod optim;
pub mod run_dir;
pub mod warmup;

pub use batch::{token_budget_batches, Packed, Sequence};
pub use optim::{
    clip_grad_norm, grad_norm, scale_grads, stable_param_ids, AdamWOptimizer, FusedAdamW,
    LrSchedule, OptimConfig,
};
pub use run_dir::RunDir;
pub use warmup::{micro_batch_shapes, warm_up_micro_batches, MicroBatchShape};
