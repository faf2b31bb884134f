//! Helpers shared by the model stages: finding the model an upstream `load` resolved, and
//! passing `model.json` down the chain so every stage knows its model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

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

/// The model file/directory recorded in an input entry's `model.json`.
pub fn model_path(input: &Input, cache_root: &Path) -> Result<PathBuf> {
    super::load::model_path(&input.dir, cache_root)
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
