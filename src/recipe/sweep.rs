//! Sweeps: the `[sweep]` axes, and the expansion of stages into instances, one per
//! combination of the axes a stage depends on. Instance names (`stage@axis=value,...`) and
//! parameters are part of the cache keys: keep them stable.

use std::collections::{BTreeMap, BTreeSet};

use toml::{Spanned, Value};

use super::problems::Span;
use super::resolve::Resolved;
use super::syntax::RawStage;
use super::variables::value_label;
use super::{Axis, Instance, Parser};
use crate::engine::stage::{describe_value, Params};

/// An axis as written: its values, the parameter it sets, and the stages it is limited to.
type AxisSpec = (Vec<Value>, String, Option<Vec<String>>);

/// One value per axis, in axis order: which point of the sweep an instance is.
type Assignment = Vec<(String, Value)>;

impl Parser<'_> {
    /// The `[sweep]` axes in declaration order; each malformed one is left out with a problem.
    pub(super) fn axes(
        &mut self,
        sweep: BTreeMap<Spanned<String>, Spanned<Value>>,
        stages: &BTreeMap<String, RawStage>,
    ) -> Vec<Axis> {
        // Declaration order: sort by position in the file.
        let mut entries: Vec<_> = sweep.into_iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        entries
            .into_iter()
            .filter_map(|(k, v)| self.axis(k, v, stages))
            .collect()
    }

    /// One `[sweep]` entry as an axis.
    fn axis(
        &mut self,
        k: Spanned<String>,
        v: Spanned<Value>,
        stages: &BTreeMap<String, RawStage>,
    ) -> Option<Axis> {
        let (name, kspan, vspan) = (k.get_ref().clone(), k.span(), v.span());
        let (values, param, only) = self.axis_spec(&name, &vspan, v.into_inner())?;
        if !self.axis_values_ok(&name, &vspan, &values) {
            return None;
        }
        if name.contains(['@', ',', '=']) {
            self.err(
                0,
                kspan,
                format!("sweep axis name `{name}` may not contain @ , ="),
            );
            return None;
        }
        if let Some(only) = &only {
            for s in only {
                if !stages.contains_key(s) {
                    self.err(0, vspan.clone(), format!("sweep axis `{name}` names stage `{s}`, which the recipe does not define"));
                }
            }
        }
        Some(Axis {
            name,
            values,
            param,
            stages: only,
        })
    }

    /// `name = [values]`, or `name = { values = [...], param = "...", stages = [...] }`.
    fn axis_spec(&mut self, name: &str, vspan: &Span, v: Value) -> Option<AxisSpec> {
        match v {
            Value::Array(a) => Some((a, name.to_string(), None)),
            Value::Table(t) => self.axis_table(name, vspan, t),
            other => {
                self.err(
                    0,
                    vspan.clone(),
                    format!(
                        "sweep axis `{name}`: expected a list of values, found {}",
                        describe_value(&other)
                    ),
                );
                None
            }
        }
    }

    /// The table form of an axis: `values`, and optionally `param` and `stages`.
    fn axis_table(&mut self, name: &str, vspan: &Span, mut t: toml::Table) -> Option<AxisSpec> {
        let values = match t.remove("values") {
            Some(Value::Array(a)) => a,
            _ => {
                self.err(
                    0,
                    vspan.clone(),
                    format!("sweep axis `{name}`: expected `values = [...]`"),
                );
                return None;
            }
        };
        let param = match t.remove("param") {
            Some(Value::String(s)) => s,
            None => name.to_string(),
            Some(other) => {
                self.err(
                    0,
                    vspan.clone(),
                    format!(
                        "sweep axis `{name}`: `param` must be a string, found {}",
                        describe_value(&other)
                    ),
                );
                return None;
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
                self.err(
                    0,
                    vspan.clone(),
                    format!(
                        "sweep axis `{name}`: `stages` must be a list of stage names, found {}",
                        describe_value(&other)
                    ),
                );
                return None;
            }
        };
        if let Some(extra) = t.keys().next() {
            self.err(
                0,
                vspan.clone(),
                format!(
                    "sweep axis `{name}`: unknown key `{extra}` (expected values, param, stages)"
                ),
            );
            return None;
        }
        Some((values, param, only))
    }

    /// An axis needs values, distinct (as they appear in instance names) and scalar.
    fn axis_values_ok(&mut self, name: &str, vspan: &Span, values: &[Value]) -> bool {
        if values.is_empty() {
            self.err(
                0,
                vspan.clone(),
                format!("sweep axis `{name}` has no values"),
            );
            return false;
        }
        let labels: BTreeSet<String> = values.iter().map(value_label).collect();
        if labels.len() != values.len() {
            self.err(
                0,
                vspan.clone(),
                format!("sweep axis `{name}` repeats a value"),
            );
            return false;
        }
        if values
            .iter()
            .any(|v| matches!(v, Value::Table(_) | Value::Array(_)))
        {
            self.err(
                0,
                vspan.clone(),
                format!("sweep axis `{name}`: values must be numbers, strings or booleans"),
            );
            return false;
        }
        true
    }

    /// An axis that sets no stage's parameter is a problem (reported only when nothing else
    /// is wrong, as a missing stage or kind may be the cause).
    pub(super) fn check_axes_used(&mut self, axes: &[Axis], resolved: &BTreeMap<String, Resolved>) {
        for a in axes {
            if !resolved.values().any(|r| r.axes.contains(&a.name)) && self.problems.is_empty() {
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
    }
}

/// Expands stages into instances: a stage is instantiated once per combination of the axes it
/// depends on (its own, and its inputs'), so shared prefixes are never duplicated.
pub(super) fn expand(
    order: &[String],
    resolved: &BTreeMap<String, Resolved>,
    axes: &[Axis],
) -> Vec<Instance> {
    let deps = axis_deps(order, resolved, axes);
    let mut out = vec![];
    for name in order {
        let r = &resolved[name];
        for assignment in combinations(&deps[name.as_str()], axes) {
            let inputs = if r.gathers {
                gathered_inputs(r, &out)
            } else {
                instance_inputs(r, &assignment, &deps)
            };
            out.push(Instance {
                name: instance_name(name, &assignment),
                stage: name.clone(),
                kind: r.kind.clone(),
                params: swept_params(r, &assignment, axes),
                assignment,
                inputs,
            });
        }
    }
    out
}

/// The position of axis `name` (`usize::MAX` if there is none).
fn axis_pos(axes: &[Axis], name: &str) -> usize {
    axes.iter()
        .position(|a| a.name == name)
        .unwrap_or(usize::MAX)
}

/// For each stage (in `order`), the axes it depends on, in axis order: its own, and its inputs'
/// unless it gathers them.
fn axis_deps<'a>(
    order: &'a [String],
    resolved: &BTreeMap<String, Resolved>,
    axes: &[Axis],
) -> BTreeMap<&'a str, Vec<String>> {
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
        d.sort_by_key(|a| axis_pos(axes, a));
        deps.insert(name.as_str(), d);
    }
    deps
}

