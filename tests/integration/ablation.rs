//! `longrl ablate` end to end on the tiny model (CPU): arms x seeds from one shared SFT start, the
//! same result for the same seed, a resume that reads finished runs back, and the report files.

use crate::common;

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use longrl::ablation::{self, AblationReport, AblationSection, Arm};
use longrl::config::parse_toml;
use longrl::pipeline::PipelineFile;

type B = Autodiff<Flex>;

fn file(run_dir: &Path) -> PipelineFile {
    let text = crate::pipeline::CONFIG
        .replace(
            "MODEL",
            common::model_dir("tiny-qwen2-chatml").to_str().unwrap(),
        )
        .replace("RUN", run_dir.to_str().unwrap());
    parse_toml(&text, Path::new("ablation.toml")).unwrap()
}

fn run(root: &Path, arms: Vec<Arm>, seeds: usize, resume: bool) -> AblationReport {
    let section = AblationSection { seeds, arms };
    ablation::run::<B>(
        &file(root),
        &section,
        Some(std::sync::Arc::new(common::LowIds)),
        resume,
        false,
        Default::default(),
    )
    .unwrap()
}

#[test]
fn arms_and_seeds_share_one_start_and_repeat_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let arms = vec![Arm::Flat, Arm::Recipe];
    let first = run(&a, arms.clone(), 2, false);
    assert_eq!(
        first.buckets,
        vec!["<=220", "<=400"],
        "no held-out prompt is past the last stage"
    );
    assert_eq!(
        first.start.name, "sft",
        "every arm starts from the shared SFT model"
    );
    let names: Vec<&str> = first.arms.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["flat", "curriculum+retrospective"]);
    for arm in &first.arms {
        assert_eq!(arm.seeds, vec![5, 6]);
        assert_eq!(
            arm.rollouts,
            4 * 2 * 2,
            "4 steps x 2 prompts x 2 rollouts, every arm"
        );
        assert_eq!(arm.per_seed.len(), 2);
    }
    // The flat arm trained one stage over the whole length range; the recipe two.
    assert!(a.join("arms/flat/seed5/flat/final").exists());
    assert!(a
        .join("arms/curriculum_retrospective/seed6/stage2/final")
        .exists());
    assert!(
        !a.join("arms/flat/seed5/sft").exists(),
        "SFT runs once, in start/"
    );
    let cfg = std::fs::read_to_string(a.join("arms/flat/seed5/config.toml")).unwrap();
    assert!(
        cfg.contains("name = \"flat\"") && cfg.contains("max_steps = 4"),
        "{cfg}"
    );
    for f in ["ablation.json", "ablation.md", "ablation.png"] {
        assert!(a.join(f).exists(), "{f}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("ablation.json")).unwrap()).unwrap();
    assert!(json["arms"][0]["by_bucket"]["<=220"]["ci95"].is_number());
    assert!(json["arms"][1]["overall"]["mean"].is_number());

    // Same seeds, another directory: the same results, run for run.
    let again = run(&b, arms.clone(), 2, false);
    for (x, y) in first.arms.iter().zip(&again.arms) {
        let acc = |r: &ablation::ArmResult| -> Vec<(f64, Vec<f64>)> {
            r.per_seed
                .iter()
                .map(|s| (s.accuracy, s.by_bucket.values().copied().collect()))
                .collect()
        };
        assert_eq!(acc(x), acc(y), "{}", x.name);
    }
    let w = |root: &Path| std::fs::read(root.join("arms/flat/seed6/flat/final/model.safetensors"));
    assert_eq!(w(&a).unwrap(), w(&b).unwrap(), "same seed, same weights");

    // Without --resume an existing ablation is refused; with it, finished runs are read back.
    let e = ablation::run::<B>(
        &file(&a),
        &AblationSection {
            seeds: 2,
            arms: arms.clone(),
        },
        Some(std::sync::Arc::new(common::LowIds)),
        false,
        false,
        Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("already holds an ablation"), "{e}");
    let resumed = run(&a, arms, 2, true);
    assert_eq!(resumed.arms[0].overall, first.arms[0].overall);
    assert!(resumed
        .arms
        .iter()
        .flat_map(|x| &x.per_seed)
        .all(|s| s.wall_s == 0.0));
}
