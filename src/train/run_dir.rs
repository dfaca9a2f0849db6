//! A training run's directory: checkpoints written atomically (a temporary folder renamed into
//! place, then the `latest` pointer replaced), the metrics log, and the final model.
//!
//! ```text
//! RUN_DIR/
//!   config.toml                   the resolved configuration of the run
//!   metrics.jsonl                 one JSON object per step
//!   checkpoints/step-00000010/    model.safetensors (f32) + config.json + tokenizer files,
//!                                 optimizer.bin, trainer_state.json
//!   checkpoints/latest            the name of the newest complete checkpoint
//!   final/                        the trained policy in HuggingFace layout
//! ```
//! A write interrupted at any point leaves the previous checkpoint and `latest` intact; stale
//! temporary folders (`.tmp-step-*`) and files (`.NAME.tmpPID`) are removed when the run
//! directory is opened again. Each metrics record is appended with one write of its whole line;
//! a start repairs the log (an unfinished last line is dropped, records after the resumed step
//! too), so every step is listed once. A checkpoint that is damaged (a file cut short) is named
//! when resuming, with the previous complete one offered.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ModelSection;
use crate::error::{Error, Result};
use crate::io::{remove_stale_tmp_files, write_atomic, JsonlReader};
use crate::model::adapter::ADAPTER_WEIGHTS;
use crate::model::checkpoint::{check_weight_file, weight_files};
use crate::model::{is_adapter_dir, save_adapter, save_model, Qwen2ForCausalLM, SaveDtype};
use burn::tensor::backend::Backend;

