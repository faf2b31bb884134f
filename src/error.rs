//! One error type for the library. Every variant names the file (or source), the thing inside
//! it and what was expected, so a user can fix their input without reading our code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model/weights/tokenizer file whose content is not what it should be.
    #[error("{path}: {what}")]
    BadFile { path: PathBuf, what: String },

    /// A tensor that is missing or has the wrong shape/dtype.
    #[error("{path}: tensor `{tensor}`: {what}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },

    /// A configuration value (config.json / GGUF metadata) that is absent or out of range.
    #[error("{path}: key `{key}`: {what}")]
    BadConfig {
        path: PathBuf,
        key: String,
        what: String,
    },

    /// A model or data source specification that cannot be resolved.
    #[error("source `{spec}`: {what}")]
    Source { spec: String, what: String },

    /// Device / backend selection problems (e.g. CUDA asked for but no driver).
    #[error("device `{device}`: {what}")]
    Device { device: String, what: String },

    #[error("tokenizer ({origin}): {what}")]
    Tokenizer { origin: String, what: String },

    /// A caller passed arguments that cannot work (shapes, gate lengths, empty prompt, ...).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn bad_file(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            what: what.into(),
        }
    }
    pub fn bad_tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        Error::BadTensor {
            path: path.into(),
            tensor: tensor.into(),
            what: what.into(),
        }
    }
    pub fn bad_config(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        Error::BadConfig {
            path: path.into(),
            key: key.into(),
            what: what.into(),
        }
    }
}
