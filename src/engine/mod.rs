//! The pipeline engine: keys every stage instance of an expanded recipe, decides from the cache
//! what is done, and runs the rest in topological order (optionally in parallel), with per-key
//! locks, atomic cache entries, a lock file and links to the results.

pub mod cache;
pub mod gc;
pub mod graph;
pub mod key;
pub mod lockfile;
pub mod params;
pub mod registry;
pub mod stage;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use graph::{Axis, Instance, Recipe};
use cache::{Cache, Manifest};
use lockfile::{LockFile, LockedStage};
use registry::Registry;
use stage::{Input, Metrics, StageContext};

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Stages (or instances) to rerun, with everything downstream.
    pub force: Vec<String>,
    /// Run only this stage (its inputs must be cached).
    pub only: Option<String>,
    /// Run this stage and what it needs, nothing after.
    pub until: Option<String>,
    pub keep_going: bool,
    pub jobs: usize,
    pub dry_run: bool,
    pub copy_out: bool,
    /// Where `out/<recipe>/<instance>/` links go (default `out`).
    pub out_root: Option<PathBuf>,
    /// Compute device for stages that run models (`cpu` when empty).
    pub device: String,
}

/// Why an instance will run.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    NoEntry,
    ParamsChanged(Vec<String>),
    InputChanged(String),
    VersionOrFilesChanged,
    Forced,
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

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Cached,
    Run(Reason),
    /// Not selected by --only / --until.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Planned {
    pub instance: Instance,
    pub key: String,
    pub version: u32,
    pub status: Status,
}

/// What happened to one instance in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    Ran,
    /// Another process finished it while we waited for its lock.
    Reused,
    Failed(String),
    /// Not run: an input failed, or not selected.
    NotRun(String),
}

#[derive(Debug, Clone)]
pub struct Done {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub outcome: Outcome,
    pub seconds: f64,
    pub metrics: Metrics,
    pub headline: Option<(String, f64)>,
    pub out: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Summary {
    pub results: Vec<Done>,
}

impl Summary {
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|d| matches!(d.outcome, Outcome::Failed(_)))
    }
    pub fn executed(&self) -> usize {
        self.results
            .iter()
            .filter(|d| d.outcome == Outcome::Ran)
            .count()
    }
}

