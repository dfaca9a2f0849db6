//! RoPE at long context against transformers (`tests/fixtures/rope/long_context.json`, written by
//! `scripts/make_rope_fixture.py`): inverse frequencies, attention factor and cos/sin tables up to
//! position 131071 for YaRN factor 4 over 32768 positions (Qwen2.5 / R1-Distill-Qwen above 32K)
//! and for plain RoPE.

use std::path::Path;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use longrl::model::{Qwen2Config, RopeParams};
use serde_json::Value;

use crate::common::fixture;

fn floats(v: &Value) -> Vec<f64> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(x) = stack.pop() {
        match x {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Number(n) => out.push(n.as_f64().unwrap()),
            other => panic!("not a number: {other}"),
        }
    }
    out
}

#[test]
fn long_context_rope_tables_match_transformers() {
    let path = fixture("rope/long_context.json");
    let data: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let positions: Vec<i64> = data["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    for (name, v) in data["variants"].as_object().unwrap() {
        let config = Qwen2Config::from_json_object(
            v["config"].as_object().unwrap().clone(),
            Path::new(name),
        )
        .unwrap();
        let rope = RopeParams::new(&config);
        let device = Default::default();
        let pos = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(positions.clone(), [1, positions.len()]),
            &device,
        );
        let (cos, sin) = rope.cos_sin(pos);
        for (what, ours, theirs) in [("cos", cos, &v["cos"]), ("sin", sin, &v["sin"])] {
            let ours: Vec<f32> = ours.into_data().iter::<f32>().collect();
            let theirs = floats(theirs);
            assert_eq!(ours.len(), theirs.len(), "{name} {what}");
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "{name} {what}: max difference {worst:.2e}");
        }
    }
}
