//! The RL stage's warm-up: under bucketed shapes, before the first step, every rollout shape
//! (prefill, row copy, decoding) and every micro-batch shape of the update (the policy's
//! forward, loss and backward, the reference's forward when the loss has a KL term, and AEPO's
//! entropy forward when it is on) runs once, so that a JIT backend compiles and autotunes them
//! before the first real step.

use std::time::Instant;

use burn::module::AutodiffModule;
use serde::Serialize;

use super::aepo::micro_batch_entropy;
use super::config::RlConfig;
use super::loss::AggScale;
use super::pack::{reference_grid, MicroBatch};
use super::rollout::engine_options;
use super::update::mini_batch_grads;
use crate::data::PreparedPrompt;
use crate::error::Result;
use crate::generate::{Engine, RolloutShapes};
use crate::model::{Qwen2ForCausalLM, TrainBackend};
use crate::shapes::Shapes;
use crate::train::{
    micro_batch_shapes, warm_up_micro_batches, warm_up_optimizer, Packed, Sequence,
};

/// What the warm-up ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WarmUpReport {
    /// Forward passes of the rollout engine.
    pub rollout_passes: usize,
    /// Micro-batch shapes run forward and backward.
    pub update_shapes: usize,
    /// Optimiser updates run (zero updates through a scratch optimiser).
    pub optimizer_steps: usize,
    /// Seconds it took.
    pub seconds: f64,
}

/// Runs the warm-up of a stage over `prompts` (nothing under exact shapes or with
/// `warmup = false`) and hands `policy` back unchanged. `reference` is the KL reference when
/// the loss has one.
pub(crate) fn warm_up<B: TrainBackend>(
    mut policy: Qwen2ForCausalLM<B>,
    reference: Option<&Qwen2ForCausalLM<B::InnerBackend>>,
    prompts: &[PreparedPrompt],
    pad: u32,
    config: &RlConfig,
    device: &B::Device,
) -> Result<(Qwen2ForCausalLM<B>, WarmUpReport)> {
    let shapes = config.shapes.resolve::<B>();
    if !shapes.warmup() {
        return Ok((policy, WarmUpReport::default()));
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
    let fake =
        |seqs: &[Sequence<'_>]| warm_up_micro_batch(reference, seqs, pad, &shapes, config, device);
    let update_shapes = warm_up_micro_batches(&list, pad, &shapes, |seqs| {
        mini_batch_grads(&policy, &[fake(seqs)?], &scale, config).map(|_| ())
    })?;
    if config.loss.aepo {
        let inner = policy.valid();
        warm_up_micro_batches(&list, pad, &shapes, |seqs| {
            micro_batch_entropy(&inner, seqs, pad, &shapes, config, device).map(|_| ())
        })?;
    }
    // The optimiser, fed the gradients of one micro-batch, then of two (their accumulation): the
    // backward's last ops fuse with the update's differently in each case.
    let mut optimizer_steps = 0;
    if let Some(shape) = list.first() {
        for count in [1, 2] {
            let mut grads = |p: &Qwen2ForCausalLM<B>| {
                let mut out = None;
                warm_up_micro_batches(std::slice::from_ref(shape), pad, &shapes, |seqs| {
                    let mbs = (0..count).map(|_| fake(seqs)).collect::<Result<Vec<_>>>()?;
                    out = Some(mini_batch_grads(p, &mbs, &scale, config)?.0);
                    Ok(())
                })?;
                Ok(out.expect("one shape was run"))
            };
            policy = warm_up_optimizer(policy, &config.optim, &mut grads)?;
            optimizer_steps += 2;
        }
    }
    let report = WarmUpReport {
        rollout_passes,
        update_shapes,
        optimizer_steps,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((policy, report))
}

/// A micro-batch of `seqs` (all-zero old log-probs, advantages and mask) built as the real step
/// builds one: grids from host data (a device-side `zeros` would be fused into the loss's
/// kernels, which would then not be the real step's), reference log-probs sliced per row.
fn warm_up_micro_batch<B: TrainBackend>(
    reference: Option<&Qwen2ForCausalLM<B::InnerBackend>>,
    seqs: &[Sequence<'_>],
    pad: u32,
    shapes: &Shapes,
    config: &RlConfig,
    device: &B::Device,
) -> Result<MicroBatch<B>> {
    let ref_rows = match reference {
        Some(r) => {
            let packed = Packed::<B::InnerBackend>::with_shapes(seqs, pad, shapes, device);
            let (logp, _) = packed.logprobs(r, config.temperature, config.logits_chunk, false)?;
            let rows: Vec<_> = (0..seqs.len())
                .map(|i| logp.clone().slice([i..i + 1, 0..seqs[i].response.len()]))
                .collect();
            Some(rows)
        }
        None => None,
    };
    let packed = Packed::<B>::with_shapes(seqs, pad, shapes, device);
    let zeros: Vec<Vec<f32>> = seqs.iter().map(|s| vec![0.0; s.response.len()]).collect();
    let grid = || packed.response_grid(&zeros, device);
    let ref_logp = match &ref_rows {
        Some(rows) => Some(reference_grid::<B>(
            &rows.iter().collect::<Vec<_>>(),
            &packed,
            device,
        )?),
        None => None,
    };
    Ok(MicroBatch {
        old_logp: grid(),
        advantages: grid(),
        mask: grid(),
        ref_logp,
        packed,
    })
}
