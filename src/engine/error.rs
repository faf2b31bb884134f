//! The engine's errors. Each message says what was being done (and to which file or stage); the
//! cause, when there is one, is the error's `source()`, so `{e:#}` through anyhow (the CLI)
//! reads "what: cause", as the engine's messages always have.

use std::path::PathBuf;

/// Everything the engine (planning, running, the cache and lock files) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation on `path` failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`creating the cache`, `locking`, `writing`, ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// A directory the cache needs exists as something else (a file, a FIFO, ...).
    #[error("cache directory {} is {found}, expected a directory", path.display())]
    NotADirectory {
        /// The directory's path.
        path: PathBuf,
        /// What is there instead (`a file`, `a symlink to a file`, ...).
        found: &'static str,
    },

    /// Writing in the cache failed for want of permission (or on a read-only file system).
    #[error("{} is not writable ({op} {})", dir.display(), path.display())]
    NotWritable {
        /// The directory that could not be written.
        dir: PathBuf,
        /// What was being done (`creating lock`, `writing`, ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// Renaming a finished temporary directory into its cache entry failed.
    #[error("moving {} into place", path.display())]
    Commit {
        /// The temporary directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// A recipe names a stage kind that is not registered (the message lists those that are).
    #[error("{0}")]
    UnknownKind(String),

    /// `--force`, `--only` or `--until` names no stage or instance of the recipe.
    #[error("no stage or instance named `{0}` in this recipe")]
    NoSuchStage(String),

    /// A manifest (or the parameters going into one) that cannot be encoded as JSON.
    #[error("{}: {what}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },

    /// A lock file that cannot be encoded as TOML.
    #[error("{}: {what}", path.display())]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },

    /// A stage's resolved parameters that do not fit its typed parameter struct.
    #[error("stage {instance}: parameters: {what}")]
    Params {
        /// The instance (or kind) whose parameters they are.
        instance: String,
        /// What does not fit.
        what: String,
    },

    /// A stage's own code (its `external_files` or `run`) failed.
    #[error("stage {instance}")]
    Stage {
        /// The instance whose stage failed.
        instance: String,
        /// The stage's error, with its causes.
        source: anyhow::Error,
    },

    /// The engine failed on behalf of a stage instance (e.g. digesting an external file).
    #[error("stage {instance}")]
    ForStage {
        /// The instance concerned.
        instance: String,
        /// What failed.
        source: Box<Error>,
    },

    /// A completed instance could not be linked or copied to its out directory.
    #[error("exposing {instance} at {}", path.display())]
    Expose {
        /// The instance being exposed.
        instance: String,
        /// Where it was to appear (`out/<recipe>/<instance>`).
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`]: `op` failed on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// [`Error::io`] for a write in the cache: a permission (or read-only file system) error
    /// becomes [`Error::NotWritable`], naming the directory that could not be written.
    pub fn cache_write(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        let denied = matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        );
        if !denied {
            return Error::io(op, path, source);
        }
        let dir = path
            .parent()
            .map_or_else(|| path.clone(), |p| p.to_path_buf());
        Error::NotWritable {
            dir,
            op,
            path,
            source,
        }
    }

    /// The message with every cause, joined by `": "` (what anyhow's `{e:#}` prints).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }
}

/// `std::result::Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
