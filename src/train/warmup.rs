//! Warm-up of training shapes: under bucketed shapes, the micro-batch shapes (rows, input
//! columns, response columns) a stage can pack, each run once through the stage's own forward
//! and backward before the first real step, so that a JIT backend compiles and autotunes them
//! up front (see [`crate::shapes`]).

use std::collections::BTreeSet;

use burn::optim::GradientsParams;

use super::batch::Sequence;
use super::optim::{clip_grad_norm, AdamWOptimizer, OptimConfig};
use crate::error::Result;
use crate::model::{Qwen2ForCausalLM, TrainBackend};
use crate::shapes::Shapes;

/// One micro-batch shape: `rows` sequences, `columns` input columns, `response` response
/// columns (all buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MicroBatchShape {
    /// Rows (a batch bucket).
    pub rows: usize,
    /// Input columns `P + R - 1` (a length bucket).
    pub columns: usize,
    /// Response columns R (a length bucket).
    pub response: usize,
}

/// Every micro-batch shape that sequences with prompts of `prompt_lens` tokens and responses of
/// 1 to `max_response` tokens can be packed into, with at most `max_rows` rows and the rows cut
/// by `token_budget` padded tokens as [`super::token_budget_batches`] cuts them. Empty under
/// exact shapes.
pub fn micro_batch_shapes(
    shapes: &Shapes,
    prompt_lens: &[usize],
    max_response: usize,
    max_rows: usize,
    token_budget: usize,
) -> Vec<MicroBatchShape> {
    if !shapes.is_bucketed() {
        return Vec::new();
    }
    let prompts: BTreeSet<usize> = prompt_lens.iter().map(|&p| p.max(1)).collect();
    let mut out = BTreeSet::new();
    let mut shortest_response = 1;
    for response in shapes.seq_buckets(max_response.max(1)) {
        // The fewest real columns of each input-column bucket, which bounds its rows.
        let mut fewest: Vec<(usize, usize)> = Vec::new();
        for &p in &prompts {
            let columns = shapes.seq(p + response - 1);
            let real = p + shortest_response - 1;
            match fewest.iter_mut().find(|(c, _)| *c == columns) {
                Some((_, f)) => *f = (*f).min(real),
                None => fewest.push((columns, real)),
            }
        }
        for (columns, real) in fewest {
            let most_rows = (token_budget / real.max(1)).clamp(1, max_rows.max(1));
            for rows in shapes.batch_buckets(most_rows) {
                out.insert(MicroBatchShape {
                    rows,
                    columns,
                    response,
                });
            }
        }
        shortest_response = response + 1;
    }
    out.into_iter().collect()
}

