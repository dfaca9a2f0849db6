//! Small file helpers shared by every module that writes or reads run files: atomic writes (a
//! reader never sees half a checkpoint, metrics log or summary) and the one JSONL reader whose
//! errors name the file and line.

pub mod jsonl;

use std::path::{Path, PathBuf};

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
}
