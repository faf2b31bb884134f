//! Helpers shared by the model stages: finding the model an upstream `load` resolved, and
//! passing `model.json` down the chain so every stage knows its model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::artifacts::MODEL;
use crate::engine::stage::Input;
use crate::io::ModelFiles;

/// Copies `model.json` from an input entry into this stage's output.
pub fn forward_model_json(input: &Input, out_dir: &Path) -> Result<()> {
    let src = input.dir.join(MODEL);
    std::fs::copy(&src, out_dir.join(MODEL))
        .with_context(|| format!("{} has no {MODEL}", input.stage))?;
    Ok(())
}

/// Where a model is, as `model.json` records it (JSON: `{"cache_relative": "..."}` etc.).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// Inside the cache, relative to its root (the entry moves with the cache).
    CacheRelative(PathBuf),
    /// Inside the entry that holds this `model.json` (slice's `model/`).
    EntryRelative(PathBuf),
    /// Anywhere else, as given.
    Path(PathBuf),
}

/// `model.json`: where the model is, and what the stage that wrote it records about it
/// (`load`: source, format, dtype, config, parameter counts; `slice`: the sliced config).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRef {
    /// Where the model is.
    pub location: Location,
    /// Everything else the writer recorded, kept as written.
    #[serde(flatten)]
    pub about: serde_json::Map<String, serde_json::Value>,
}

impl ModelRef {
    /// Reads the `model.json` of the entry at `dir`, naming the file in errors.
    pub fn read(dir: &Path) -> Result<Self> {
        read_json(&dir.join(MODEL))
    }

    /// Writes it as the `model.json` of the entry being built at `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(MODEL), self)
    }

    /// The model's path, for the entry at `dir` in the cache at `cache_root`.
    pub fn path(&self, dir: &Path, cache_root: &Path) -> PathBuf {
        match &self.location {
            Location::CacheRelative(rel) => cache_root.join(rel),
            Location::EntryRelative(rel) => dir.join(rel),
            Location::Path(p) => p.clone(),
        }
    }
}

/// The model file/directory recorded in an input entry's `model.json`.
pub fn model_path(input: &Input, cache_root: &Path) -> Result<PathBuf> {
    Ok(ModelRef::read(&input.dir)?.path(&input.dir, cache_root))
}

/// Opens the model an input entry's `model.json` points at: the one preamble of every stage
/// that works on a model.
pub fn open_input(input: &Input, cache_root: &Path) -> Result<ModelFiles> {
    Ok(crate::io::open_model(&model_path(input, cache_root)?)?)
}

/// Reads a JSON file into `T`, naming the file in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not what this stage expects", path.display()))
}

/// Writes `v` as pretty-printed JSON to `path`.
pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("writing {}", path.display()))
}
