//! The rollout engine on the shipped tiny model: greedy equivalences, shared-prefix groups versus
//! independent runs, behaviour log-probs versus the trainer-side forward, stop tokens and strings,
//! compaction, determinism and the cache limit.

use crate::common;

use burn::backend::Flex;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::model_dir;
use longrl::generate::{
    sample_seed, Engine, EngineOptions, FinishReason, GenerateRequest, Sample, SamplingParams,
};
use longrl::model::{load_model, Qwen2ForCausalLM};
use longrl::tokenizer::Tokenizer;

type B = Flex;

fn model() -> Qwen2ForCausalLM<B> {
    load_model::<B>(model_dir("tiny-qwen2-chatml"), &Default::default()).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![39, 606, 527, 836, 467, 12, 90],
        vec![5, 77],
        vec![300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310],
    ]
}

fn requests(prompts: &[Vec<u32>], n: u64, seed: u64) -> Vec<GenerateRequest> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenerateRequest {
            prompt: p.clone(),
            seeds: (0..n).map(|j| sample_seed(seed, i as u64, j)).collect(),
        })
        .collect()
}

fn sampled(t: f32, top_p: f32, top_k: usize, new: usize) -> SamplingParams {
    SamplingParams {
        temperature: t,
        top_p,
        top_k,
        max_new_tokens: new,
        ..SamplingParams::default()
    }
}

fn run(
    model: &Qwen2ForCausalLM<B>,
    reqs: &[GenerateRequest],
    p: &SamplingParams,
) -> Vec<Vec<Sample>> {
    let opts = EngineOptions {
        prefill_chunk: 4,
        ..EngineOptions::default()
    };
    Engine::new(model, Default::default(), opts)
        .generate(reqs, p)
        .unwrap()
}

/// Greedy decoding without a cache: the whole sequence is recomputed for every new token.
fn reference_greedy(model: &Qwen2ForCausalLM<B>, prompt: &[u32], new: usize) -> Vec<u32> {
    let device = Default::default();
    let mut ids = prompt.to_vec();
    for _ in 0..new {
        let n = ids.len();
        let x = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, n]),
            &device,
        );
        let pos = Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [1, n]), &device);
        let logits = model.forward(x, mask, pos, None).unwrap();
        let v = logits.dims()[2];
        let last = logits.slice([0..1, n - 1..n, 0..v]).reshape([v]);
        ids.push(last.argmax(0).into_scalar() as u32);
    }
    ids[prompt.len()..].to_vec()
}

#[test]
fn temperature_zero_and_top_k_one_equal_greedy_without_cache() {
    let m = model();
    let ps = prompts();
    let want: Vec<Vec<u32>> = ps.iter().map(|p| reference_greedy(&m, p, 12)).collect();
    for params in [sampled(0.0, 1.0, 0, 12), sampled(0.7, 0.95, 1, 12)] {
        let out = run(&m, &requests(&ps, 2, 3), &params);
        for (samples, w) in out.iter().zip(&want) {
            for s in samples {
                assert_eq!(&s.output_ids, w, "{params:?}");
                assert_eq!(s.finish_reason, FinishReason::Length);
            }
        }
    }
}

#[test]
fn shared_prefix_groups_equal_independent_runs() {
    let m = model();
    let ps = prompts();
    let params = sampled(0.9, 0.95, 0, 10);
    let grouped = run(&m, &requests(&ps, 4, 11), &params);
    let mut distinct = std::collections::HashSet::new();
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(grouped[i].len(), 4);
        for j in 0..4u64 {
            let alone = GenerateRequest {
                prompt: p.clone(),
                seeds: vec![sample_seed(11, i as u64, j)],
            };
            let single = run(&m, &[alone], &params).remove(0).remove(0);
            let g = &grouped[i][j as usize];
            assert_eq!(g.output_ids, single.output_ids, "prompt {i} sample {j}");
            for (a, b) in g.logprobs.iter().zip(&single.logprobs) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "prompt {i} sample {j}: logprob {a} vs {b}"
                );
            }
            distinct.insert(g.output_ids.clone());
        }
    }
    assert!(
        distinct.len() >= 10,
        "samples of a group should differ: {} distinct of 12",
        distinct.len()
    );
}

#[test]
fn behaviour_logprobs_equal_the_trainer_forward() {
    let m = model();
    let device = Default::default();
    let t = 0.7f32;
    let out = run(&m, &requests(&prompts(), 2, 5), &sampled(t, 0.9, 50, 9));
    for (p, samples) in prompts().iter().zip(&out) {
        for s in samples {
            let full: Vec<i64> = p.iter().chain(&s.output_ids).map(|&x| x as i64).collect();
            let n = full.len();
            let x = Tensor::<B, 2, Int>::from_data(TensorData::new(full, [1, n]), &device);
            let pos = Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([1, n]);
            let mask =
                Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [1, n]), &device);
            let hidden = m.forward_hidden(x.clone(), mask, pos, None).unwrap();
            let h = hidden.dims()[2];
            let lp = m.token_logprobs(
                hidden.slice([0..1, 0..n - 1, 0..h]),
                x.slice([0..1, 1..n]),
                t,
                3,
            );
            let lp: Vec<f32> = lp.into_data().iter::<f32>().collect();
            let trainer = &lp[p.len() - 1..];
            assert_eq!(trainer.len(), s.logprobs.len());
            for (a, b) in trainer.iter().zip(&s.logprobs) {
                assert!((a - b).abs() < 1e-4, "trainer {a} vs rollout {b}");
            }
        }
    }
}

