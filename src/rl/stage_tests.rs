//! Stage boundaries of the RL step on the tiny model: the mini-batches packed once per step give,
//! bit for bit, the loss statistics and gradients (`mini_batch_grads`, the update stage's inner
//! step) of the former path that re-packed every micro-batch from host vectors each epoch
//! (reference log-probs through the host included), every epoch alike; a missing reference
//! log-prob is an error. The update's epoch loop around it is covered by the RL runs' bitwise
//! comparison in BENCHMARKS.md and the integration tests.

use burn::backend::{Autodiff, Flex};
use burn::module::{ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use super::aepo::{aepo_stage, batch_entropy, AepoContext, AepoState};
use super::config::RlConfig;
use super::groups::{advantages, Group, Rollout};
use super::loss::{policy_loss, AggScale, PolicyLossInputs, PolicyLossStats};
use super::pack::{pack, reference_logprobs, MiniBatch, PackContext, ReferenceLogprobs};
use super::update::mini_batch_grads;
use crate::data::PreparedPrompt;
use crate::distributed::Worker;
use crate::model::{load_model, ModelBackend, Qwen2Config, Qwen2ForCausalLM, TrainBackend};
use crate::reward::TaskKind;
use crate::train::{token_budget_batches, Packed, Sequence};

type B = Autodiff<Flex>;
type Inner = Flex;

const PAD: u32 = 0;

fn model_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2-chatml")
}

fn policy() -> Qwen2ForCausalLM<B> {
    load_model::<B>(&model_dir(), &Default::default()).expect("tiny model")
}

/// A reference that differs from the policy (freshly initialised), so the KL term is not zero.
fn reference() -> Qwen2ForCausalLM<Inner> {
    let config = Qwen2Config::from_file(model_dir()).expect("tiny config");
    Qwen2ForCausalLM::init(&config, &Default::default())
}

fn prompts() -> Vec<PreparedPrompt> {
    [
        vec![5u32, 6, 7],
        vec![8, 9, 10, 11, 12],
        vec![13, 14],
        vec![15, 16, 17, 18],
    ]
    .into_iter()
    .enumerate()
    .map(|(index, ids)| PreparedPrompt {
        index,
        id: format!("p{index}"),
        text: String::new(),
        ids,
        task: TaskKind::Qa,
        answer: String::new(),
    })
    .collect()
}

/// A rollout of `len` tokens with made-up behaviour log-probs.
fn rollout(seed: u32, len: usize, reward: f64, truncated: bool) -> Rollout {
    Rollout {
        response: (0..len as u32)
            .map(|k| 20 + (seed * 37 + k * 11) % 900)
            .collect(),
        old_logp: (0..len)
            .map(|k| -0.5 - ((seed as usize * 7 + k * 3) % 10) as f32 * 0.4)
            .collect(),
        len,
        reward,
        score: reward,
        acc: reward > 0.5,
        truncated,
        advantage: 0.0,
        aepo_masked: false,
    }
}

/// Four groups: one of another worker (numbers only), rollouts of uneven lengths, one cut at
/// the limit (masked out).
fn groups(config: &RlConfig) -> Vec<Group> {
    let mut groups = vec![
        Group {
            prompt: 0,
            mine: true,
            rollouts: vec![rollout(1, 4, 1.0, false), rollout(2, 2, 0.0, false)],
        },
        Group {
            prompt: 1,
            mine: false,
            rollouts: vec![
                Rollout {
                    response: Vec::new(),
                    old_logp: Vec::new(),
                    ..rollout(3, 5, 1.0, false)
                },
                Rollout {
                    response: Vec::new(),
                    old_logp: Vec::new(),
                    ..rollout(4, 3, 0.0, false)
                },
            ],
        },
        Group {
            prompt: 2,
            mine: true,
            rollouts: vec![rollout(5, 6, 0.0, true), rollout(6, 1, 1.0, false)],
        },
        Group {
            prompt: 3,
            mine: true,
            rollouts: vec![rollout(7, 3, 0.2, false), rollout(8, 5, 0.9, false)],
        },
    ];
    advantages(&mut groups, &prompts(), config);
    groups
}

