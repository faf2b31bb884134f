//! Commands on the cache: list, disk use, verify, and gc (the policy is `engine::gc`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};

use super::Global;
use ddp::engine::cache::Cache;
use ddp::engine::gc::{self, age_days, Policy};
use ddp::engine::lockfile::{self, LockFile};

/// `ddp-run cache ...`.
#[derive(clap::Subcommand)]
pub enum CacheCmd {
    /// List complete entries.
    Ls,
    /// Disk use per stage kind.
    Du,
    /// Check every entry's files against its manifest; damaged entries are reported (and
    /// removed with --fix; a run treats them as missing anyway).
    Verify {
        #[arg(long)]
        fix: bool,
    },
}

/// `ddp-run gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    /// Keep what these recipes' lock files reference.
    recipes: Vec<PathBuf>,
    #[arg(long)]
    older_than_days: Option<f64>,
    /// Remove the oldest entries until the cache is at most this many GB.
    #[arg(long)]
    max_size_gb: Option<f64>,
    #[arg(long)]
    dry_run: bool,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Runs one `cache` subcommand; `verify` exits 1 when it finds damage it did not fix.
pub fn cache(cmd: CacheCmd, g: &Global) -> Result<ExitCode> {
    let cache = Cache::open(&g.cache)?;
    let size = |kind: &str, key: &str| Cache::size_of(&cache.entry_dir(kind, key));
    match cmd {
        CacheCmd::Ls => {
            for m in cache.entries() {
                println!(
                    "{:<14} {} {:<48} {:>10.1} MB {:>6.1} days",
                    m.kind,
                    m.key.get(..12).unwrap_or(&m.key),
                    m.instance,
                    mb(size(&m.kind, &m.key)),
                    age_days(m.started_unix)
                );
            }
        }
        CacheCmd::Du => {
            let mut per: BTreeMap<String, (usize, u64)> = BTreeMap::new();
            for m in cache.entries() {
                let e = per.entry(m.kind.clone()).or_default();
                e.0 += 1;
                e.1 += size(&m.kind, &m.key);
            }
            for (k, (n, b)) in &per {
                println!("{k:<14} {n:>5} entries {:>10.1} MB", mb(*b));
            }
            let dl = Cache::size_of(&cache.root.join("downloads"));
            println!("{:<14} {:>5}         {:>10.1} MB", "downloads", "", mb(dl));
        }
        CacheCmd::Verify { fix } => return verify(&cache, fix),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(cache: &Cache, fix: bool) -> Result<ExitCode> {
    let mut bad = 0;
    let mut report = |kind: &str, key: &str, inst: &str, what: &str| -> Result<()> {
        bad += 1;
        println!(
            "DAMAGED {kind}/{} ({inst}): {what}",
            &key[..key.len().min(12)]
        );
        if fix {
            cache.discard(kind, key)?;
            println!("        removed");
        }
        Ok(())
    };
    let entries = cache.entries();
    for m in &entries {
        if let Some(what) = cache.verify(m)? {
            report(&m.kind, &m.key, &m.instance, &what)?;
        }
    }
    let broken = cache.damaged();
    for (kind, key, what) in &broken {
        report(kind, key, "no valid manifest", what)?;
    }
    cache.memo.save();
    println!("{} entries, {bad} damaged", entries.len() + broken.len());
    Ok(if bad > 0 && !fix {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Removes (or with --dry-run lists) what the policy selects, and the space freed.
pub fn gc(a: GcArgs, g: &Global) -> Result<ExitCode> {
    if a.recipes.is_empty() && a.older_than_days.is_none() && a.max_size_gb.is_none() {
        bail!("say what to remove: recipes whose lock files to keep, --older-than-days or --max-size-gb");
    }
    let mut keep: Option<BTreeSet<String>> = None;
    for r in &a.recipes {
        let lock = LockFile::read(r).ok_or_else(|| {
            anyhow!(
                "{} has no lock file ({}): run it first",
                r.display(),
                lockfile::path_for(r).display()
            )
        })?;
        let k = keep.get_or_insert_with(BTreeSet::new);
        k.extend(lock.stages.values().map(|s| s.key.clone()));
    }
    let policy = Policy {
        keep,
        older_than_days: a.older_than_days,
        max_bytes: a.max_size_gb.map(|gb| (gb * 1e9) as u64),
    };
    let cache = Cache::open(&g.cache)?;
    let doomed = gc::select(&cache, &policy);
    let (verb, total) = if a.dry_run {
        ("would remove", "would free")
    } else {
        ("removed", "freed")
    };
    let mut freed = 0;
    for (m, size) in &doomed {
        freed += size;
        let (kind, key, inst) = (&m.kind, m.key.get(..12).unwrap_or(&m.key), &m.instance);
        println!("{verb} {kind}/{key} ({inst}, {:.1} MB)", mb(*size));
        if !a.dry_run {
            cache.discard(&m.kind, &m.key)?;
        }
    }
    println!("{total} {:.1} MB in {} entries", mb(freed), doomed.len());
    Ok(ExitCode::SUCCESS)
}
