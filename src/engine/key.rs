//! Stage keys and file digests. A key is blake3 over the kind, its version, the canonical TOML
//! of the resolved parameters, the keys of the inputs and the digests of external files.
//! File digests are memoised by (path, size, mtime, inode) so a no-op rerun reads no weights.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::stage::Params;

/// Canonical text of parameters: sorted keys, TOML formatting.
pub fn canonical_params(p: &Params) -> String {
    toml::to_string(p).expect("parameters are TOML values")
}

/// The key of a stage instance (64 hex digits): blake3 over `kind`, `version`, the canonical
/// `params`, the input keys (input name -> key) and the external `files` as (file name, digest)
/// pairs, in the given order.
pub fn stage_key(
    kind: &str,
    version: u32,
    params: &Params,
    inputs: &BTreeMap<String, String>,
    files: &[(String, String)],
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"ddp-stage-key-v1\0");
    h.update(kind.as_bytes());
    h.update(b"\0");
    h.update(&version.to_le_bytes());
    h.update(canonical_params(params).as_bytes());
    let mut section = |tag: &[u8], pairs: &mut dyn Iterator<Item = (&str, &str)>| {
        h.update(tag);
        for (name, value) in pairs {
            h.update(name.as_bytes());
            h.update(b"=");
            h.update(value.as_bytes());
            h.update(b"\0");
        }
    };
    section(
        b"\0inputs\0",
        &mut inputs.iter().map(|(a, b)| (a.as_str(), b.as_str())),
    );
    section(
        b"files\0",
        &mut files.iter().map(|(a, b)| (a.as_str(), b.as_str())),
    );
    h.finalize().to_hex().to_string()
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FileId {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
    inode: u64,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = fs::metadata(path)?;
    // A FIFO blocks and a device never ends: only regular files are hashed.
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or socket)",
        ));
    }
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileId {
        path: fs::canonicalize(path)?,
        size: m.len(),
        mtime_ns: m
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        inode,
    })
}

/// Digest memo stored in the cache (`digests.json`), shared by every run on that cache.
pub struct DigestMemo {
    path: PathBuf,
    map: Mutex<BTreeMap<String, (FileId, String)>>,
}

impl DigestMemo {
    /// Loads the memo at `path`; empty when it is missing or unreadable.
    pub fn open(path: PathBuf) -> Self {
        let map = fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Self {
            path,
            map: Mutex::new(map),
        }
    }

    /// blake3 of a file (memoised); reads it only when the file changed.
    pub fn digest(&self, path: &Path) -> super::error::Result<String> {
        self.digest_with(path, true)
    }

    /// The digest of `path` hashed now, whatever the memo says (which it then records).
    pub fn digest_fresh(&self, path: &Path) -> super::error::Result<String> {
        self.digest_with(path, false)
    }

    fn digest_with(&self, path: &Path, trust_memo: bool) -> super::error::Result<String> {
        let reading = |e| super::error::Error::io("reading", path, e);
        let id = file_id(path).map_err(reading)?;
        let k = id.path.to_string_lossy().into_owned();
        if let Some((old, d)) = self.map.lock().unwrap().get(&k) {
            if trust_memo && *old == id {
                return Ok(d.clone());
            }
        }
        let mut h = blake3::Hasher::new();
        h.update_mmap_rayon(path).map_err(reading)?;
        let d = h.finalize().to_hex().to_string();
        self.map.lock().unwrap().insert(k, (id, d.clone()));
        Ok(d)
    }

    /// Writes the memo (atomically; concurrent writers may lose entries, never corrupt it).
    pub fn save(&self) {
        let text = serde_json::to_string(&*self.map.lock().unwrap()).unwrap_or_default();
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        // A memo is only an optimisation: on a full disk it is skipped, and its partial
        // temporary removed rather than left behind.
        if fs::write(&tmp, text).is_err() || fs::rename(&tmp, &self.path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}