fn config() -> RlConfig {
    let mut c = RlConfig {
        num_generations: 2,
        ppo_mini_batch_size: 2,
        // A few sequences per micro-batch: every mini-batch is cut in several.
        micro_batch_tokens: 10,
        max_response_length: 6,
        mask_truncated_completions: true,
        temperature: 0.9,
        ..RlConfig::default()
    };
    c.loss.beta = 0.05;
    c.loss.entropy_coeff = 0.01;
    c
}

/// Every parameter's gradient, in module order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let g = self
            .grads
            .get::<Inner, D>(param.id)
            .map(|g| g.into_data().to_vec::<f32>().expect("f32 gradient"))
            .unwrap_or_default();
        self.out.push(g);
    }
}

fn flat(policy: &Qwen2ForCausalLM<B>, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    burn::module::Module::visit(policy, &mut c);
    c.out
}

/// This worker's sequences of `groups`, flattened (the former `sequences`).
fn seqs<'a>(
    groups: &'a [Group],
    prompts: &'a [PreparedPrompt],
) -> Vec<(Sequence<'a>, &'a Rollout)> {
    groups
        .iter()
        .filter(|g| g.mine)
        .flat_map(|g| {
            g.rollouts.iter().map(move |r| {
                let s = Sequence {
                    prompt: &prompts[g.prompt].ids,
                    response: &r.response,
                };
                (s, r)
            })
        })
        .collect()
}

/// The former reference path: log-probs per group to the host.
fn host_reference<M: ModelBackend>(
    reference: &Qwen2ForCausalLM<M>,
    groups: &[Group],
    prompts: &[PreparedPrompt],
    config: &RlConfig,
) -> Vec<Vec<Vec<f32>>> {
    let device = Default::default();
    groups
        .iter()
        .map(|g| {
            if !g.mine {
                return Vec::new();
            }
            let s = seqs(std::slice::from_ref(g), prompts);
            let plain: Vec<Sequence<'_>> = s.iter().map(|(s, _)| *s).collect();
            let mut per_rollout = vec![Vec::new(); plain.len()];
            for mb in token_budget_batches(&plain, config.micro_batch_tokens) {
                let part: Vec<Sequence<'_>> = mb.iter().map(|&i| plain[i]).collect();
                let packed = Packed::<M>::new(&part, PAD, &device);
                let (logp, _) = packed
                    .logprobs(reference, config.temperature, config.logits_chunk, false)
                    .unwrap();
                let r = packed.response_cols;
                let values: Vec<f32> = logp.into_data().to_vec().unwrap();
                for (row, &i) in mb.iter().enumerate() {
                    per_rollout[i] = values[row * r..row * r + plain[i].response.len()].to_vec();
                }
            }
            per_rollout
        })
        .collect()
}

/// The former mini-batch path: every micro-batch packed from host vectors on each call.
fn repacked_grads<T: TrainBackend>(
    policy: &Qwen2ForCausalLM<T>,
    groups: &[Group],
    refs: &[Vec<Vec<f32>>],
    prompts: &[PreparedPrompt],
    config: &RlConfig,
) -> (GradientsParams, PolicyLossStats) {
    let device = Default::default();
    let s = seqs(groups, prompts);
    let refs: Vec<&Vec<f32>> = refs.iter().flatten().collect();
    let counts = |r: &Rollout| !(config.mask_truncated_completions && r.truncated);
    let all = || {
        groups
            .iter()
            .flat_map(|g| &g.rollouts)
            .filter(|r| counts(r))
    };
    let scale = AggScale {
        tokens: all().map(|r| r.len).sum::<usize>() as f64,
        sequences: all().count() as f64,
        norm_constant: config.max_response_length as f64,
    };
    let plain: Vec<Sequence<'_>> = s.iter().map(|(s, _)| *s).collect();
    let mut stats = PolicyLossStats::default();
    let mut acc = GradientsAccumulator::<Qwen2ForCausalLM<T>>::new();
    for mb in token_budget_batches(&plain, config.micro_batch_tokens) {
        let part: Vec<Sequence<'_>> = mb.iter().map(|&i| plain[i]).collect();
        let packed = Packed::<T>::new(&part, PAD, &device);
        let (logp, entropy) = packed
            .logprobs(policy, config.temperature, config.logits_chunk, true)
            .unwrap();
        let rollouts: Vec<&Rollout> = mb.iter().map(|&i| s[i].1).collect();
        let old: Vec<Vec<f32>> = rollouts.iter().map(|r| r.old_logp.clone()).collect();
        let adv: Vec<Vec<f32>> = rollouts
            .iter()
            .map(|r| vec![r.advantage as f32; r.response.len()])
            .collect();
        let keep: Vec<Vec<f32>> = rollouts
            .iter()
            .map(|r| vec![if counts(r) { 1.0 } else { 0.0 }; r.response.len()])
            .collect();
        let rows: Vec<Vec<f32>> = mb.iter().map(|&i| refs[i].clone()).collect();
        let inputs = PolicyLossInputs {
            logp,
            old_logp: packed.response_grid(&old, &device),
            advantages: packed.response_grid(&adv, &device),
            mask: packed.response_grid(&keep, &device),
            ref_logp: Some(packed.response_grid(&rows, &device)),
            entropy,
        };
        let (loss, st) = policy_loss(inputs, &config.loss, &scale);
        stats.add(&st);
        acc.accumulate(policy, GradientsParams::from_grads(loss.backward(), policy));
    }
    (acc.grads(), stats)
}

