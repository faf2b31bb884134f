//! Exposing results: each completed instance appears under `out/<recipe>/<instance>/`, as a
//! link into the cache or a copy, swapped in atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cache::Cache;
use super::error::{Error, Result};
use super::plan::Planned;
use super::{Done, Options};

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
    for p in planned {
        let mut d = results
            .remove(&p.instance.name)
            .expect("every planned instance has an outcome");
        if d.completed() {
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

/// Makes a cache entry visible at `dst` (a symlink, or a copy), built under a temporary name
/// and renamed over the old one so concurrent runs never see a half-made result.
fn expose(src: &Path, dst: &Path, copy: bool) -> std::io::Result<()> {
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
            let rel = e.path().strip_prefix(&src).map_err(std::io::Error::other)?;
            let to = tmp.join(rel);
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
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "links need a unix system; use --copy-out",
        ));
        if dst.is_dir() && !dst.is_symlink() {
            std::fs::remove_dir_all(dst)?;
        }
    }
    std::fs::rename(&tmp, dst)?;
    Ok(())
}
