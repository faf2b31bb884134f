//! Planning: every instance's key (kind, version, parameters, input keys, external files) and
//! whether it is cached or must run, with the reason; `--force`, `--only` and `--until`.

use std::collections::{BTreeMap, BTreeSet};

use super::cache::{Cache, EntryState};
use super::error::{Error, Result};
use super::graph::{Instance, Recipe};
use super::key;
use super::lockfile::LockFile;
use super::registry::Registry;
use super::Options;

/// Why an instance will run.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Nothing in the cache under its key (new, or the lock file's key is the same).
    NoEntry,
    /// Parameters differ from the lock file's record (their names).
    ParamsChanged(Vec<String>),
    /// An input's key differs from the lock file's record (the upstream instance).
    InputChanged(String),
    /// Same parameters and inputs: the kind's version or an external file changed.
    VersionOrFilesChanged,
    /// `--force` named it or an upstream of it.
    Forced,
    /// Its entry exists but does not match its manifest (what is wrong).
    Damaged(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoEntry => write!(f, "no entry"),
            Reason::ParamsChanged(p) => write!(f, "params changed: {}", p.join(", ")),
            Reason::InputChanged(s) => write!(f, "input changed: {s}"),
            Reason::VersionOrFilesChanged => write!(f, "stage version or input files changed"),
            Reason::Forced => write!(f, "forced"),
            Reason::Damaged(w) => write!(f, "cache entry damaged ({w})"),
        }
    }
}

/// What the plan says of an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Its entry is in the cache and intact.
    Cached,
    /// It must run, and why.
    Run(Reason),
    /// Not selected by --only / --until.
    Skipped,
}

/// One instance of the plan.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The instance as the recipe expanded it.
    pub instance: Instance,
    /// Its stage key.
    pub key: String,
    /// Its kind's version (part of the key).
    pub version: u32,
    /// Cached, to run, or skipped.
    pub status: Status,
}

pub(crate) fn matches_stage(sel: &str, inst: &Instance) -> bool {
    sel == inst.stage || sel == inst.name
}

/// Keys and statuses of every instance, in topological order.
pub fn plan(
    recipe: &Recipe,
    registry: &Registry,
    cache: &Cache,
    opts: &Options,
) -> Result<Vec<Planned>> {
    let previous = LockFile::read(&recipe.path);
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut forced: BTreeSet<String> = BTreeSet::new();
    let mut out = vec![];
    for inst in &recipe.instances {
        let kind = registry
            .get(&inst.kind)
            .ok_or_else(|| Error::UnknownKind(registry.unknown_kind_message(&inst.kind)))?;
        let input_keys: BTreeMap<String, String> = inst
            .inputs
            .iter()
            .map(|(n, up)| (n.clone(), keys[up].clone()))
            .collect();
        let mut files = vec![];
        for f in kind
            .external_files(&inst.params, &cache.root)
            .map_err(|source| Error::Stage {
                instance: inst.name.clone(),
                source,
            })?
        {
            let d = cache.memo.digest(&f).map_err(|e| Error::ForStage {
                instance: inst.name.clone(),
                source: Box::new(e),
            })?;
            files.push((
                f.file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                d,
            ));
        }
        let key = key::stage_key(
            kind.name(),
            kind.version(),
            &inst.params,
            &input_keys,
            &files,
        );
        keys.insert(inst.name.clone(), key.clone());
        let is_forced = opts.force.iter().any(|f| matches_stage(f, inst))
            || inst.inputs.values().any(|u| forced.contains(u));
        if is_forced {
            forced.insert(inst.name.clone());
        }
        let entry = cache.entry(kind.name(), &key);
        let status = if is_forced {
            Status::Run(Reason::Forced)
        } else if let EntryState::Complete(m) = entry {
            match cache.check(&m)? {
                None => Status::Cached,
                Some(what) => Status::Run(Reason::Damaged(what)),
            }
        } else if let EntryState::Broken(what) = entry {
            Status::Run(Reason::Damaged(what))
        } else {
            let prev = previous.as_ref().and_then(|l| l.stages.get(&inst.name));
            Status::Run(match prev {
                None => Reason::NoEntry,
                Some(p) if p.key == key => Reason::NoEntry,
                Some(p) => {
                    let mut changed: Vec<String> = inst
                        .params
                        .iter()
                        .filter(|(k, v)| p.params.get(*k) != Some(v))
                        .map(|(k, _)| k.clone())
                        .collect();
                    changed.extend(
                        p.params
                            .keys()
                            .filter(|k| !inst.params.contains_key(*k))
                            .cloned(),
                    );
                    if !changed.is_empty() {
                        Reason::ParamsChanged(changed)
                    } else if let Some((_, up)) = inst
                        .inputs
                        .iter()
                        .find(|(n, _)| p.inputs.get(*n) != input_keys.get(*n))
                    {
                        Reason::InputChanged(up.clone())
                    } else {
                        Reason::VersionOrFilesChanged
                    }
                }
            })
        };
        out.push(Planned {
            instance: inst.clone(),
            key,
            version: kind.version(),
            status,
        });
    }
    select(&mut out, opts)?;
    Ok(out)
}

/// Applies --only / --until.
fn select(plan: &mut [Planned], opts: &Options) -> Result<()> {
    fn check(plan: &[Planned], sel: &str) -> Result<()> {
        if plan.iter().any(|p| matches_stage(sel, &p.instance)) {
            Ok(())
        } else {
            Err(Error::NoSuchStage(sel.to_string()))
        }
    }
    for f in &opts.force {
        check(plan, f)?;
    }
    if let Some(only) = &opts.only {
        check(plan, only)?;
        for p in plan.iter_mut() {
            if !matches_stage(only, &p.instance) && p.status != Status::Cached {
                p.status = Status::Skipped;
            }
        }
    }
    if let Some(until) = &opts.until {
        check(plan, until)?;
        let mut needed: BTreeSet<String> = plan
            .iter()
            .filter(|p| matches_stage(until, &p.instance))
            .map(|p| p.instance.name.clone())
            .collect();
        for p in plan.iter().rev() {
            if needed.contains(&p.instance.name) {
                needed.extend(p.instance.inputs.values().cloned());
            }
        }
        for p in plan.iter_mut() {
            if !needed.contains(&p.instance.name) && p.status != Status::Cached {
                p.status = Status::Skipped;
            }
        }
    }
    Ok(())
}
