//! `<recipe>.lock`: the resolved parameters, key and headline metrics of every stage instance
//! of the last run, written next to the recipe so runs are reproducible and diffable in git.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::stage::{Metrics, Params};

/// What one stage instance ran as.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockedStage {
    /// Stage kind name.
    pub kind: String,
    /// Its stage key (names its cache entry).
    pub key: String,
    /// The resolved parameters.
    pub params: Params,
    /// Input name -> key of the upstream entry.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Headline metrics of the run.
    #[serde(default)]
    pub metrics: Metrics,
}

/// The content of a `<recipe>.lock` file.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct LockFile {
    /// The recipe's name.
    pub recipe: String,
    /// `ddp` version (`CARGO_PKG_VERSION`) of the last run.
    pub tool_version: String,
    /// The `--set STAGE.PARAM=VALUE` overrides of the last run, as given (their values are in
    /// the stages' `params` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// Instance name -> what ran.
    pub stages: BTreeMap<String, LockedStage>,
}

/// The lock file of a recipe: its path with `.lock` appended (`a.toml` -> `a.toml.lock`).
pub fn path_for(recipe: &Path) -> PathBuf {
    let mut p = recipe.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl LockFile {
    /// The recipe's lock file, if it exists and parses.
    pub fn read(recipe: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path_for(recipe)).ok()?;
        toml::from_str(&text).ok()
    }

    /// Writes the recipe's lock file, replacing it atomically.
    pub fn write(&self, recipe: &Path) -> Result<()> {
        let p = path_for(recipe);
        let body = toml::to_string_pretty(self).map_err(|e| Error::LockFile {
            path: p.clone(),
            what: e.to_string(),
        })?;
        let text = format!(
            "# Written by ddp-run: the resolved parameters and key of every stage of the last run.\n{body}"
        );
        // Per-process temporary name: concurrent runs of one recipe each replace the file whole.
        let tmp = p.with_extension(format!("lock.tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| Error::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io("writing", &p, e))?;
        remove_dead_temps(&p);
        Ok(())
    }
}

/// Removes the `<lock file>.tmpPID` files of writers killed before their rename: those whose
/// process is gone (no `/proc/PID`; where there is no `/proc`, those over an hour old). Best
/// effort: a leftover only takes space.
fn remove_dead_temps(lock: &Path) {
    let Some(name) = lock.file_name() else { return };
    let dir = match lock.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!("{}.tmp", name.to_string_lossy());
    let proc = Path::new("/proc");
    let has_proc = proc.join("self").exists();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_string_lossy()
            .strip_prefix(&prefix)
            .map(str::to_owned)
        else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dead = if has_proc {
            !proc.join(&pid).exists()
        } else {
            let age = e.metadata().and_then(|m| m.modified()).ok();
            age.and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > std::time::Duration::from_secs(3600))
        };
        if dead {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Records a run in the recipe's lock file: every completed instance with its kind, key,
/// parameters, input keys and metrics; instances no longer in the recipe are dropped.
pub(crate) fn record(
    recipe: &super::Recipe,
    planned: &[super::Planned],
    ordered: &[super::Done],
) -> Result<()> {
    let mut lock = LockFile::read(&recipe.path).unwrap_or_default();
    lock.recipe = recipe.name.clone();
    lock.tool_version = env!("CARGO_PKG_VERSION").into();
    lock.overrides = recipe.overrides.clone();
    let current: BTreeSet<&str> = planned.iter().map(|p| p.instance.name.as_str()).collect();
    lock.stages.retain(|k, _| current.contains(k.as_str()));
    let key_of = |name: &String| {
        ordered
            .iter()
            .find(|x| &x.name == name)
            .map(|x| x.key.clone())
            .unwrap_or_default()
    };
    for (p, d) in planned.iter().zip(ordered).filter(|(_, d)| d.completed()) {
        let inputs = p
            .instance
            .inputs
            .iter()
            .map(|(n, up)| (n.clone(), key_of(up)))
            .collect();
        let stage = LockedStage {
            kind: d.kind.clone(),
            key: d.key.clone(),
            params: p.instance.params.clone(),
            inputs,
            metrics: d.metrics.clone(),
        };
        lock.stages.insert(d.name.clone(), stage);
    }
    lock.write(&recipe.path)
}
