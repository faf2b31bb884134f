//! The pipeline engine: keys every stage instance of an expanded recipe, decides from the cache
//! what is done, and runs the rest in topological order (optionally in parallel), with per-key
//! locks, atomic cache entries, a lock file and links to the results.

pub mod cache;
mod error;
mod execute;
mod expose;
pub mod gc;
pub mod graph;
pub mod key;
pub mod lineage;
pub mod lockfile;
pub mod observer;
pub mod params;
mod plan;
pub mod registry;
mod schedule;
pub mod stage;

use std::collections::BTreeMap;
use std::path::PathBuf;

use cache::Cache;
pub use error::{Error, Result};
pub use graph::{Axis, Instance, Recipe};
pub use observer::{LogLines, Observer};
pub use plan::{plan, Planned, Reason, Status};
use registry::Registry;
use stage::Metrics;

/// How to run a recipe (the `run` command's flags).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Stages (or instances) to rerun, with everything downstream.
    pub force: Vec<String>,
    /// Run only this stage (its inputs must be cached).
    pub only: Option<String>,
    /// Run this stage and what it needs, nothing after.
    pub until: Option<String>,
    /// After a failure, keep running the branches that do not depend on it.
    pub keep_going: bool,
    /// Independent instances to run at once (0 counts as 1).
    pub jobs: usize,
    /// Plan and report, run nothing, write no lock file.
    pub dry_run: bool,
    /// Copy results into the out root instead of linking into the cache.
    pub copy_out: bool,
    /// Where `out/<recipe>/<instance>/` links go (default `out`).
    pub out_root: Option<PathBuf>,
}

/// What happened to one instance in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its entry was already in the cache.
    Cached,
    /// It ran and its entry was committed.
    Ran,
    /// Another process finished it while we waited for its lock.
    Reused,
    /// It failed; the error with its causes.
    Failed(String),
    /// Not run: an input failed, or not selected.
    NotRun(String),
}

/// One instance's result.
#[derive(Debug, Clone)]
pub struct Done {
    /// Instance name.
    pub name: String,
    /// Stage kind.
    pub kind: String,
    /// Stage key (its cache entry's directory name).
    pub key: String,
    /// What happened.
    pub outcome: Outcome,
    /// Wall-clock seconds spent (0 when cached).
    pub seconds: f64,
    /// The metrics of its entry (empty when it has none).
    pub metrics: Metrics,
    /// The kind's headline metric and its value, when present.
    pub headline: Option<(String, f64)>,
    /// Where the result was exposed (`out/<recipe>/<instance>`), when it completed.
    pub out: Option<PathBuf>,
}

/// A run's results.
#[derive(Debug)]
pub struct Summary {
    /// One per instance, in plan (topological) order.
    pub results: Vec<Done>,
}

impl Summary {
    /// Whether any instance failed.
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|d| matches!(d.outcome, Outcome::Failed(_)))
    }
    /// How many instances ran (not cached, not reused).
    pub fn executed(&self) -> usize {
        self.results
            .iter()
            .filter(|d| d.outcome == Outcome::Ran)
            .count()
    }
}

impl Done {
    /// True when the instance's entry exists (cached, ran, or reused).
    pub fn completed(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Cached | Outcome::Ran | Outcome::Reused
        )
    }

    /// The outcome in a word, as log lines write it (`ran`, `cached`, `FAILED: why`).
    pub fn outcome_word(&self) -> String {
        match &self.outcome {
            Outcome::Failed(e) => format!("FAILED: {e}"),
            o => format!("{o:?}").to_lowercase(),
        }
    }
}

/// Runs what the plan says, and writes the lock file and output links; events go to
/// [`LogLines`].
pub fn run(recipe: &Recipe, registry: &Registry, cache: &Cache, opts: &Options) -> Result<Summary> {
    run_observed(recipe, registry, cache, opts, &LogLines)
}

/// [`run`], telling `obs` what happens.
pub fn run_observed(
    recipe: &Recipe,
    registry: &Registry,
    cache: &Cache,
    opts: &Options,
    obs: &dyn Observer,
) -> Result<Summary> {
    let planned = plan(recipe, registry, cache, opts)?;
    let (mut results, pending) = triage(&planned, registry, cache, opts, obs);
    let ctx = schedule::Ctx {
        registry,
        cache,
        opts,
        obs,
        by_name: planned
            .iter()
            .map(|p| (p.instance.name.as_str(), p))
            .collect(),
    };
    schedule::run_pending(pending, &mut results, &ctx);
    cache.memo.save();
    let ordered = expose::expose_all(&planned, results, &recipe.name, opts, cache)?;
    if !opts.dry_run {
        lockfile::record(recipe, &planned, &ordered)?;
    }
    Ok(Summary { results: ordered })
}

/// Outcomes known before anything runs (cached, not selected, dry run) and the instances to run.
fn triage<'a>(
    planned: &'a [Planned],
    registry: &Registry,
    cache: &Cache,
    opts: &Options,
    obs: &dyn Observer,
) -> (BTreeMap<String, Done>, Vec<&'a Planned>) {
    let mut results = BTreeMap::new();
    let mut pending = vec![];
    for p in planned {
        let name = p.instance.name.clone();
        match &p.status {
            Status::Cached => {
                let Some(m) = cache.manifest(&p.instance.kind, &p.key) else {
                    // Removed between planning and now: run it.
                    pending.push(p);
                    continue;
                };
                let headline = registry
                    .get(&p.instance.kind)
                    .and_then(|k| k.headline())
                    .and_then(|h| m.metrics.get(h).map(|v| (h.to_string(), *v)));
                let done = Done {
                    name: name.clone(),
                    kind: p.instance.kind.clone(),
                    key: p.key.clone(),
                    outcome: Outcome::Cached,
                    seconds: 0.0,
                    headline,
                    metrics: m.metrics,
                    out: None,
                };
                results.insert(name, done);
            }
            Status::Skipped => {
                results.insert(name, execute::not_run(p, "not selected"));
            }
            Status::Run(reason) => {
                if let Reason::Damaged(what) = reason {
                    obs.warn(&format!(
                        "cache entry {} of {name} is damaged ({what}); running it again",
                        &p.key[..12]
                    ));
                }
                if opts.dry_run {
                    let why = format!("dry run ({reason})");
                    results.insert(name, execute::not_run(p, &why));
                } else {
                    pending.push(p);
                }
            }
        }
    }
    (results, pending)
}
