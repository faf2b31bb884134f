//! The content-addressed store: `<cache>/<kind>/<key>/` holds a stage's artifacts and its
//! `manifest.json`. A stage writes into `<cache>/.tmp/<kind>-<key>/` (kept across a kill, so it
//! can resume); the engine renames it into place once the manifest is written. An entry is
//! complete exactly when its directory exists with a manifest of its own, intact: the manifest
//! carries a `digest` (blake3 of its other fields, canonical JSON) so an edited metric or
//! parameter makes the entry damaged instead of flowing into lock files and reports.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use walkdir::WalkDir;

use super::error::{Error, Result};
use super::key::DigestMemo;
use super::stage::Metrics;

/// One output file as recorded in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    /// blake3 digest of the content, hex.
    pub blake3: String,
    /// Length in bytes.
    pub size: u64,
}

/// `manifest.json` of a cache entry: what produced it, from what, and what it holds. The file
/// also has a `digest` field, written by [`Cache::commit`] and checked by [`read_manifest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The entry's stage key (its directory name).
    pub key: String,
    /// Stage kind name (the entry's parent directory).
    pub kind: String,
    /// Version of the stage kind that produced it.
    pub version: u32,
    /// Name of the recipe instance that produced it.
    pub instance: String,
    /// The instance's resolved parameters.
    pub params: serde_json::Value,
    /// Input name -> key.
    pub inputs: BTreeMap<String, String>,
    /// Input name -> the input's stage kind, so lineage is followed without searching
    /// (empty in entries written before it was recorded).
    #[serde(default)]
    pub input_kinds: BTreeMap<String, String>,
    /// Output files, relative to the entry directory.
    pub files: BTreeMap<String, FileRecord>,
    /// Headline metrics the stage returned.
    pub metrics: Metrics,
    /// When the stage started, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Wall-clock run time of the stage, seconds.
    pub seconds: f64,
    /// `ddp` version (`CARGO_PKG_VERSION`) that ran it.
    pub tool_version: String,
    /// Host name of the machine that ran it (empty when unknown).
    pub host: String,
}

/// The manifest in the entry directory `dir`, or what is wrong with it (unreadable, not a
/// manifest, or its recorded digest does not match its content).
pub fn read_manifest(dir: &Path) -> std::result::Result<Manifest, String> {
    let text = fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| format!("{MANIFEST} unreadable: {e}"))?;
    let not_manifest = |e: serde_json::Error| format!("{MANIFEST} is not a manifest: {e}");
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(not_manifest)?;
    let recorded = v.as_object_mut().and_then(|o| o.remove(DIGEST));
    let m: Manifest = serde_json::from_value(v.clone()).map_err(not_manifest)?;
    match recorded {
        Some(serde_json::Value::String(d)) if d == manifest_digest(&v) => Ok(m),
        // Entries of versions that did not seal manifests are recomputed once (their keys do
        // not change): an unsealed manifest is indistinguishable from one whose digest was cut.
        None => Err(format!(
            "{MANIFEST} has no digest (written by an older ddp, or edited)"
        )),
        Some(_) => Err(format!(
            "{MANIFEST} was edited: its digest does not match its content"
        )),
    }
}

/// The manifest field holding [`manifest_digest`] of the others.
const DIGEST: &str = "digest";

