//! The RL stage's warm-up: under bucketed shapes, before the first step, every rollout shape
//! (prefill, row copy, decoding) and every micro-batch shape of the update (the policy's
//! forward, loss and backward, and the reference's forward when the loss has a KL term) runs
//! once, so that a JIT backend compiles and autotunes them before the first real step.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use serde::Serialize;

use super::config::RlConfig;
use super::loss::AggScale;
use super::pack::MicroBatch;
use super::rollout::engine_options;
use super::update::mini_batch_grads;
use crate::data::PreparedPrompt;
use crate::error::Result;
use crate::generate::{Engine, RolloutShapes};
use crate::model::{Qwen2ForCausalLM, TrainBackend};
use crate::train::{micro_batch_shapes, warm_up_micro_batches, Packed};

/// What the warm-up ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WarmUpReport {
    /// Forward passes of the rollout engine.
    pub rollout_passes: usize,
    /// Micro-batch shapes run forward and backward.
    pub update_shapes: usize,
    /// Seconds it took.
    pub seconds: f64,
}

/// Runs the warm-up of a stage over `prompts` (nothing under exact shapes or with
/// `warmup = false`). `reference` is the KL reference when the loss has one.
pub(crate) fn warm_up<B: TrainBackend>(
    policy: &Qwen2ForCausalLM<B>,
    reference: Option<&Qwen2ForCausalLM<B::InnerBackend>>,
    prompts: &[PreparedPrompt],
    pad: u32,
    config: &RlConfig,
    device: &B::Device,
) -> Result<WarmUpReport> {
    let shapes = config.shapes.resolve::<B>();
    if !shapes.warmup() {
        return Ok(WarmUpReport::default());
    }
    let t0 = Instant::now();
    let lens: Vec<usize> = prompts.iter().map(|p| p.ids.len()).collect();
    let inner = policy.valid();
    let engine = Engine::new(
        &inner,
        device.clone(),
        engine_options::<B>(config, prompts, pad),
    );
    let gen_batch = config.gen_batch_size.max(config.train_batch_size);
    let rollout_passes = engine.warm_up(&RolloutShapes {
        prompt_lens: lens.clone(),
        prompts_per_call: config.rollout_batch_size.min(gen_batch),
        samples_per_prompt: config.num_generations,
        max_new_tokens: config.max_response_length,
    })?;
    drop(engine);
    drop(inner);
    let list = micro_batch_shapes(
        &shapes,
        &lens,
        config.max_response_length,
        config.ppo_mini_batch_size * config.num_generations,
        config.micro_batch_tokens,
    );
    let scale = AggScale {
        tokens: 1.0,
        sequences: 1.0,
        norm_constant: config.max_response_length as f64,
    };
    let update_shapes = warm_up_micro_batches(&list, pad, &shapes, |seqs| {
        if let Some(r) = reference {
            let packed = Packed::<B::InnerBackend>::with_shapes(seqs, pad, &shapes, device);
            let (logp, _) = packed.logprobs(r, config.temperature, config.logits_chunk, false)?;
            logp.into_data();
        }
        let packed = Packed::<B>::with_shapes(seqs, pad, &shapes, device);
        let zeros = || Tensor::zeros([packed.rows, packed.response_cols], device);
        let mb = MicroBatch {
            old_logp: zeros(),
            advantages: zeros(),
            mask: zeros(),
            ref_logp: reference.map(|_| zeros()),
            packed,
        };
        mini_batch_grads(policy, std::slice::from_ref(&mb), &scale, config)?;
        Ok(())
    })?;
    Ok(WarmUpReport {
        rollout_passes,
        update_shapes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
