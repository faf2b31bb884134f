//! Lineage: the entries an entry was made from, followed through the manifests' input keys and
//! kinds (what a report needs to find the training run and mask behind an evaluated model).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::cache::{read_manifest, Manifest, MANIFEST};

/// The manifest of the entry at `dir`, if it has a readable one.
pub fn manifest_at(dir: &Path) -> Option<Manifest> {
    read_manifest(dir).ok()
}

/// The entry directory of input `name` of `m`: by its recorded kind, or (entries written before
/// kinds were recorded) the kind directory that holds the key.
fn input_dir(root: &Path, m: &Manifest, name: &str, key: &str) -> Option<PathBuf> {
    if let Some(kind) = m.input_kinds.get(name) {
        let d = root.join(kind).join(key);
        return d.join(MANIFEST).is_file().then_some(d);
    }
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join(key))
        .find(|p| p.join(MANIFEST).is_file())
}

/// The entry at `dir` and every entry it was made from (directory and manifest), nearest first.
pub fn ancestors(root: &Path, dir: &Path) -> Vec<(PathBuf, Manifest)> {
    let mut out = vec![];
    let mut seen = BTreeSet::new();
    let mut todo: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Some(m) = manifest_at(&d) else { continue };
        for (name, key) in &m.inputs {
            if seen.insert(key.clone()) {
                if let Some(up) = input_dir(root, &m, name, key) {
                    todo.insert(0, up);
                }
            }
        }
        out.push((d, m));
    }
    out
}