#[test]
fn stop_tokens_compact_the_batch_without_changing_the_others() {
    let m = model();
    let ps = prompts();
    let params = sampled(1.0, 1.0, 0, 12);
    let free = run(&m, &requests(&ps, 3, 21), &params);
    // Stop on the third token of prompt 0's first sample: every sample must equal its free run cut
    // after the first occurrence of that token.
    let stop = free[0][0].output_ids[2];
    let stopped = run(
        &m,
        &requests(&ps, 3, 21),
        &SamplingParams {
            stop_token_ids: vec![stop],
            ..params.clone()
        },
    );
    let mut early = 0;
    for (f, s) in free.iter().flatten().zip(stopped.iter().flatten()) {
        match f.output_ids.iter().position(|&t| t == stop) {
            Some(k) => {
                assert_eq!(s.output_ids, f.output_ids[..=k]);
                assert_eq!(s.finish_reason, FinishReason::Stop);
                early += 1;
            }
            None => {
                assert_eq!(s.output_ids, f.output_ids);
                assert_eq!(s.finish_reason, FinishReason::Length);
            }
        }
    }
    assert!((1..9).contains(&early), "{early} of 9 stopped early");
}

#[test]
fn stop_strings_cut_the_text_before_the_stop_string() {
    let dir = model_dir("tiny-qwen2-chatml");
    let m = model();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let engine = Engine::new(&m, Default::default(), EngineOptions::default())
        .with_detokenizer(Box::new(|ids: &[u32]| tok.decode(ids, true)));
    let prompt = tok.encode("Therefore, the answer is", true).unwrap();
    let reqs = vec![GenerateRequest {
        prompt,
        seeds: vec![1, 2, 3],
    }];
    let params = sampled(1.0, 1.0, 0, 24);
    let free = engine.generate(&reqs, &params).unwrap().remove(0);
    for s in &free {
        let text = s.text.clone().unwrap();
        assert_eq!(text, tok.decode(&s.output_ids, true).unwrap());
        let chars: Vec<char> = text.chars().collect();
        if chars.len() < 12 {
            continue;
        }
        // A stop string taken from the middle of the text.
        let stop: String = chars[6..9].iter().collect();
        let cut = text.find(&stop).unwrap();
        let stopped = engine
            .generate(
                &reqs,
                &SamplingParams {
                    stop_strings: vec![stop.clone()],
                    ..params.clone()
                },
            )
            .unwrap()
            .remove(0);
        let seed_index = free
            .iter()
            .position(|f| f.output_ids == s.output_ids)
            .unwrap();
        let st = &stopped[seed_index];
        assert_eq!(st.text.as_deref(), Some(&text[..cut]), "stop {stop:?}");
        assert_eq!(st.finish_reason, FinishReason::Stop);
        assert!(
            s.output_ids.starts_with(&st.output_ids) && st.output_ids.len() < s.output_ids.len()
        );
        let upto = tok.decode(&st.output_ids, true).unwrap();
        assert!(
            upto.contains(&stop),
            "the last token completes the stop string"
        );
        return;
    }
    panic!("no sample produced enough text to test stop strings");
}

#[test]
fn same_seed_same_samples_and_different_seed_different_samples() {
    let m = model();
    let params = sampled(0.8, 0.95, 40, 8);
    let a = run(&m, &requests(&prompts(), 2, 7), &params);
    let b = run(&m, &requests(&prompts(), 2, 7), &params);
    let c = run(&m, &requests(&prompts(), 2, 8), &params);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn a_cache_over_the_limit_is_a_clear_error() {
    let m = model();
    let opts = EngineOptions {
        max_cache_bytes: Some(1 << 16),
        ..EngineOptions::default()
    };
    let e = Engine::new(&m, Default::default(), opts)
        .generate(&requests(&prompts(), 8, 0), &sampled(1.0, 1.0, 0, 100))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("24 sequences") && e.contains("GiB") && e.contains("max_new_tokens"),
        "{e}"
    );
}

#[test]
fn bad_requests_are_errors() {
    let m = model();
    let engine = Engine::new(&m, Default::default(), EngineOptions::default());
    let empty = vec![GenerateRequest {
        prompt: vec![],
        seeds: vec![0],
    }];
    assert!(engine
        .generate(&empty, &sampled(1.0, 1.0, 0, 4))
        .unwrap_err()
        .to_string()
        .contains("empty prompt"));
    let big = vec![GenerateRequest {
        prompt: vec![1, 99_999],
        seeds: vec![0],
    }];
    assert!(engine
        .generate(&big, &sampled(1.0, 1.0, 0, 4))
        .unwrap_err()
        .to_string()
        .contains("99999"));
    let stop = SamplingParams {
        stop_strings: vec!["x".into()],
        ..sampled(1.0, 1.0, 0, 4)
    };
    let ok = requests(&prompts(), 1, 0);
    assert!(engine
        .generate(&ok, &stop)
        .unwrap_err()
        .to_string()
        .contains("tokenizer"));
}
