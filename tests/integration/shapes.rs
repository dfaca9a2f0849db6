//! Bucketed shapes (padding to a few lengths and batch sizes, for JIT backends) give the exact
//! shapes' results: rollouts (left padding, whole prefill chunks, padded batches, finished
//! samples leaving by bucket, decoding over padded key lengths), and training log-probs and
//! gradients (padded rows and columns), on the tiny GQA model on flex.

use crate::common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use common::model_dir;
use longrl::generate::{sample_seed, Engine, EngineOptions, GenerateRequest, SamplingParams};
use longrl::model::{load_model, Qwen2ForCausalLM};
use longrl::shapes::{ShapeConfig, ShapePolicy, Shapes};
use longrl::train::{Packed, Sequence};

type B = Flex;
type Ad = Autodiff<Flex>;

/// Small buckets, so that the tiny inputs cross several of them.
fn small_buckets() -> Shapes {
    ShapeConfig {
        policy: ShapePolicy::Bucketed,
        seq_multiple: 8,
        seq_linear_until: 32,
        batch_buckets: vec![1, 2, 4, 8],
        warmup: false,
    }
    .resolve::<B>()
}

fn requests() -> Vec<GenerateRequest> {
    let prompts: Vec<Vec<u32>> = vec![
        vec![39, 606, 527, 836, 467, 12, 90],
        vec![5, 77],
        (300..311).collect(),
    ];
    prompts
        .into_iter()
        .enumerate()
        .map(|(i, p)| GenerateRequest {
            prompt: p,
            seeds: (0..3).map(|j| sample_seed(7, i as u64, j)).collect(),
        })
        .collect()
}

#[test]
fn bucketed_rollouts_equal_exact_ones() {
    let model: Qwen2ForCausalLM<B> =
        load_model(model_dir("tiny-qwen2-chatml"), &Default::default()).unwrap();
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 20,
        // About one token in nine stops a sample: they finish at different steps.
        stop_token_ids: (0..1024).step_by(9).collect(),
        ..SamplingParams::default()
    };
    let run = |shapes: Shapes| {
        let options = EngineOptions {
            prefill_chunk: 4,
            shapes,
            ..EngineOptions::default()
        };
        Engine::new(&model, Default::default(), options)
            .generate(&requests(), &params)
            .unwrap()
    };
    let exact = run(Shapes::exact());
    let bucketed = run(small_buckets());
    let lengths: Vec<usize> = exact.iter().flatten().map(|s| s.output_ids.len()).collect();
    assert!(
        lengths.iter().any(|&n| n < 20) && lengths.iter().any(|&n| n > 1),
        "samples should finish at different steps: {lengths:?}"
    );
    for (e, b) in exact.iter().flatten().zip(bucketed.iter().flatten()) {
        assert_eq!(e.output_ids, b.output_ids);
        assert_eq!(e.finish_reason, b.finish_reason);
        for (x, y) in e.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-5, "log-prob {x} vs {y}");
        }
    }
}

/// Every parameter's gradient, flattened, in visiting order.
struct Collect<'a> {
    grads: &'a <Ad as AutodiffBackend>::Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor<Ad> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Ad, D>>) {
        let grad = param.val().grad(self.grads).expect("a gradient");
        self.out.push(grad.into_data().to_vec::<f32>().unwrap());
    }
}

/// Response log-probs (real tokens only) and parameter gradients of a masked-sum loss.
fn logprobs_and_grads(
    model: &Qwen2ForCausalLM<Ad>,
    seqs: &[Sequence<'_>],
    shapes: &Shapes,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let packed = Packed::<Ad>::with_shapes(seqs, 0, shapes, &Default::default());
    let (logp, _) = packed.logprobs(model, 0.9, 5, false).unwrap();
    let loss = (logp.clone() * packed.mask.clone()).sum().neg();
    let grads = loss.backward();
    let mut collect = Collect {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut collect);
    let r = packed.response_cols;
    let values = logp.into_data().to_vec::<f32>().unwrap();
    let rows = packed
        .response_lens
        .iter()
        .enumerate()
        .map(|(i, &n)| values[i * r..i * r + n].to_vec())
        .collect();
    (rows, collect.out)
}

#[test]
fn bucketed_training_batches_give_the_exact_log_probs_and_gradients() {
    let model: Qwen2ForCausalLM<Ad> =
        load_model(model_dir("tiny-qwen2-chatml"), &Default::default()).unwrap();
    let prompts: [Vec<u32>; 3] = [vec![3, 99, 5, 7, 11], (40..61).collect(), vec![8]];
    let responses: [Vec<u32>; 3] = [vec![1, 2, 3], vec![500; 9], (600..612).collect()];
    let seqs: Vec<Sequence<'_>> = prompts
        .iter()
        .zip(&responses)
        .map(|(p, r)| Sequence {
            prompt: p,
            response: r,
        })
        .collect();
    let shapes = small_buckets();
    let packed = Packed::<Ad>::with_shapes(&seqs, 0, &shapes, &Default::default());
    assert_eq!(
        (
            packed.rows,
            packed.response_cols,
            packed.input_ids.dims()[1]
        ),
        (4, 16, 64),
        "3 rows -> 4; 12 response columns -> 16; 21 + 16 - 1 input columns -> 64"
    );
    let (lp_exact, g_exact) = logprobs_and_grads(&model, &seqs, &Shapes::exact());
    let (lp_bucketed, g_bucketed) = logprobs_and_grads(&model, &seqs, &shapes);
    for (e, b) in lp_exact.iter().zip(&lp_bucketed) {
        assert_eq!(e.len(), b.len());
        for (x, y) in e.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "log-prob {x} vs {y}");
        }
    }
    assert_eq!(g_exact.len(), g_bucketed.len());
    for (e, b) in g_exact.iter().zip(&g_bucketed) {
        let scale = e.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        for (x, y) in e.iter().zip(b) {
            assert!((x - y).abs() < 1e-5 * scale, "gradient {x} vs {y}");
        }
    }
}