#[test]
fn packed_once_the_mini_batches_give_the_loss_and_gradients_of_a_repack_every_epoch() {
    let config = config();
    let prompts = prompts();
    let groups = groups(&config);
    let policy = policy();
    let reference = reference();
    let device = Default::default();

    let refs = reference_logprobs(&reference, &groups, &prompts, PAD, &config, &device).unwrap();
    let ctx = PackContext {
        config: &config,
        prompts: &prompts,
        pad: PAD,
    };
    let packed = pack::<B>(&groups, Some(&refs), &ctx, &device).unwrap();
    assert_eq!(packed.mini_batches.len(), 2);
    let host_refs = host_reference(&reference, &groups, &prompts, &config);

    for (mb_index, (mini, old_groups)) in packed
        .mini_batches
        .iter()
        .zip(groups.chunks(config.ppo_mini_batch_size))
        .enumerate()
    {
        let MiniBatch::Mine {
            scale,
            micro_batches,
        } = mini
        else {
            panic!("mini-batch {mb_index} has groups of this worker");
        };
        assert!(micro_batches.len() >= 2, "several micro-batches");
        let first = mb_index * config.ppo_mini_batch_size;
        let old_refs = &host_refs[first..first + old_groups.len()];
        let (want_grads, want) = repacked_grads(&policy, old_groups, old_refs, &prompts, &config);
        let want_grads = flat(&policy, &want_grads);
        assert!(want.kl != 0.0 && want.entropy != 0.0 && want.pg_loss != 0.0);
        // Two epochs over the same packed tensors: both are the former path, bit for bit.
        for _epoch in 0..2 {
            let (grads, stats) = mini_batch_grads(&policy, micro_batches, scale, &config).unwrap();
            assert_eq!(stats, want);
            let grads = flat(&policy, &grads);
            assert_eq!(grads.len(), want_grads.len());
            for (g, w) in grads.iter().zip(&want_grads) {
                assert_eq!(g.len(), w.len());
                assert!(g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
}

#[test]
fn a_mini_batch_without_tokens_of_this_worker_or_of_any_is_marked_so() {
    let mut config = config();
    config.loss.beta = 0.0;
    let prompts = prompts();
    let mut groups = groups(&config);
    // Mini-batch 0: group 0 masked out entirely, group 1 another worker's (tokens elsewhere).
    for r in &mut groups[0].rollouts {
        r.truncated = true;
    }
    // Mini-batch 1: both groups cut and masked: no loss token on any worker.
    for g in &mut groups[2..] {
        for r in &mut g.rollouts {
            r.truncated = true;
        }
    }
    let ctx = PackContext {
        config: &config,
        prompts: &prompts,
        pad: PAD,
    };
    let packed = pack::<B>(&groups, None, &ctx, &Default::default()).unwrap();
    assert!(matches!(packed.mini_batches[0], MiniBatch::Mine { scale, .. } if scale.tokens == 8.0));
    assert!(matches!(packed.mini_batches[1], MiniBatch::Empty));
    groups[0].mine = false;
    let packed = pack::<B>(&groups, None, &ctx, &Default::default()).unwrap();
    assert!(matches!(packed.mini_batches[0], MiniBatch::Others));
}

#[test]
fn a_missing_reference_log_prob_is_an_error_not_a_zero() {
    let config = config();
    let prompts = prompts();
    let groups = groups(&config);
    let reference = reference();
    let device = Default::default();
    let ctx = PackContext {
        config: &config,
        prompts: &prompts,
        pad: PAD,
    };
    let mut refs =
        reference_logprobs(&reference, &groups, &prompts, PAD, &config, &device).unwrap();
    refs.per_group[2].pop();
    let err = pack::<B>(&groups, Some(&refs), &ctx, &device)
        .err()
        .expect("an error");
    assert!(err.to_string().contains("no reference log-probs"), "{err}");
    let short = ReferenceLogprobs::<Inner> {
        per_group: refs.per_group[..1].to_vec(),
    };
    assert!(pack::<B>(&groups, Some(&short), &ctx, &device).is_err());
}

#[test]
fn aepo_measures_the_batch_entropy_and_its_masked_rollouts_train_as_if_removed() {
    let config = config();
    let prompts = prompts();
    let policy = policy();
    let reference = reference();
    let device = Default::default();

    // The batch entropy: the token mean over this worker's rollouts (truncated ones included),
    // each sequence's entropies computed on its own.
    let inner = burn::module::AutodiffModule::valid(&policy);
    let mut groups = groups(&config);
    let (mut sum, mut tokens) = (0.0, 0.0);
    for (s, _) in seqs(&groups, &prompts) {
        let packed = Packed::<Inner>::new(&[s], PAD, &device);
        let (_, e) = packed
            .logprobs(&inner, config.temperature, config.logits_chunk, true)
            .unwrap();
        let e: Vec<f32> = e.unwrap().into_data().to_vec().unwrap();
        sum += e.iter().map(|&x| x as f64).sum::<f64>();
        tokens += s.response.len() as f64;
    }
    let e = batch_entropy(&inner, &groups, &prompts, PAD, &config, &device).unwrap();
    assert_eq!(e.tokens, tokens);
    assert!(
        (e.mean() - sum / tokens).abs() < 1e-4,
        "{e:?} vs {}",
        sum / tokens
    );

    // An entropy above the upper bound masks every negative advantage, of any worker.
    let mut c = config.clone();
    (c.loss.aepo_entropy_low, c.loss.aepo_entropy_high) = (0.0, e.mean() / 2.0);
    let ctx = AepoContext {
        config: &c,
        prompts: &prompts,
        pad: PAD,
        worker: &Worker::single(crate::DeviceSpec::Flex),
        step: 0,
    };
    let mut state = AepoState::default();
    let report = aepo_stage(&inner, &mut state, &mut groups, &ctx, &device).unwrap();
    let negatives = groups
        .iter()
        .flat_map(|g| &g.rollouts)
        .filter(|r| r.advantage < 0.0)
        .count();
    assert!(state.masking && report.masking && negatives > 0);
    assert_eq!((report.masked, report.entropy), (negatives, e.mean()));

    // Packed with the masked rollouts, or with them removed: the same mini-batches, loss
    // statistics and gradients, bit for bit.
    let removed: Vec<Group> = groups
        .iter()
        .map(|g| Group {
            rollouts: g
                .rollouts
                .iter()
                .filter(|r| !r.aepo_masked)
                .cloned()
                .collect(),
            ..g.clone()
        })
        .collect();
    let pack_ctx = PackContext {
        config: &config,
        prompts: &prompts,
        pad: PAD,
    };
    let run = |groups: &[Group]| {
        let refs = reference_logprobs(&reference, groups, &prompts, PAD, &config, &device).unwrap();
        let packed = pack::<B>(groups, Some(&refs), &pack_ctx, &device).unwrap();
        let mut out = Vec::new();
        for mini in &packed.mini_batches {
            let MiniBatch::Mine {
                scale,
                micro_batches,
            } = mini
            else {
                panic!("every mini-batch has rollouts of this worker");
            };
            let (grads, stats) = mini_batch_grads(&policy, micro_batches, scale, &config).unwrap();
            out.push((*scale, stats, flat(&policy, &grads)));
        }
        out
    };
    let (got, want) = (run(&groups), run(&removed));
    assert_eq!(got.len(), want.len());
    for ((s1, st1, g1), (s2, st2, g2)) in got.iter().zip(&want) {
        assert_eq!((s1, st1), (s2, st2));
        assert!(g1
            .iter()
            .flatten()
            .zip(g2.iter().flatten())
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