/// Hands `pass` (the stage's packing, forward and backward) sequences that pack into each shape
/// of `list` (padding tokens `pad`) under `shapes`; returns the number of passes.
pub fn warm_up_micro_batches(
    list: &[MicroBatchShape],
    pad: u32,
    shapes: &Shapes,
    mut pass: impl FnMut(&[Sequence<'_>]) -> Result<()>,
) -> Result<usize> {
    for shape in list {
        let prompt = vec![pad; shape.columns + 1 - shape.response];
        let response = vec![pad; shape.response];
        let seqs = vec![
            Sequence {
                prompt: &prompt,
                response: &response,
            };
            shape.rows
        ];
        debug_assert_eq!(
            (
                shapes.batch(shape.rows),
                shapes.seq(shape.columns),
                shapes.seq(shape.response)
            ),
            (shape.rows, shape.columns, shape.response),
            "a bucket is its own bucket"
        );
        pass(&seqs)?;
    }
    Ok(list.len())
}

/// Runs the optimiser's update (gradient clipping, then AdamW's first step, which creates the
/// moments, and a later step, which updates them) on `model` with gradients from `grads` and
/// learning rate 0 through a scratch optimiser, so that a JIT backend compiles those kernels
/// before the first real step. The model comes back unchanged (a zero-learning-rate update of
/// finite gradients), and the real optimiser, which the caller keeps, is untouched.
pub fn warm_up_optimizer<B: TrainBackend>(
    model: Qwen2ForCausalLM<B>,
    config: &OptimConfig,
    grads: &mut dyn FnMut(&Qwen2ForCausalLM<B>) -> Result<GradientsParams>,
) -> Result<Qwen2ForCausalLM<B>> {
    let mut scratch = AdamWOptimizer::<B, Qwen2ForCausalLM<B>>::new(config);
    let mut model = model;
    for _ in 0..2 {
        let mut g = grads(&model)?;
        clip_grad_norm::<B, _>(&model, &mut g, config.max_grad_norm);
        model = scratch.step(0.0, model, g);
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{ShapeConfig, ShapePolicy};

    #[test]
    fn shapes_cover_every_packable_micro_batch() {
        let shapes = ShapeConfig {
            policy: ShapePolicy::Bucketed,
            seq_multiple: 8,
            seq_linear_until: 32,
            batch_buckets: vec![1, 2, 4],
            warmup: true,
        }
        .resolve::<burn::backend::Flex>();
        let list = micro_batch_shapes(&shapes, &[5, 20], 12, 4, 64);
        // Responses 1..=8 -> 8 columns, 9..=12 -> 16; prompts 5 and 20.
        let packable = |p: usize, r: usize, n: usize| {
            let got = MicroBatchShape {
                rows: shapes.batch(n),
                columns: shapes.seq(p + shapes.seq(r) - 1),
                response: shapes.seq(r),
            };
            assert!(list.contains(&got), "{got:?} missing from {list:?}");
        };
        for r in 1..=12 {
            packable(5, r, 1);
            packable(20, r, 1);
            packable(5, r, (64 / (5 + r - 1)).min(4));
            packable(20, r, (64 / (20 + r - 1)).clamp(1, 4));
        }
        assert!(micro_batch_shapes(&Shapes::exact(), &[5], 12, 4, 64).is_empty());
    }
}

#[cfg(all(test, feature = "flex"))]
mod optimizer_tests {
    use super::*;
    use crate::model::Qwen2Config;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::Tensor;

    /// A zero gradient for every trainable parameter of `module` (the frozen ones get none, as in a
    /// real backward pass).
    fn zero_grads<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> GradientsParams {
        struct Zeros<B: AutodiffBackend> {
            grads: GradientsParams,
            _backend: std::marker::PhantomData<B>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Zeros<B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let value = param.val();
                if value.is_require_grad() {
                    let zeros = Tensor::<B::InnerBackend, D>::zeros(value.shape(), &value.device());
                    self.grads.register::<B::InnerBackend, D>(param.id, zeros);
                }
            }
        }
        let mut visitor = Zeros::<B> {
            grads: GradientsParams::new(),
            _backend: std::marker::PhantomData,
        };
        module.visit(&mut visitor);
        visitor.grads
    }

    /// Every parameter's values, in visiting order.
    fn values(model: &Qwen2ForCausalLM<Autodiff<Flex>>) -> Vec<Vec<f32>> {
        struct Collect(Vec<Vec<f32>>);
        impl ModuleVisitor<Autodiff<Flex>> for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Autodiff<Flex>, D>>) {
                self.0
                    .push(param.val().into_data().to_vec::<f32>().unwrap());
            }
        }
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        collect.0
    }

    #[test]
    fn optimizer_warm_up_leaves_the_model_unchanged() {
        let config = Qwen2Config::from_file(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/tiny-qwen2-chatml/config.json"),
        )
        .unwrap();
        let model = Qwen2ForCausalLM::<Autodiff<Flex>>::init(&config, &Default::default());
        let before = values(&model);
        let optim = OptimConfig {
            weight_decay: 0.1,
            ..OptimConfig::default()
        };
        let mut grads = |m: &Qwen2ForCausalLM<Autodiff<Flex>>| Ok(zero_grads(m));
        let after = values(&warm_up_optimizer(model, &optim, &mut grads).unwrap());
        assert_eq!(before.len(), after.len());
        assert!(before == after, "a zero update changed the weights");
    }
}
