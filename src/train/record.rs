//! `RUN_DIR/config.toml`: the resolved configuration a run records once every start-time check
//! has passed (so a refused run never overwrites a finished run's record), and the comparison a
//! resume makes with it (a changed seed or learning rate is refused without `--force`).

use std::path::Path;

use crate::config::{ConfigRecord, RunSection};
use crate::error::{Error, Result};
use crate::io::write_atomic;

/// Writes the run's resolved configuration (`run.record`, if any) to `RUN_DIR/config.toml`; the
/// trainers call it once every start-time check has passed. When the run `resumed` from a
/// checkpoint, the new record is first compared with the old one: a changed seed or learning rate
/// is refused unless the record carries `--force` (the data order and schedule of the resumed run
/// would silently differ from the interrupted one), other changes are logged.
pub fn record_config(run: &RunSection, resumed: bool) -> Result<()> {
    let Some(record) = &run.record else {
        return Ok(());
    };
    let path = run.run_dir.join("config.toml");
    if resumed && path.exists() {
        let old = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        check_resume_changes(&path, &old, record)?;
    }
    std::fs::create_dir_all(&run.run_dir).map_err(|e| Error::io(&run.run_dir, e))?;
    write_atomic(&path, record.text.as_bytes())
}

/// Refuses a resume whose seed or learning rate differ from the recorded config `old` (unless
/// forced) and logs every other changed setting.
fn check_resume_changes(path: &Path, old: &str, record: &ConfigRecord) -> Result<()> {
    let (Ok(old), Ok(new)) = (
        old.parse::<toml::Table>(),
        record.text.parse::<toml::Table>(),
    ) else {
        log::warn!(
            "{} cannot be compared with this run's config; resuming",
            path.display()
        );
        return Ok(());
    };
    let (mut old_keys, mut new_keys) = (Vec::new(), Vec::new());
    flatten("", &toml::Value::Table(old), &mut old_keys);
    flatten("", &toml::Value::Table(new), &mut new_keys);
    let old_map: std::collections::BTreeMap<_, _> = old_keys.into_iter().collect();
    let new_map: std::collections::BTreeMap<_, _> = new_keys.into_iter().collect();
    let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
    keys.sort();
    keys.dedup();
    let none = "(unset)".to_string();
    let (mut guarded, mut other) = (Vec::new(), Vec::new());
    for key in keys {
        let (a, b) = (
            old_map.get(key).unwrap_or(&none),
            new_map.get(key).unwrap_or(&none),
        );
        if a == b {
            continue;
        }
        let change = format!("{key}: {a} -> {b}");
        if key == "run.seed" || key.ends_with(".lr") {
            guarded.push(change);
        } else {
            other.push(change);
        }
    }
    if !other.is_empty() {
        log::warn!("resuming with changed settings: {}", other.join(", "));
    }
    if guarded.is_empty() {
        return Ok(());
    }
    if record.force {
        log::warn!(
            "resuming with a changed seed or learning rate (--force): {}",
            guarded.join(", ")
        );
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--resume: {} differs from the run being resumed ({}): {}. The resumed run would not \
         continue the interrupted one; pass --force to resume with the new values, or restore them",
        if guarded.len() == 1 {
            "a setting"
        } else {
            "settings"
        },
        path.display(),
        guarded.join(", ")
    )))
}

/// Every leaf of `value` as (dotted key, TOML text); array items are keyed `key[i]`.
fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items) if items.iter().any(|v| v.is_table()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, text: &str, force: bool) -> RunSection {
        RunSection {
            run_dir: dir.to_path_buf(),
            record: Some(ConfigRecord {
                text: text.into(),
                force,
            }),
            ..RunSection::default()
        }
    }

    #[test]
    fn a_resume_refuses_a_changed_seed_or_learning_rate_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let first = "[run]\nseed = 1\n\n[rl]\nmax_steps = 4\n\n[rl.optim]\nlr = 1e-6\n\n\
                     [[stages]]\nlr = 0.5\n";
        record_config(&run(dir.path(), first, false), false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        // More steps are only logged; the record is replaced.
        let longer = first.replace("max_steps = 4", "max_steps = 8");
        record_config(&run(dir.path(), &longer, false), true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), longer);
        // A learning rate (nested, or in an array of tables) or the seed: refused, record kept.
        for (changed, key) in [
            (longer.replace("lr = 1e-6", "lr = 2e-6"), "rl.optim.lr: "),
            (
                longer.replace("lr = 0.5", "lr = 0.25"),
                "stages[0].lr: 0.5 -> 0.25",
            ),
            (longer.replace("seed = 1", "seed = 2"), "run.seed: 1 -> 2"),
        ] {
            let e = record_config(&run(dir.path(), &changed, false), true)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("--force"), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), longer);
        }
        // --force resumes with the new values; a fresh start never compares.
        let reseeded = longer.replace("seed = 1", "seed = 2");
        record_config(&run(dir.path(), &reseeded, true), true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), reseeded);
        record_config(&run(dir.path(), first, false), false).unwrap();
        // No record (a library run): nothing written.
        let other = tempfile::tempdir().unwrap();
        let plain = RunSection {
            run_dir: other.path().to_path_buf(),
            ..RunSection::default()
        };
        record_config(&plain, true).unwrap();
        assert!(!other.path().join("config.toml").exists());
    }
}