/// Name of the trainer's JSON state inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// Name of the optimiser state inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bin";
const SHARD_BYTES: usize = 5 << 30;
/// Temporary files in the run directory's root younger than this are kept at open: rank 0 of a
/// multi-machine run sharing the folder may be writing `config.toml` or `metrics.jsonl` then.
const FRESH_ROOT_TMP: Duration = Duration::from_secs(60);

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Opens (creating) `root` and removes what interrupted writes left: temporary checkpoint
    /// folders (`checkpoints/.tmp-step-*`) and other processes' temporary files of atomic writes
    /// (`.NAME.tmpPID` in `checkpoints/`, `final/` and, once a minute old, the root).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let ckpts = root.join("checkpoints");
        std::fs::create_dir_all(&ckpts).map_err(|e| Error::io(&ckpts, e))?;
        for entry in std::fs::read_dir(&ckpts).map_err(|e| Error::io(&ckpts, e))? {
            let path = entry.map_err(|e| Error::io(&ckpts, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            if name.is_some_and(|n| n.starts_with(".tmp-")) && path.is_dir() {
                // Data-parallel workers open the run directory at once: one of them removes it.
                match std::fs::remove_dir_all(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(&path, e))
                    }
                    _ => {}
                }
            }
        }
        let stale = [
            (ckpts, Duration::ZERO),
            (root.join("final"), Duration::ZERO),
            (root.clone(), FRESH_ROOT_TMP),
        ];
        for (dir, min_age) in stale {
            for path in remove_stale_tmp_files(&dir, min_age)? {
                log::info!("removed {}, left by an interrupted write", path.display());
            }
        }
        Ok(Self { root })
    }

    /// The run directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `RUN_DIR/metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// `RUN_DIR/final`.
    pub fn final_dir(&self) -> PathBuf {
        self.root.join("final")
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The newest complete checkpoint, if any: the one `latest` names, else the highest step
    /// folder holding a trainer state.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let pointer = self.checkpoints().join("latest");
        if pointer.exists() {
            let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
            let dir = self.checkpoints().join(name.trim());
            if dir.join(STATE_FILE).exists() {
                return Ok(Some(dir));
            }
            log::warn!(
                "{} names {}, which is missing or incomplete; taking the newest complete \
                 checkpoint instead",
                pointer.display(),
                dir.display()
            );
        }
        Ok(self.complete_checkpoints()?.pop())
    }

    /// The checkpoint a run continues from: the latest one with `resume`; with `resume` off, an
    /// existing checkpoint is an error (a finished run is never overwritten by accident). A
    /// damaged checkpoint (see [`check_checkpoint`]) is an error naming it and offering the
    /// previous complete one, before anything is loaded.
    pub fn resume_point(&self, resume: bool) -> Result<Option<PathBuf>> {
        let latest = self.latest()?;
        match (&latest, resume) {
            (Some(c), false) => {
                return Err(Error::Invalid(format!(
                    "run directory {} already has checkpoint {}: pass --resume to continue it, \
                     or choose another --run-dir",
                    self.root.display(),
                    c.display()
                )))
            }
            (Some(c), true) => check_checkpoint(c).map_err(|e| self.damaged(c, &e))?,
            (None, _) => {}
        }
        Ok(latest)
    }

    /// Restores the optimiser state of checkpoint `ckpt` through `load` (given the path of its
    /// `optimizer.bin`, as `save_optimizer` of [`Self::save_checkpoint`]); a state that cannot be
    /// read makes the checkpoint damaged, and the error offers the previous complete one.
    pub fn load_optimizer(
        &self,
        ckpt: &Path,
        load: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        load(&ckpt.join(OPTIMIZER_FILE)).map_err(|e| self.damaged(ckpt, &e))
    }

    /// The error for the damaged checkpoint `ckpt`, whose problem is `cause`: it names the
    /// checkpoint and says how to go on from the newest earlier checkpoint that is complete.
    fn damaged(&self, ckpt: &Path, cause: &Error) -> Error {
        let previous = self
            .complete_checkpoints()
            .unwrap_or_default()
            .into_iter()
            .rev()
            .filter(|p| p.file_name() < ckpt.file_name())
            .find(|p| check_checkpoint(p).is_ok());
        let then = match previous {
            Some(p) => format!(
                "the run continues from {}, the previous complete checkpoint",
                p.display()
            ),
            None => "no earlier complete checkpoint is left, so the run starts from the \
                     beginning"
                .to_string(),
        };
        Error::checkpoint(
            ckpt,
            format!(
                "damaged ({cause}). Delete this checkpoint (rm -r {}) and run again with \
                 --resume: {then}",
                ckpt.display()
            ),
        )
    }

    fn complete_checkpoints(&self) -> Result<Vec<PathBuf>> {
        let dir = self.checkpoints();
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                    && p.join(STATE_FILE).exists()
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// Writes a checkpoint for `step`: the model (f32, HF layout, tokenizer files copied from
    /// the model folder; with `[lora]`, only the adapters, as a PEFT folder), the optimiser state
    /// written by `save_optimizer` into the given path, and the trainer `state`. Keeps the
    /// newest `keep` checkpoints (all when `None`).
    pub fn save_checkpoint<B: Backend, S: Serialize>(
        &self,
        step: usize,
        model: &Qwen2ForCausalLM<B>,
        section: &ModelSection,
        save_optimizer: impl FnOnce(&Path) -> Result<()>,
        state: &S,
        keep: Option<usize>,
    ) -> Result<PathBuf> {
        let name = format!("step-{step:08}");
        let tmp = self.checkpoints().join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        save_weights(model, section, &tmp, SaveDtype::F32)?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE))?;
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::Invalid(format!("trainer state cannot be serialised: {e}")))?;
        write_atomic(&tmp.join(STATE_FILE), &json)?;
        let dir = self.checkpoints().join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        write_atomic(&self.checkpoints().join("latest"), name.as_bytes())?;
        if let Some(keep) = keep {
            let all = self.complete_checkpoints()?;
            for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
                std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
            }
        }
        Ok(dir)
    }

    /// Reads the trainer state of a checkpoint.
    pub fn load_state<S: DeserializeOwned>(checkpoint: &Path) -> Result<S> {
        let path = checkpoint.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(
                &path,
                format!("trainer state does not match this trainer: {e}"),
            )
        })
    }

    /// The model a run starts from ([`ModelSection::load_trainable`]) and, when resuming from
    /// checkpoint `resume_from`, its trainer state.
    pub fn starting_point<B: Backend, S: DeserializeOwned>(
        resume_from: Option<&Path>,
        section: &ModelSection,
        seed: u64,
        device: &B::Device,
    ) -> Result<(Qwen2ForCausalLM<B>, Option<S>)> {
        let state = match resume_from {
            Some(ckpt) => {
                log::info!("resuming from {}", ckpt.display());
                Some(Self::load_state(ckpt)?)
            }
            None => None,
        };
        Ok((
            section.load_trainable::<B>(resume_from, seed, device)?,
            state,
        ))
    }

    /// Appends one metrics record to `metrics.jsonl` with a single write of the whole line
    /// (record and newline): appends are atomic for readers, and a kill leaves at most one
    /// unfinished last line, never a record spread over many writes.
    pub fn log_metrics(&self, record: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut line = record.to_string();
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(&path, e))
    }

    /// Readies `metrics.jsonl` for a run that continues after step `resumed` (`None`: from the
    /// beginning), so that every step is listed once: records of later steps (all step records
    /// when `None`) are dropped, and so is a last line that does not parse (a record a kill cut
    /// short), with a warning naming it. Other lines are kept as written. The leader calls it
    /// at every start.
    pub fn truncate_metrics(&self, resumed: Option<usize>) -> Result<()> {
        let path = self.metrics_path();
        if !path.exists() {
            return Ok(());
        }
        let reader = JsonlReader::new(&path);
        let lines = reader.lines()?.collect::<Result<Vec<_>>>()?;
        let last = lines.iter().rposition(|l| !l.is_blank());
        let (mut kept, mut dropped) = (String::new(), 0);
        for (i, line) in lines.iter().enumerate() {
            let parsed = reader.parse::<serde_json::Value>(line);
            if let (Err(e), true) = (&parsed, Some(i) == last) {
                log::warn!("{e}; dropped: an unfinished record left by an interrupted write");
                continue;
            }
            let step = parsed
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
            if step.is_some_and(|s| resumed.is_none_or(|r| s > r as u64)) {
                dropped += 1;
                continue;
            }
            kept.push_str(&line.text);
            kept.push('\n');
        }
        if dropped > 0 {
            log::info!(
                "{}: dropped {dropped} record(s) of steps after {}",
                path.display(),
                resumed.map_or("the start".to_string(), |r| format!("step {r}"))
            );
        }
        write_atomic(&path, kept.as_bytes())
    }

    /// Writes the final model to `RUN_DIR/final`: HuggingFace's layout in `[model] save_dtype`,
    /// or with `[lora]` the adapters as PEFT writes them (`longrl merge` folds them in).
    pub fn save_final<B: Backend>(
        &self,
        model: &Qwen2ForCausalLM<B>,
        section: &ModelSection,
    ) -> Result<PathBuf> {
        let dir = self.final_dir();
        save_weights(model, section, &dir, section.save_dtype()?)?;
        Ok(dir)
    }
}