/// Every combination of values of `my_axes`, the last axis varying fastest.
fn combinations(my_axes: &[String], axes: &[Axis]) -> Vec<Assignment> {
    let mut combos: Vec<Assignment> = vec![vec![]];
    for a in my_axes {
        let axis = &axes[axis_pos(axes, a)];
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
    combos
}

/// `stage`, or `stage@axis=value,...` for a point of a sweep.
fn instance_name(stage: &str, assignment: &[(String, Value)]) -> String {
    if assignment.is_empty() {
        return stage.to_string();
    }
    let label = assignment
        .iter()
        .map(|(a, v)| format!("{a}={}", value_label(v)))
        .collect::<Vec<_>>()
        .join(",");
    format!("{stage}@{label}")
}

/// The stage's parameters with the values of its own axes set (an integer for a float
/// parameter becomes a float).
fn swept_params(r: &Resolved, assignment: &[(String, Value)], axes: &[Axis]) -> Params {
    let mut params = r.params.clone();
    for (a, v) in assignment {
        let axis = &axes[axis_pos(axes, a)];
        if r.axes.contains(a) {
            let v = match (params.get(&axis.param), v) {
                (Some(Value::Float(_)), Value::Integer(i)) => Value::Float(*i as f64),
                _ => v.clone(),
            };
            params.insert(axis.param.clone(), v);
        }
    }
    params
}

/// A gathering stage's inputs: every instance of its upstreams so far, each under its own name.
fn gathered_inputs(r: &Resolved, done: &[Instance]) -> BTreeMap<String, String> {
    r.inputs
        .values()
        .flat_map(|up| done.iter().filter(move |i| &i.stage == up))
        .map(|i| (i.name.clone(), i.name.clone()))
        .collect()
}

/// Each input's upstream instance: the one at the part of `assignment` the upstream depends on.
fn instance_inputs(
    r: &Resolved,
    assignment: &[(String, Value)],
    deps: &BTreeMap<&str, Vec<String>>,
) -> BTreeMap<String, String> {
    r.inputs
        .iter()
        .map(|(input, up)| {
            let sub: Vec<(String, Value)> = assignment
                .iter()
                .filter(|(a, _)| deps[up.as_str()].contains(a))
                .cloned()
                .collect();
            (input.clone(), instance_name(up, &sub))
        })
        .collect()
}
