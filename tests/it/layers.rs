//! The folder-level dependency graph of `src/` (docs/ARCHITECTURE.md draws it): each folder
//! names only the folders below it, so the engine stays model-agnostic and no two folders
//! depend on each other. Read from the `use crate::...` paths of the non-test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Folder -> the folders it may use (`error` and `artifacts` are leaves anyone may use).
const ALLOWED: &[(&str, &[&str])] = &[
    ("backend", &[]),
    ("model", &["backend"]),
    ("io", &["model"]),
    ("data", &["io"]),
    ("prune", &["backend", "model"]),
    ("eval", &["backend", "data", "io", "model"]),
    ("bench", &["backend", "io", "model", "prune"]),
    ("engine", &[]),
    ("recipe", &["engine"]),
    ("report", &["bench", "engine", "prune", "recipe"]),
    (
        "stages",
        &[
            "backend", "bench", "data", "engine", "eval", "io", "model", "prune", "report",
        ],
    ),
];

/// Macros exported at the crate root (`crate::stage_params!`), not folders.
const MACROS: &[&str] = &["stage_params", "choice_enum"];

/// `crate::X` names in the code of `path` before its first `#[cfg(test)]`.
fn uses(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn folders_depend_one_way_as_documented() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut bad = vec![];
    for (folder, ok) in &allowed {
        let mut files = vec![];
        rs_files(&src.join(folder), &mut files);
        assert!(!files.is_empty(), "src/{folder} has no files");
        for f in files {
            for used in uses(&f) {
                let fine = used == *folder
                    || ["error", "artifacts", "Error", "Result"].contains(&used.as_str())
                    || MACROS.contains(&used.as_str())
                    || ok.contains(&used.as_str());
                if !fine {
                    bad.push(format!("{} uses crate::{used}", f.display()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies against the documented graph:\n{}",
        bad.join("\n")
    );
}
