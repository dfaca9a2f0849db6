//! The crate's error type: every failure a user can cause (bad files, bad configs, bad flags) is a
//! variant with a message that names the file or field and what was expected.

use std::path::{Path, PathBuf};

/// Errors returned by longrl's library functions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying OS error.
        source: std::io::Error,
    },
    /// A model `config.json` is malformed or describes an unsupported model.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A checkpoint does not match the model: missing, unexpected or mis-shaped tensors.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong, naming every offending tensor.
        message: String,
    },
    /// A tokenizer could not be loaded or does not fit the model.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An input file has a bad line.
    #[error("{path}:{line}: {message}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A device was requested that this build cannot provide.
    #[error("{0}")]
    Device(String),
    /// An invalid argument or request (e.g. a sequence longer than the model allows).
    #[error("{0}")]
    Invalid(String),
    /// A data-parallel run stopped: a worker failed or a collective operation timed out.
    #[error("data-parallel run: {0}")]
    Distributed(String),
    /// The LLM judge could not be reached (at start, or for longer than the allowed outage), so
    /// the reward cannot be computed as configured.
    #[error("{0}")]
    Judge(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A config error for `path`.
    pub fn config(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// A checkpoint error for `path`.
    pub fn checkpoint(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// A tokenizer error for `path`.
    pub fn tokenizer(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Tokenizer {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// Whether this is a file that does not exist (an optional file, e.g. a log to resume, that
    /// has not been written yet).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// An input error at `path:line`.
    pub fn input(path: impl AsRef<Path>, line: usize, message: impl Into<String>) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// Result alias for longrl's library functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;
