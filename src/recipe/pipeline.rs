//! `pipeline = "NAME"`: finding a pipeline file and layering it (and the pipelines it builds
//! on) under the file that names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::problems::Src;
use super::syntax::RawStage;
use super::variables::merge_vars;
use super::Parser;

/// Where to look for `pipeline = "NAME"`: beside the recipe, in its `pipelines/` and
/// `../pipelines/`, then in `pipelines/` of the working directory.
fn find_pipeline(name: &str, recipe_path: &Path) -> Option<PathBuf> {
    let dir = recipe_path.parent().unwrap_or(Path::new("."));
    let file = if name.ends_with(".toml") {
        name.to_string()
    } else {
        format!("{name}.toml")
    };
    [
        dir.join(&file),
        dir.join("pipelines").join(&file),
        dir.join("../pipelines").join(&file),
        PathBuf::from("pipelines").join(&file),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

impl Parser<'_> {
    /// Reads a pipeline (and the pipelines it builds on, up to a few levels) into `stages` and
    /// `vars`; later files override earlier ones key by key.
    pub(super) fn include(
        &mut self,
        from: usize,
        name: &Spanned<String>,
        beside: &Path,
        stages: &mut BTreeMap<String, RawStage>,
        vars: &mut toml::Table,
        depth: usize,
    ) {
        if depth >= 4 {
            self.err(
                from,
                name.span(),
                format!(
                    "pipeline `{}`: pipelines nest more than 4 levels deep (a cycle?)",
                    name.get_ref()
                ),
            );
            return;
        }
        let Some((idx, pp)) = self.open_pipeline(from, name, beside) else {
            return;
        };
        let Some(pf) = self.read(idx) else { return };
        if let Some(base) = &pf.pipeline {
            self.include(idx, base, &pp, stages, vars, depth + 1);
        }
        merge_vars(
            vars,
            [("model", pf.model), ("data", pf.data), ("vars", pf.vars)],
        );
        self.merge_stages(idx, pf.stages, stages);
        if !pf.sweep.is_empty() {
            let span = pf.sweep.keys().next().unwrap().span();
            self.err(idx, span, "sweeps belong in recipes, not pipelines");
        }
    }

    /// Finds and reads the pipeline `name` (named in source `from`) as a new source: its index
    /// and path.
    fn open_pipeline(
        &mut self,
        from: usize,
        name: &Spanned<String>,
        beside: &Path,
    ) -> Option<(usize, PathBuf)> {
        let Some(pp) = find_pipeline(name.get_ref(), beside) else {
            self.err(
                from,
                name.span(),
                format!("pipeline `{}` not found (looked for {0}.toml beside the recipe and in pipelines/)", name.get_ref()),
            );
            return None;
        };
        let text = match std::fs::read_to_string(&pp) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    from,
                    name.span(),
                    format!("cannot read pipeline {}: {e}", pp.display()),
                );
                return None;
            }
        };
        self.srcs.push(Src {
            path: pp.clone(),
            text,
            whole: false,
        });
        Some((self.srcs.len() - 1, pp))
    }
}
