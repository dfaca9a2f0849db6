//! The policy loss against `tests/fixtures/rl/losses.json`, computed independently with numpy by
//! `scripts/make_loss_table.py`: every aggregation mode, every KL estimator, clipping on both sides
//! with positive and negative advantages, and the gradient with respect to the policy log-probs
//! (zero through clipped tokens).

use crate::common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use common::fixture;
use longrl::rl::{policy_loss, AggScale, PolicyLossConfig, PolicyLossInputs};
use serde::Deserialize;

type B = Autodiff<Flex>;

#[derive(Deserialize)]
struct Table {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config: PolicyLossConfig,
    norm_constant: f64,
    shape: [usize; 2],
    logp: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    advantages: Vec<f32>,
    mask: Vec<f32>,
    entropy: Vec<f32>,
    expected: Expected,
}

#[derive(Deserialize)]
struct Expected {
    loss: f64,
    pg_loss: f64,
    kl_loss: f64,
    tokens: f64,
    clipped: f64,
    clipped_low: f64,
    clipped_high: f64,
    ppo_kl: f64,
    kl: f64,
    entropy: f64,
    grad_logp: Vec<f64>,
    unclipped_tokens: f64,
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 2e-5 + 2e-4 * want.abs()
}

#[test]
fn policy_loss_matches_the_numpy_table() {
    let text = std::fs::read_to_string(fixture("rl/losses.json")).unwrap();
    let table: Table = serde_json::from_str(&text).unwrap();
    assert!(table.cases.len() >= 20);
    let device = Default::default();
    let mut saw_clipped_grad = false;
    for c in &table.cases {
        let t =
            |v: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), c.shape), &device);
        let logp = t(&c.logp).require_grad();
        let mask = t(&c.mask);
        let scale = AggScale {
            norm_constant: c.norm_constant,
            ..AggScale::of_mask(&mask, c.norm_constant)
        };
        let inputs = PolicyLossInputs {
            logp: logp.clone(),
            old_logp: t(&c.old_logp),
            advantages: t(&c.advantages),
            mask,
            ref_logp: Some(t(&c.ref_logp)),
            entropy: Some(t(&c.entropy)),
        };
        let (loss, stats) = policy_loss(inputs, &c.config, &scale);
        let e = &c.expected;
        let got = loss.clone().into_scalar() as f64;
        let n = &c.name;
        assert!(close(got, e.loss), "{n}: loss {got} vs {}", e.loss);
        assert!(
            close(stats.pg_loss, e.pg_loss),
            "{n}: pg_loss {} vs {}",
            stats.pg_loss,
            e.pg_loss
        );
        assert!(
            close(stats.kl_loss, e.kl_loss),
            "{n}: kl_loss {} vs {}",
            stats.kl_loss,
            e.kl_loss
        );
        assert_eq!(stats.tokens, e.tokens, "{n}");
        assert_eq!(
            (stats.clipped, stats.clipped_low, stats.clipped_high),
            (e.clipped, e.clipped_low, e.clipped_high),
            "{n}: clip counts"
        );
        assert!(
            close(stats.ppo_kl, e.ppo_kl),
            "{n}: ppo_kl {} vs {}",
            stats.ppo_kl,
            e.ppo_kl
        );
        assert!(close(stats.kl, e.kl), "{n}: kl {} vs {}", stats.kl, e.kl);
        assert!(close(stats.entropy, e.entropy), "{n}: entropy");

        let grads = loss.backward();
        let g: Vec<f32> = logp.grad(&grads).unwrap().into_data().to_vec().unwrap();
        for (k, (&got, &want)) in g.iter().zip(&e.grad_logp).enumerate() {
            assert!(close(got as f64, want), "{n}: grad[{k}] {got} vs {want}");
            if want == 0.0 && c.mask[k] == 1.0 && c.config.beta == 0.0 {
                saw_clipped_grad = true;
                assert_eq!(got, 0.0, "{n}: a clipped token must pass no gradient");
            }
        }
        assert!(e.unclipped_tokens <= e.tokens);
    }
    assert!(saw_clipped_grad, "the table must contain clipped tokens");
}
