//! The files as written: the serde structs of a recipe or pipeline file (spans kept for
//! messages), TOML syntax errors, and the `[stages]` of each file merged into one table of
//! stages as written (later files override earlier ones, key by key).

use std::collections::BTreeMap;

use toml::{Spanned, Value};

use super::problems::Span;
use super::Parser;
use crate::engine::stage::describe_value;

/// One stage's table as written: keys and values with their spans.
pub(super) type StageTable = BTreeMap<Spanned<String>, Spanned<Value>>;

/// A variable table (`[model]`, `[data]`, `[vars]`) as written: names with their spans.
pub(super) type VarTable = BTreeMap<Spanned<String>, Value>;

/// One file (recipe or pipeline) as serde reads it, spans kept for messages.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDe {
    /// The recipe's name (default: the file name); ignored in pipelines.
    pub(super) name: Option<Spanned<String>>,
    /// Free text for readers; allowed, never used.
    #[allow(dead_code)]
    description: Option<String>,
    /// The pipeline this file builds on.
    pub(super) pipeline: Option<Spanned<String>>,
    /// Variables `${model.*}`.
    pub(super) model: Option<VarTable>,
    /// Variables `${data.*}`.
    pub(super) data: Option<VarTable>,
    /// Variables `${vars.*}`.
    pub(super) vars: Option<VarTable>,
    /// `[stages.NAME]` tables.
    #[serde(default)]
    pub(super) stages: BTreeMap<Spanned<String>, StageTable>,
    /// `[sweep]` axes (recipes only).
    #[serde(default)]
    pub(super) sweep: BTreeMap<Spanned<String>, Spanned<Value>>,
}

/// A stage as written (merged from pipeline and recipe), with where each part came from: the
/// source index (into `Parser::srcs`) and spans.
#[derive(Clone, Default)]
pub(super) struct RawStage {
    /// The source that first defined the stage.
    pub(super) src: usize,
    /// Its name's span there.
    pub(super) name_span: Span,
    /// `kind = "..."`: source, and the kind name with its span.
    pub(super) kind: Option<(usize, Spanned<String>)>,
    /// `after = [...]`: source, span of the value, the stage names.
    pub(super) after: Option<(usize, Span, Vec<String>)>,
    /// `inputs = { input = "stage" }`: input name to (source, span of the table, stage).
    pub(super) inputs: BTreeMap<String, (usize, Span, String)>,
    /// Every other key: parameter name to (source, key span, value span, value).
    pub(super) params: BTreeMap<String, (usize, Span, Span, Value)>,
}

impl RawStage {
    /// Where problems about the stage's upstreams point: its `after`, or else its name.
    pub(super) fn after_place(&self) -> (usize, Span) {
        self.after
            .as_ref()
            .map_or((self.src, self.name_span.clone()), |a| (a.0, a.1.clone()))
    }
}

impl Parser<'_> {
    /// Deserialises source `src`; a syntax or shape error becomes a problem quoting its line.
    pub(super) fn read(&mut self, src: usize) -> Option<FileDe> {
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
    pub(super) fn merge_stages(
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
            let entry = out.entry(stage_name).or_insert_with(|| RawStage {
                src,
                name_span: name.span(),
                ..Default::default()
            });
            for (key, value) in table {
                self.merge_key(src, entry, key, value);
            }
        }
    }

    /// Sets one key of a stage's table: `kind`, `after`, `inputs` or a parameter.
    fn merge_key(
        &mut self,
        src: usize,
        entry: &mut RawStage,
        key: Spanned<String>,
        value: Spanned<Value>,
    ) {
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
            "inputs" => self.merge_inputs(src, entry, vspan, v),
            param => {
                entry
                    .params
                    .insert(param.to_string(), (src, kspan, vspan, v));
            }
        }
    }

    /// Adds `inputs = { input = "stage" }` (at `vspan`) to a stage, input by input.
    fn merge_inputs(&mut self, src: usize, entry: &mut RawStage, vspan: Span, v: Value) {
        match v {
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
        }
    }
}