/// Checks that checkpoint `ckpt` is whole before anything is loaded from it: every JSON file in
/// it parses, every weight file (the adapter's, or the model's shards) is a complete safetensors
/// file, and the optimiser state is not empty. The error names the file and what is wrong.
pub fn check_checkpoint(ckpt: &Path) -> Result<()> {
    let entries = std::fs::read_dir(ckpt).map_err(|e| Error::io(ckpt, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(ckpt, e))?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            serde_json::from_slice::<serde_json::Value>(&text)
                .map_err(|e| Error::checkpoint(&path, format!("not valid JSON: {e}")))?;
        }
    }
    let weights = if is_adapter_dir(ckpt) {
        vec![ckpt.join(ADAPTER_WEIGHTS)]
    } else {
        weight_files(ckpt)?
    };
    for file in weights {
        check_weight_file(&file)?;
    }
    let optimizer = ckpt.join(OPTIMIZER_FILE);
    let len = std::fs::metadata(&optimizer)
        .map_err(|e| Error::io(&optimizer, e))?
        .len();
    if len == 0 {
        return Err(Error::checkpoint(&optimizer, "empty (0 bytes)"));
    }
    Ok(())
}

/// Saves `model` into `dir`: its adapters as a PEFT folder when it has them, else the whole
/// model in `dtype`; tokenizer files come from the section's model folder.
fn save_weights<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    section: &ModelSection,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    match &section.lora {
        Some(lora) if model.has_adapters() => save_adapter(
            model,
            lora,
            &section.adapter_base_name(),
            dir,
            Some(&section.path),
        ),
        _ => save_model(model, dir, dtype, Some(&section.path), SHARD_BYTES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2-chatml")
    }

    /// A checkpoint folder as [`RunDir::save_checkpoint`] leaves it (the optimiser state is a
    /// stand-in: only the trainers decode it).
    fn fake_checkpoint(run: &RunDir, step: usize) -> PathBuf {
        let dir = run.checkpoints().join(format!("step-{step:08}"));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["model.safetensors", "config.json", "tokenizer.json"] {
            std::fs::copy(tiny().join(file), dir.join(file)).unwrap();
        }
        std::fs::write(dir.join(OPTIMIZER_FILE), b"state").unwrap();
        std::fs::write(dir.join(STATE_FILE), format!("{{\"step\": {step}}}")).unwrap();
        std::fs::write(run.checkpoints().join("latest"), format!("step-{step:08}")).unwrap();
        dir
    }

    fn cut(path: &Path, keep: usize) {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..keep.min(bytes.len())]).unwrap();
    }

    fn steps(run: &RunDir) -> Vec<u64> {
        std::fs::read_to_string(run.metrics_path())
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a whole record");
                v["step"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn each_record_is_one_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        let big = json!({"step": 1, "text": "x".repeat(10_000), "nested": {"a": [1, 2, 3]}});
        run.log_metrics(&big).unwrap();
        run.log_metrics(&json!({"step": 2, "loss": 0.5})).unwrap();
        let text = std::fs::read_to_string(run.metrics_path()).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(lines[0]).unwrap(),
            big
        );
        assert_eq!(steps(&run), [1, 2]);
    }

    #[test]
    fn an_unfinished_last_record_is_dropped_and_later_steps_too() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        for step in 0..=5 {
            run.log_metrics(&json!({"step": step, "loss": 1.0}))
                .unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(run.metrics_path())
            .unwrap();
        f.write_all(b"{\"step\": 6, \"lo").unwrap();
        run.truncate_metrics(Some(3)).unwrap();
        assert_eq!(steps(&run), [0, 1, 2, 3]);
        // The log continues with whole lines: the next record is not glued to a partial one.
        run.log_metrics(&json!({"step": 4})).unwrap();
        assert_eq!(steps(&run), [0, 1, 2, 3, 4]);

        // Resumed from a checkpoint after every logged step: only the partial line goes.
        let mut f = OpenOptions::new()
            .append(true)
            .open(run.metrics_path())
            .unwrap();
        f.write_all(b"{\"step\": 5, \"lo").unwrap();
        run.truncate_metrics(Some(4)).unwrap();
        assert_eq!(steps(&run), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_start_without_a_checkpoint_empties_the_log_of_step_records() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        for step in 0..3 {
            run.log_metrics(&json!({"step": step, "loss": 1.0}))
                .unwrap();
        }
        run.truncate_metrics(None).unwrap();
        assert_eq!(std::fs::read_to_string(run.metrics_path()).unwrap(), "");
        for step in 0..3 {
            run.log_metrics(&json!({"step": step, "loss": 1.0}))
                .unwrap();
        }
        assert_eq!(steps(&run), [0, 1, 2]);
        // No log yet: nothing to do.
        std::fs::remove_file(run.metrics_path()).unwrap();
        run.truncate_metrics(None).unwrap();
        assert!(!run.metrics_path().exists());
    }

    #[test]
    fn opening_removes_stale_temporaries_of_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let other = u32::MAX; // no process of this test has that id
        let stale = [
            format!("checkpoints/.latest.tmp{other}"),
            format!("final/.model.safetensors.tmp{other}"),
            format!("final/.config.json.tmp{other}"),
            format!(".metrics.jsonl.tmp{other}"),
        ];
        let kept = [
            format!("checkpoints/.latest.tmp{}", std::process::id()),
            format!(".config.toml.tmp{other}"), // fresh, in the root: maybe another machine's
            "final/model.safetensors".to_string(),
            "checkpoints/latest".to_string(),
        ];
        std::fs::create_dir_all(root.join("checkpoints/.tmp-step-00000004")).unwrap();
        std::fs::create_dir_all(root.join("final")).unwrap();
        for name in stale.iter().chain(&kept) {
            std::fs::write(root.join(name), b"x").unwrap();
        }
        let old = std::time::SystemTime::now() - Duration::from_secs(600);
        std::fs::File::options()
            .write(true)
            .open(root.join(&stale[3]))
            .unwrap()
            .set_modified(old)
            .unwrap();
        RunDir::open(root).unwrap();
        for name in &stale {
            assert!(!root.join(name).exists(), "{name} should be removed");
        }
        for name in &kept {
            assert!(root.join(name).exists(), "{name} should be kept");
        }
        assert!(!root.join("checkpoints/.tmp-step-00000004").exists());
    }

    #[test]
    fn workers_opening_the_run_directory_at_once_all_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let ckpts = dir.path().join("checkpoints");
            std::fs::create_dir_all(ckpts.join(".tmp-step-00000002/sub")).unwrap();
            std::fs::write(ckpts.join(".tmp-step-00000002/sub/a"), b"x").unwrap();
            std::fs::write(ckpts.join(format!(".latest.tmp{}", u32::MAX)), b"x").unwrap();
            std::thread::scope(|s| {
                let opens: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| RunDir::open(dir.path()).map(|_| ())))
                    .collect();
                for open in opens {
                    open.join().unwrap().unwrap();
                }
            });
            assert_eq!(std::fs::read_dir(&ckpts).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_damaged_latest_checkpoint_names_itself_and_offers_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        let first = fake_checkpoint(&run, 10);
        let second = fake_checkpoint(&run, 20);
        assert_eq!(run.resume_point(true).unwrap(), Some(second.clone()));
        let weights = second.join("model.safetensors");
        let len = std::fs::metadata(&weights).unwrap().len() as usize;
        cut(&weights, len / 2);
        let e = run.resume_point(true).unwrap_err().to_string();
        for part in [
            "step-00000020",
            "damaged",
            "model.safetensors",
            "truncated",
            "rm -r",
            "--resume",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(
            e.contains(&format!("continues from {}", first.display())),
            "{e}"
        );
        // Deleting the damaged folder, as the error says, resumes from the previous one, although
        // `latest` still names the deleted folder.
        std::fs::remove_dir_all(&second).unwrap();
        assert_eq!(run.resume_point(true).unwrap(), Some(first.clone()));

        // Other damage: a cut trainer state, an empty optimiser state, a cut config.
        for (file, keep) in [(STATE_FILE, 5), (OPTIMIZER_FILE, 0), ("config.json", 30)] {
            let ckpt = fake_checkpoint(&run, 30);
            cut(&ckpt.join(file), keep);
            let e = run.resume_point(true).unwrap_err().to_string();
            assert!(e.contains("step-00000030") && e.contains(file), "{e}");
            assert!(e.contains("step-00000010, the previous"), "{e}");
        }
        // With no complete checkpoint before it, the run starts over.
        cut(&first.join("model.safetensors"), 100);
        std::fs::remove_dir_all(run.checkpoints().join("step-00000030")).unwrap();
        let e = run.resume_point(true).unwrap_err().to_string();
        assert!(e.contains("starts from the beginning"), "{e}");
        // A failing optimiser load is reported the same way.
        let e = run
            .load_optimizer(&first, |p| {
                Err(Error::checkpoint(p, "optimiser state is damaged"))
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("step-00000010: damaged") && e.contains(OPTIMIZER_FILE),
            "{e}"
        );
    }
}
