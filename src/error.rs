//! One error type for the library. Every variant names the file (or source), the thing inside
//! it and what was expected, so a user can fix their input without reading our code.

use std::path::PathBuf;

/// Everything the library can fail with; the `Display` text is the message a user sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation on `path` failed. The OS error is part of the message and not
    /// a `source()`, so a printed chain (`{:#}`) shows it once.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory being read, written or listed.
        path: PathBuf,
        /// The underlying OS error.
        cause: std::io::Error,
    },

    /// A model/weights/tokenizer file whose content is not what it should be.
    #[error("{path}: {what}")]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },

    /// A tensor that is missing or has the wrong shape/dtype.
    #[error("{path}: tensor `{tensor}`: {what}")]
    BadTensor {
        /// The weights file the tensor was looked up in.
        path: PathBuf,
        /// The tensor's name in that file.
        tensor: String,
        /// What is wrong (missing, shape, dtype, ...).
        what: String,
    },

    /// A configuration value (config.json / GGUF metadata) that is absent or out of range.
    #[error("{path}: key `{key}`: {what}")]
    BadConfig {
        /// The config.json or GGUF file.
        path: PathBuf,
        /// The configuration key at fault.
        key: String,
        /// What is wrong with its value.
        what: String,
    },

    /// A model or data source specification that cannot be resolved.
    #[error("source `{spec}`: {what}")]
    Source {
        /// The specification as the user wrote it.
        spec: String,
        /// Why it cannot be resolved.
        what: String,
    },

    /// Device / backend selection problems (e.g. CUDA asked for but no driver).
    #[error("device `{device}`: {what}")]
    Device {
        /// The device as the user wrote it (`cpu`, `cuda:N`, ...).
        device: String,
        /// What went wrong.
        what: String,
    },

    /// A tokenizer that cannot be built, or that fails to encode/decode.
    #[error("tokenizer ({origin}): {what}")]
    Tokenizer {
        /// Where the tokenizer came from (its `tokenizer.json` or GGUF path).
        origin: String,
        /// What went wrong.
        what: String,
    },

    /// A caller passed arguments that cannot work (shapes, gate lengths, empty prompt, ...).
    #[error("{0}")]
    Invalid(String),
}

/// `std::result::Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    /// An [`Error::BadFile`] for `path`.
    pub fn bad_file(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            what: what.into(),
        }
    }

    /// An [`Error::BadTensor`] for `tensor` in `path`.
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

    /// An [`Error::BadConfig`] for `key` in `path`.
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