fn matches_stage(sel: &str, inst: &Instance) -> bool {
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
            .ok_or_else(|| anyhow!(registry.unknown_kind_message(&inst.kind)))?;
        let input_keys: BTreeMap<String, String> = inst
            .inputs
            .iter()
            .map(|(n, up)| (n.clone(), keys[up].clone()))
            .collect();
        let mut files = vec![];
        for f in kind
            .external_files(&inst.params, &cache.root)
            .with_context(|| format!("stage {}", inst.name))?
        {
            let d = cache
                .memo
                .digest(&f)
                .with_context(|| format!("stage {}: reading {}", inst.name, f.display()))?;
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
        let status = if is_forced {
            Status::Run(Reason::Forced)
        } else if let Some(m) = cache.manifest(kind.name(), &key) {
            match cache.check(&m)? {
                None => Status::Cached,
                Some(what) => Status::Run(Reason::Damaged(what)),
            }
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
            bail!("no stage or instance named `{sel}` in this recipe")
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

fn progress_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {prefix:<40} [{bar:25}] {pos}/{len} {per_sec} eta {eta} {msg}",
    )
    .unwrap()
    .progress_chars("=> ")
}

/// Runs what the plan says, and writes the lock file and output links.
pub fn run(recipe: &Recipe, registry: &Registry, cache: &Cache, opts: &Options) -> Result<Summary> {
    let planned = plan(recipe, registry, cache, opts)?;
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let mut results: BTreeMap<String, Done> = BTreeMap::new();
    let by_name: BTreeMap<&str, &Planned> = planned
        .iter()
        .map(|p| (p.instance.name.as_str(), p))
        .collect();
    let mut pending: Vec<&Planned> = vec![];
    for p in &planned {
        let kind = registry.get(&p.instance.kind).unwrap();
        let headline = |m: &Metrics| {
            kind.headline()
                .and_then(|h| m.get(h).map(|v| (h.to_string(), *v)))
        };
        match &p.status {
            Status::Cached => {
                let m = cache.manifest(&p.instance.kind, &p.key).unwrap();
                results.insert(
                    p.instance.name.clone(),
                    Done {
                        name: p.instance.name.clone(),
                        kind: p.instance.kind.clone(),
                        key: p.key.clone(),
                        outcome: Outcome::Cached,
                        seconds: 0.0,
                        headline: headline(&m.metrics),
                        metrics: m.metrics,
                        out: None,
                    },
                );
            }
            Status::Skipped => {
                results.insert(p.instance.name.clone(), not_run(p, "not selected"));
            }
            Status::Run(reason) => {
                if let Status::Run(Reason::Damaged(what)) = &p.status {
                    eprintln!(
                        "warning: cache entry {} of {} is damaged ({what}); running it again",
                        &p.key[..12],
                        p.instance.name
                    );
                }
                if opts.dry_run {
                    results.insert(
                        p.instance.name.clone(),
                        not_run(p, &format!("dry run ({reason})")),
                    );
                } else {
                    pending.push(p);
                }
            }
        }
    }
    let jobs = opts.jobs.max(1);
    let (tx, rx) = mpsc::channel::<Done>();
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut stop = false;
    std::thread::scope(|scope| {
        loop {
            // Instances whose inputs failed can never run.
            let mut i = 0;
            while i < pending.len() {
                let p = pending[i];
                let bad = p.instance.inputs.values().find(|u| {
                    results.get(*u).is_some_and(|d| {
                        matches!(d.outcome, Outcome::Failed(_) | Outcome::NotRun(_))
                    })
                });
                if let Some(u) = bad {
                    let why = format!("input {u} did not complete");
                    results.insert(p.instance.name.clone(), not_run(p, &why));
                    pending.remove(i);
                } else {
                    i += 1;
                }
            }
            if !stop {
                while running.len() < jobs {
                    let ready = pending.iter().position(|p| {
                        p.instance.inputs.values().all(|u| {
                            results.get(u).is_some_and(|d| {
                                matches!(
                                    d.outcome,
                                    Outcome::Cached | Outcome::Ran | Outcome::Reused
                                )
                            })
                        })
                    });
                    let Some(at) = ready else { break };
                    let p = pending.remove(at);
                    running.insert(p.instance.name.clone());
                    let inputs: BTreeMap<String, Input> = p
                        .instance
                        .inputs
                        .iter()
                        .map(|(n, up)| {
                            let d = &results[up];
                            let upk = by_name[up.as_str()];
                            (
                                n.clone(),
                                Input {
                                    stage: up.clone(),
                                    kind: upk.instance.kind.clone(),
                                    key: d.key.clone(),
                                    dir: cache.entry_dir(&upk.instance.kind, &d.key),
                                    metrics: d.metrics.clone(),
                                },
                            )
                        })
                        .collect();
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(progress_style());
                    bar.set_prefix(p.instance.name.clone());
                    let tx = tx.clone();
                    let device = if opts.device.is_empty() {
                        "cpu"
                    } else {
                        opts.device.as_str()
                    };
                    scope.spawn(move || {
                        let done = execute(p, registry, cache, inputs, &bar, tty, device);
                        bar.finish_and_clear();
                        let _ = tx.send(done);
                    });
                }
            }
            if running.is_empty() {
                break;
            }
            let done = rx.recv().expect("a running stage reports");
            running.remove(&done.name);
            if matches!(done.outcome, Outcome::Failed(_)) && !opts.keep_going {
                stop = true;
            }
            results.insert(done.name.clone(), done);
        }
    });
    for p in pending {
        results
            .entry(p.instance.name.clone())
            .or_insert_with(|| not_run(p, "stopped after a failure"));
    }
    cache.memo.save();
    // Results in plan order, with links under out/.
    let out_root = opts
        .out_root
        .clone()
        .unwrap_or_else(|| PathBuf::from("out"))
        .join(&recipe.name);
    let mut ordered = vec![];
    for p in &planned {
        let mut d = results.remove(&p.instance.name).unwrap();
        if matches!(d.outcome, Outcome::Cached | Outcome::Ran | Outcome::Reused) {
            let src = cache.entry_dir(&d.kind, &d.key);
            let dst = out_root.join(&d.name);
            expose(&src, &dst, opts.copy_out)
                .with_context(|| format!("exposing {} at {}", d.name, dst.display()))?;
            d.out = Some(dst);
        }
        ordered.push(d);
    }
    if !opts.dry_run {
        let mut lock = LockFile::read(&recipe.path).unwrap_or_default();
        lock.recipe = recipe.name.clone();
        lock.tool_version = env!("CARGO_PKG_VERSION").into();
        let current: BTreeSet<&str> = planned.iter().map(|p| p.instance.name.as_str()).collect();
        lock.stages.retain(|k, _| current.contains(k.as_str()));
        for (p, d) in planned.iter().zip(&ordered) {
            if matches!(d.outcome, Outcome::Cached | Outcome::Ran | Outcome::Reused) {
                let input_keys = p
                    .instance
                    .inputs
                    .iter()
                    .map(|(n, up)| {
                        (
                            n.clone(),
                            ordered
                                .iter()
                                .find(|x| &x.name == up)
                                .map(|x| x.key.clone())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                lock.stages.insert(
                    d.name.clone(),
                    LockedStage {
                        kind: d.kind.clone(),
                        key: d.key.clone(),
                        params: p.instance.params.clone(),
                        inputs: input_keys,
                        metrics: d.metrics.clone(),
                    },
                );
            }
        }
        lock.write(&recipe.path)?;
    }
    Ok(Summary { results: ordered })
}

fn not_run(p: &Planned, why: &str) -> Done {
    Done {
        name: p.instance.name.clone(),
        kind: p.instance.kind.clone(),
        key: p.key.clone(),
        outcome: Outcome::NotRun(why.into()),
        seconds: 0.0,
        metrics: Metrics::new(),
        headline: None,
        out: None,
    }
}

/// Runs one instance under its key lock, into its temp dir, and commits the entry.
fn execute(
    p: &Planned,
    registry: &Registry,
    cache: &Cache,
    inputs: BTreeMap<String, Input>,
    bar: &ProgressBar,
    tty: bool,
    device: &str,
) -> Done {
    let kind = registry.get(&p.instance.kind).unwrap().clone();
    let name = p.instance.name.clone();
    let t0 = Instant::now();
    let mut done = not_run(p, "");
    let result = (|| -> Result<Outcome> {
        let _lock = cache.lock(&p.key)?;
        // Another process may have finished it while we waited.
        if let Some(m) = cache.manifest(kind.name(), &p.key) {
            if cache.check(&m)?.is_none() && p.status != Status::Run(Reason::Forced) {
                done.metrics = m.metrics;
                return Ok(Outcome::Reused);
            }
        }
        let tmp = cache.temp_dir(kind.name(), &p.key);
        std::fs::create_dir_all(&tmp)?;
        if !tty {
            eprintln!("[ddp] run   {name} ({})", &p.key[..12]);
        }
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ctx = StageContext {
            instance: &name,
            params: &p.instance.params,
            inputs: inputs.clone(),
            out_dir: &tmp,
            cache_root: &cache.root,
            progress: bar,
            device,
        };
        let metrics = kind.run(&ctx)?;
        let files = cache.digest_outputs(&tmp)?;
        let m = Manifest {
            key: p.key.clone(),
            kind: kind.name().into(),
            version: kind.version(),
            instance: name.clone(),
            params: serde_json::to_value(&p.instance.params)?,
            inputs: inputs
                .iter()
                .map(|(n, i)| (n.clone(), i.key.clone()))
                .collect(),
            files,
            metrics: metrics.clone(),
            started_unix,
            seconds: t0.elapsed().as_secs_f64(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            host: hostname(),
        };
        cache.commit(&tmp, &m)?;
        done.metrics = metrics;
        Ok(Outcome::Ran)
    })();
    done.seconds = t0.elapsed().as_secs_f64();
    done.outcome = match result {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    if !tty {
        let what = match &done.outcome {
            Outcome::Failed(e) => format!("FAILED: {e}"),
            o => format!("{o:?}").to_lowercase(),
        };
        eprintln!("[ddp] done  {name}: {what} in {:.1}s", done.seconds);
    }
    done.headline = kind
        .headline()
        .and_then(|h| done.metrics.get(h).map(|v| (h.to_string(), *v)));
    done
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Makes a cache entry visible at `dst` (a symlink, or a copy), built under a temporary name
/// and renamed over the old one so concurrent runs never see a half-made result.
fn expose(src: &Path, dst: &Path, copy: bool) -> Result<()> {
    let parent = dst.parent().unwrap();
    std::fs::create_dir_all(parent)?;
    let src = std::fs::canonicalize(src)?;
    let tmp = parent.join(format!(
        ".{}.tmp{}",
        dst.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp);
    if copy {
        for e in walkdir::WalkDir::new(&src) {
            let e = e?;
            let to = tmp.join(e.path().strip_prefix(&src)?);
            if e.file_type().is_dir() {
                std::fs::create_dir_all(&to)?;
            } else {
                std::fs::copy(e.path(), &to)?;
            }
        }
        if dst.is_dir() && !dst.is_symlink() {
            std::fs::remove_dir_all(dst)?;
        }
    } else {
        #[cfg(unix)]
        std::os::unix::fs::symlink(&src, &tmp)?;
        #[cfg(not(unix))]
        bail!("links need a unix system; use --copy-out");
        if dst.is_dir() && !dst.is_symlink() {
            std::fs::remove_dir_all(dst)?;
        }
    }
    std::fs::rename(&tmp, dst)?;
    Ok(())
}
