//! Exposing results: each completed instance appears under `out/<recipe>/<instance>/`, as a
//! link into the cache or a copy, swapped in atomically.
//!
//! Concurrent runs may expose into one out directory: each holds `out/<recipe>/.expose.lock`
//! while it builds and swaps its results, so no two replace one name at once (replacing a
//! directory is two steps: move the old one aside, rename the new one in). Under the lock no
//! other exposer is at work, so the `.NAME.tmpPID` leftovers of killed ones are removed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::cache::Cache;
use super::error::{Error, Result};
use super::plan::Planned;
use super::{Done, Options};

/// The lock file in an out directory.
const LOCK: &str = ".expose.lock";

/// The outcomes in plan order, each completed one exposed under the out root.
pub(crate) fn expose_all(
    planned: &[Planned],
    mut results: BTreeMap<String, Done>,
    recipe_name: &str,
    opts: &Options,
    cache: &Cache,
) -> Result<Vec<Done>> {
    let out_root = opts
        .out_root
        .clone()
        .unwrap_or_else(|| PathBuf::from("out"))
        .join(recipe_name);
    let mut ordered = vec![];
    let mut lock = None;
    for p in planned {
        let mut d = results
            .remove(&p.instance.name)
            .expect("every planned instance has an outcome");
        if d.completed() {
            if lock.is_none() {
                lock = Some(lock_out_dir(&out_root)?);
            }
            let src = cache.entry_dir(&d.kind, &d.key);
            let dst = out_root.join(&d.name);
            expose(&src, &dst, opts.copy_out).map_err(|source| Error::Expose {
                instance: d.name.clone(),
                path: dst.clone(),
                source,
            })?;
            d.out = Some(dst);
        }
        ordered.push(d);
    }
    Ok(ordered)
}

/// Creates the out directory, takes its lock (blocking) and removes what killed exposers left.
fn lock_out_dir(dir: &Path) -> Result<File> {
    fs::create_dir_all(dir).map_err(|e| Error::io("creating the out directory", dir, e))?;
    let p = dir.join(LOCK);
    let f = File::create(&p).map_err(|e| Error::io("creating lock", &p, e))?;
    f.lock().map_err(|e| Error::io("locking", &p, e))?;
    let entries = fs::read_dir(dir).map_err(|e| Error::io("reading", dir, e))?;
    for e in entries.flatten() {
        if is_leftover(&e.file_name().to_string_lossy()) {
            remove(&e.path()).map_err(|err| Error::io("removing a leftover", e.path(), err))?;
        }
    }
    Ok(f)
}

/// Whether a file name is one of [`expose`]'s temporary names: `.NAME.tmpPID`, or
/// `.NAME.tmpPID.old` (a replaced result being removed).
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let rest = rest.strip_suffix(".old").unwrap_or(rest);
    rest.rsplit_once(".tmp").is_some_and(|(stem, pid)| {
        !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Removes a file, link or directory tree (a link is removed, not followed).
fn remove(p: &Path) -> std::io::Result<()> {
    if p.is_dir() && !p.is_symlink() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    }
}

/// Makes a cache entry visible at `dst` (a symlink, or a copy), built under a temporary name
/// and renamed over the old one so readers never see a half-made result. The caller holds the
/// out directory's lock.
fn expose(src: &Path, dst: &Path, copy: bool) -> std::io::Result<()> {
    let parent = dst.parent().unwrap();
    // An instance named after a path (a sweep over model directories) nests.
    fs::create_dir_all(parent)?;
    let src = fs::canonicalize(src)?;
    let name = dst.file_name().unwrap().to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    if copy {
        for e in walkdir::WalkDir::new(&src) {
            let e = e?;
            let rel = e.path().strip_prefix(&src).map_err(std::io::Error::other)?;
            let to = tmp.join(rel);
            if e.file_type().is_dir() {
                fs::create_dir_all(&to)?;
            } else {
                fs::copy(e.path(), &to)?;
            }
        }
    } else {
        #[cfg(unix)]
        std::os::unix::fs::symlink(&src, &tmp)?;
        #[cfg(not(unix))]
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "links need a unix system; use --copy-out",
        ));
    }
    // A link replaces a link in one rename; anything else is moved aside first (rename cannot
    // replace a directory that has files, nor a link by a directory).
    let both_links = !copy && dst.is_symlink();
    if !both_links && fs::symlink_metadata(dst).is_ok() {
        let old = parent.join(format!(".{name}.tmp{}.old", std::process::id()));
        fs::rename(dst, &old)?;
        fs::rename(&tmp, dst)?;
        return remove(&old);
    }
    fs::rename(&tmp, dst)
}
