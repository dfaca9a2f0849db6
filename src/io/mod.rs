//! Small file helpers shared by every module that writes or reads run files: atomic writes (a
//! reader never sees half a checkpoint, metrics log or summary) and the one JSONL reader whose
//! errors name the file and line.

pub mod jsonl;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

pub use jsonl::{read_jsonl, JsonlLine, JsonlReader};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The temporary file an atomic write of `path` goes through: hidden, in the same folder (so the
/// rename stays on one file system), and named by the process so concurrent writers do not clash.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// The process id in `name` when it is the name of an atomic write's temporary file
/// ([`tmp_path`]: `.NAME.tmpPID`), else `None`.
pub fn tmp_path_pid(name: &str) -> Option<u32> {
    let (stem, pid) = name.strip_prefix('.')?.rsplit_once(".tmp")?;
    if stem.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes from `dir` the temporary files of atomic writes that other processes left unfinished
/// (killed before their rename), keeping this process's and those modified less than `min_age`
/// ago (a write still in progress on another machine sharing the folder); returns the removed
/// paths. A missing `dir` has none.
pub fn remove_stale_tmp_files(dir: &Path, min_age: Duration) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let pid = entry.file_name().to_str().and_then(tmp_path_pid);
        if pid.is_none_or(|pid| pid == std::process::id()) {
            continue;
        }
        let path = entry.path();
        // Another thread of this run (a data-parallel worker) may remove the same file first.
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, e)),
        };
        let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
        if !meta.is_file() || age.is_none_or(|age| age < min_age) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["state.json".to_string()]);
        let tmp = tmp_path(&path);
        assert_eq!(tmp.parent(), path.parent());
        assert!(tmp
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".state.json.tmp"));
    }

    #[test]
    fn a_failed_atomic_write_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no_such_dir").join("x.json");
        let e = write_atomic(&missing, b"x").unwrap_err().to_string();
        assert!(e.contains("no_such_dir"), "{e}");
        // A write that fails part-way leaves the file as it was: a folder where the temporary
        // file goes makes the write fail before the rename.
        let state = dir.path().join("state.json");
        std::fs::write(&state, b"old").unwrap();
        std::fs::create_dir(tmp_path(&state)).unwrap();
        let e = write_atomic(&state, b"new").unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
        assert_eq!(std::fs::read(&state).unwrap(), b"old");
    }

    #[test]
    fn stale_temporaries_of_other_processes_are_removed() {
        assert_eq!(tmp_path_pid(".latest.tmp1234"), Some(1234));
        assert_eq!(tmp_path_pid(".model.safetensors.tmp7"), Some(7));
        for name in [
            "latest",
            ".tmp-step-00000010",
            ".latest.tmp",
            ".tmp12",
            ".a.tmp12x",
            "a.tmp1",
        ] {
            assert_eq!(tmp_path_pid(name), None, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let own = tmp_path(&dir.path().join("latest"));
        let names = [
            ".latest.tmp999999999",
            ".config.json.tmp1",
            "keep.txt",
            ".a.tmp12x",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(&own, b"x").unwrap();
        // A folder with the pattern's name is not a write's temporary file.
        std::fs::create_dir(dir.path().join(".folder.tmp5")).unwrap();
        // Recent files are kept when a minimum age is asked for.
        assert!(remove_stale_tmp_files(dir.path(), Duration::from_secs(60))
            .unwrap()
            .is_empty());
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join(".config.json.tmp1"))
            .unwrap();
        file.set_modified(old).unwrap();
        let removed = remove_stale_tmp_files(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(removed, vec![dir.path().join(".config.json.tmp1")]);
        let removed = remove_stale_tmp_files(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(removed, vec![dir.path().join(".latest.tmp999999999")]);
        for kept in ["keep.txt", ".a.tmp12x", ".folder.tmp5"] {
            assert!(dir.path().join(kept).exists(), "{kept}");
        }
        assert!(own.exists(), "this process's temporary file is kept");
        assert!(
            remove_stale_tmp_files(&dir.path().join("missing"), Duration::ZERO)
                .unwrap()
                .is_empty()
        );
    }
}