/// blake3 (hex) of a manifest's JSON (taken without its digest field), keys sorted at every
/// level so the digest does not depend on how a JSON map orders them.
fn manifest_digest(v: &serde_json::Value) -> String {
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&o[k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(x, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut text = String::new();
    canonical(v, &mut text);
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// What is at an entry's place `<root>/<kind>/<key>`.
#[derive(Debug, Clone)]
pub enum EntryState {
    /// Nothing.
    Missing,
    /// A directory without a valid manifest of its own: damaged (what is wrong).
    Broken(String),
    /// A complete entry.
    Complete(Box<Manifest>),
}

/// Makes sure `dir` is a directory, creating it (and its parents) if missing: something else
/// there, or a directory this user cannot create, is an error naming the path.
pub fn ensure_dir(dir: &Path, op: &'static str) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(m) => {
            let linked = fs::symlink_metadata(dir).is_ok_and(|l| l.is_symlink());
            let found = match (linked, m.is_file()) {
                (false, true) => "a file",
                (true, true) => "a symlink to a file",
                _ => "neither a file nor a directory",
            };
            return Err(Error::NotADirectory {
                path: dir.to_path_buf(),
                found,
            });
        }
        Err(_) => {}
    }
    fs::create_dir_all(dir).map_err(|e| Error::cache_write(op, dir, e))
}

/// A content-addressed store rooted at a directory.
pub struct Cache {
    /// The cache directory.
    pub root: PathBuf,
    /// File-digest memo (`<root>/digests.json`); [`DigestMemo::save`] persists it.
    pub memo: DigestMemo,
}

/// File name of an entry's manifest.
pub const MANIFEST: &str = "manifest.json";

impl Cache {
    /// Opens (creating if needed) the cache at `root`, with its `.tmp` and `.locks` dirs.
    pub fn open(root: &Path) -> Result<Self> {
        ensure_dir(root, "creating the cache")?;
        for d in [".tmp", ".locks"] {
            ensure_dir(&root.join(d), "creating")?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            memo: DigestMemo::open(root.join("digests.json")),
        })
    }

    /// `<root>/<kind>/<key>`: where a complete entry lives (whether or not it exists).
    pub fn entry_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// `<root>/.tmp/<kind>-<key>`: where a stage writes before its entry is committed.
    pub fn temp_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(".tmp").join(format!("{kind}-{key}"))
    }

    /// The manifest of a complete entry, if there is one (see [`Cache::entry`]).
    pub fn manifest(&self, kind: &str, key: &str) -> Option<Manifest> {
        match self.entry(kind, key) {
            EntryState::Complete(m) => Some(*m),
            _ => None,
        }
    }

    /// What is at an entry's place: nothing, a directory without a valid manifest of its own
    /// (unreadable, not a manifest, or one naming another kind or key), or a complete entry.
    pub fn entry(&self, kind: &str, key: &str) -> EntryState {
        let dir = self.entry_dir(kind, key);
        if !dir.exists() {
            return EntryState::Missing;
        }
        let m = match read_manifest(&dir) {
            Ok(m) => m,
            Err(why) => return EntryState::Broken(why),
        };
        if m.kind != kind || m.key != key {
            let short = &m.key[..m.key.len().min(12)];
            return EntryState::Broken(format!(
                "{MANIFEST} is that of {}/{short}, not of this entry",
                m.kind
            ));
        }
        EntryState::Complete(Box::new(m))
    }

    /// Takes the per-key lock (blocking): one process runs a key at a time.
    pub fn lock(&self, key: &str) -> Result<File> {
        let p = self.root.join(".locks").join(format!("{key}.lock"));
        let f = File::create(&p).map_err(|e| Error::cache_write("creating lock", &p, e))?;
        f.lock().map_err(|e| Error::io("locking", &p, e))?;
        Ok(f)
    }

    /// Checks an entry's files against its manifest. `Ok(None)` when intact, else what is wrong.
    /// Digests come from the memo when a file's path, size, mtime and inode are unchanged (fast
    /// no-op runs); [`Cache::verify`] re-hashes.
    pub fn check(&self, m: &Manifest) -> Result<Option<String>> {
        self.check_files(m, false)
    }

    /// [`Cache::check`] re-hashing every file: finds bit rot that kept the file's mtime.
    pub fn verify(&self, m: &Manifest) -> Result<Option<String>> {
        self.check_files(m, true)
    }

    fn check_files(&self, m: &Manifest, rehash: bool) -> Result<Option<String>> {
        let dir = self.entry_dir(&m.kind, &m.key);
        for (rel, rec) in &m.files {
            let p = dir.join(rel);
            let Ok(meta) = fs::metadata(&p) else {
                return Ok(Some(format!("{rel} is missing")));
            };
            if meta.len() != rec.size {
                return Ok(Some(format!(
                    "{rel} has {} bytes, the manifest says {}",
                    meta.len(),
                    rec.size
                )));
            }
            let digest = if rehash {
                self.memo.digest_fresh(&p)?
            } else {
                self.memo.digest(&p)?
            };
            if digest != rec.blake3 {
                return Ok(Some(format!("{rel} does not match its recorded digest")));
            }
        }
        Ok(None)
    }

    /// Records every file of a finished temp dir (manifest excluded).
    pub fn digest_outputs(&self, dir: &Path) -> Result<BTreeMap<String, FileRecord>> {
        let mut files = BTreeMap::new();
        let reading = |p: &Path, e: std::io::Error| Error::io("reading", p, e);
        for e in WalkDir::new(dir).sort_by_file_name() {
            let e = e.map_err(|e| {
                let p = e.path().unwrap_or(dir).to_path_buf();
                reading(&p, e.into())
            })?;
            if !e.file_type().is_file() {
                continue;
            }
            let Ok(rel) = e.path().strip_prefix(dir) else {
                continue; // WalkDir yields only paths under `dir`.
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel == MANIFEST {
                continue;
            }
            files.insert(
                rel,
                FileRecord {
                    blake3: self.memo.digest(e.path())?,
                    size: e
                        .metadata()
                        .map_err(|err| reading(e.path(), err.into()))?
                        .len(),
                },
            );
        }
        Ok(files)
    }

    /// Writes the manifest (sealed with its digest) into the temp dir and renames it into place.
    pub fn commit(&self, tmp: &Path, m: &Manifest) -> Result<PathBuf> {
        let mpath = tmp.join(MANIFEST);
        let encoding = |e: serde_json::Error| Error::Manifest {
            path: mpath.clone(),
            what: e.to_string(),
        };
        let mut v = serde_json::to_value(m).map_err(encoding)?;
        let digest = serde_json::Value::String(manifest_digest(&v));
        if let Some(o) = v.as_object_mut() {
            o.insert(DIGEST.into(), digest);
        }
        let text = serde_json::to_string_pretty(&v).map_err(encoding)?;
        fs::write(&mpath, text).map_err(|e| Error::cache_write("writing", &mpath, e))?;
        File::open(&mpath)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("syncing", &mpath, e))?;
        let dst = self.entry_dir(&m.kind, &m.key);
        let kind_dir = dst.parent().unwrap();
        ensure_dir(kind_dir, "creating")?;
        if dst.exists() {
            // A damaged entry being replaced.
            self.discard(&m.kind, &m.key)?;
        }
        fs::rename(tmp, &dst).map_err(|source| Error::Commit {
            path: tmp.to_path_buf(),
            source,
        })?;
        Ok(dst)
    }

    /// Moves an entry out of the way (to `.trash`) so it no longer counts.
    pub fn discard(&self, kind: &str, key: &str) -> Result<()> {
        let dir = self.entry_dir(kind, key);
        let trash = self.root.join(".trash");
        ensure_dir(&trash, "creating")?;
        let to = trash.join(format!("{kind}-{key}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&to);
        fs::rename(&dir, &to).map_err(|e| Error::cache_write("discarding", &dir, e))?;
        let _ = fs::remove_dir_all(&to);
        Ok(())
    }

    /// Every entry place `<kind>/<key>` under the root, sorted, with its state.
    fn places(&self) -> Vec<(String, String, EntryState)> {
        let mut out = vec![];
        let Ok(kinds) = fs::read_dir(&self.root) else {
            return out;
        };
        for k in kinds.flatten() {
            let kind = k.file_name().to_string_lossy().into_owned();
            if kind.starts_with('.') || kind == "downloads" || !k.path().is_dir() {
                continue;
            }
            for e in fs::read_dir(k.path()).into_iter().flatten().flatten() {
                let key = e.file_name().to_string_lossy().into_owned();
                if key.starts_with('.') || !e.path().is_dir() {
                    continue;
                }
                let state = self.entry(&kind, &key);
                out.push((kind.clone(), key, state));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Every complete entry.
    pub fn entries(&self) -> Vec<Manifest> {
        let complete = |(_, _, s)| match s {
            EntryState::Complete(m) => Some(*m),
            _ => None,
        };
        self.places().into_iter().filter_map(complete).collect()
    }

    /// Every entry directory without a valid manifest of its own: (kind, key, what is wrong).
    pub fn damaged(&self) -> Vec<(String, String, String)> {
        let broken = |(kind, key, s)| match s {
            EntryState::Broken(why) => Some((kind, key, why)),
            _ => None,
        };
        self.places().into_iter().filter_map(broken).collect()
    }

    /// Bytes under a directory.
    pub fn size_of(dir: &Path) -> u64 {
        WalkDir::new(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }
}
