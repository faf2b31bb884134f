//! Running one instance: under its key's lock (another process may have finished it meanwhile),
//! into its temporary directory, then committing the entry with its manifest.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use indicatif::ProgressBar;

use super::cache::{Cache, Manifest, MANIFEST};
use super::error::{Error, Result};
use super::observer::Observer;
use super::plan::{Planned, Reason, Status};
use super::registry::Registry;
use super::stage::{Input, Metrics, StageContext};
use super::{Done, Outcome};

pub(crate) fn not_run(p: &Planned, why: &str) -> Done {
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
pub(crate) fn execute(
    p: &Planned,
    registry: &Registry,
    cache: &Cache,
    inputs: BTreeMap<String, Input>,
    bar: &ProgressBar,
    obs: &dyn Observer,
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
        super::cache::ensure_dir(&tmp, "creating")?;
        keep_only(&tmp, kind.resume_files())?;
        obs.running(&name, &p.key);
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
            observer: obs,
        };
        let metrics = kind.run(&ctx).map_err(|source| Error::Stage {
            instance: name.clone(),
            source,
        })?;
        let files = cache.digest_outputs(&tmp)?;
        let m = Manifest {
            key: p.key.clone(),
            kind: kind.name().into(),
            version: kind.version(),
            instance: name.clone(),
            params: serde_json::to_value(&p.instance.params).map_err(|e| Error::Manifest {
                path: tmp.join(MANIFEST),
                what: e.to_string(),
            })?,
            inputs: inputs
                .iter()
                .map(|(n, i)| (n.clone(), i.key.clone()))
                .collect(),
            input_kinds: inputs
                .iter()
                .map(|(n, i)| (n.clone(), i.kind.clone()))
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
        // A stage's own error reads as it always has, without the instance (the line names it).
        Err(Error::Stage { source, .. }) => Outcome::Failed(format!("{source:#}")),
        Err(e) => Outcome::Failed(e.chain()),
    };
    done.headline = kind
        .headline()
        .and_then(|h| done.metrics.get(h).map(|v| (h.to_string(), *v)));
    done
}

/// Clears what an earlier attempt (or anything else) left in a temporary directory, except the
/// files the kind resumes from.
fn keep_only(tmp: &Path, resume: &[&str]) -> Result<()> {
    let entries = std::fs::read_dir(tmp).map_err(|e| Error::io("reading", tmp, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io("reading", tmp, e))?;
        let p = e.path();
        if resume.iter().any(|r| e.file_name() == *r) && p.is_file() {
            continue;
        }
        let removed = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed.map_err(|e| Error::io("removing a leftover", &p, e))?;
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
