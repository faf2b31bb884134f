//! Variables: the `[model]`, `[data]` and `[vars]` tables (a recipe's override its pipeline's,
//! key by key), `${recipe.name}`, and `${...}` substitution in string parameters. A name the
//! recipe defines that no stage refers to is refused (a typo would otherwise change nothing).

use std::collections::{BTreeMap, BTreeSet};

use toml::{Spanned, Value};

use super::problems::Span;
use super::syntax::{RawStage, VarTable};

/// A value as text, in instance names, `${...}` inside longer strings and messages: strings
/// bare, floats in their shortest form, anything else as TOML writes it.
pub(super) fn value_label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

/// Adds the variable tables of one file (`[model]`, `[data]`, `[vars]`), key by key.
pub(super) fn merge_vars(vars: &mut toml::Table, tables: [(&str, Option<VarTable>); 3]) {
    for (k, t) in tables {
        if let Some(t) = t {
            let slot = vars
                .entry(k.to_string())
                .or_insert_with(|| Value::Table(Default::default()));
            if let Value::Table(dst) = slot {
                dst.extend(t.into_iter().map(|(name, v)| (name.into_inner(), v)));
            }
        }
    }
}

/// The names a file defines in each variable table, with their spans (for [`unused_vars`]).
pub(super) fn defined_names(tables: [(&'static str, &Option<VarTable>); 3]) -> DefinedVars {
    tables
        .into_iter()
        .filter_map(|(table, t)| Some((table, t.as_ref()?.keys().cloned().collect())))
        .collect()
}

/// Table name -> the names a file defines in it.
pub(super) type DefinedVars = Vec<(&'static str, Vec<Spanned<String>>)>;

/// The defined names that no `${TABLE.NAME...}` in a stage parameter uses (a typo, or a value
/// that silently changes nothing): each with its span and what the problem says.
pub(super) fn unused_vars(
    defined: &DefinedVars,
    stages: &BTreeMap<String, RawStage>,
) -> Vec<(Span, String)> {
    let mut used: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    for st in stages.values() {
        for (_, _, _, v) in st.params.values() {
            if let Value::String(s) = v {
                used.extend(references(s));
            }
        }
    }
    let mut out = vec![];
    for (table, names) in defined {
        if used.contains(&(table.to_string(), None)) {
            continue; // `${model}`: the whole table
        }
        let used_here: Vec<&str> = used
            .iter()
            .filter(|(t, _)| t == table)
            .filter_map(|(_, n)| n.as_deref())
            .collect();
        for name in names {
            let n = name.get_ref();
            if used_here.contains(&n.as_str()) {
                continue;
            }
            let hint = did_you_mean(n, &used_here);
            out.push((
                name.span(),
                format!("[{table}] defines `{n}`, which no stage uses (no `${{{table}.{n}}}` in the recipe or its pipeline){hint}"),
            ));
        }
    }
    out
}

/// The variables a string refers to: (table, first name under it, if any) per `${...}`.
fn references(s: &str) -> Vec<(String, Option<String>)> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        let Some(end) = rest[at..].find('}') else {
            break;
        };
        let mut parts = rest[at + 2..at + end].split('.');
        let table = parts.next().unwrap_or_default().to_string();
        out.push((table, parts.next().map(str::to_string)));
        rest = &rest[at + end + 1..];
    }
    out
}

/// `` (did you mean `X`?)`` when `name` is a plausible typo of a candidate, else nothing.
pub(super) fn did_you_mean(name: &str, candidates: &[&str]) -> String {
    closest(name, candidates).map_or(String::new(), |c| format!(" (did you mean `{c}`?)"))
}

/// The candidate nearest to `name` by edit distance, if it is a plausible typo of it.
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let (best, d) = candidates
        .iter()
        .map(|c| (*c, strsim::levenshtein(name, c)))
        .min_by_key(|(_, d)| *d)?;
    (d <= 2.max(name.chars().count() / 3)).then_some(best)
}

/// Defines `${recipe.name}` (e.g. for a report's title).
pub(super) fn set_recipe_name(vars: &mut toml::Table, name: &str) {
    let mut meta = toml::Table::new();
    meta.insert("name".into(), Value::String(name.to_string()));
    vars.insert("recipe".into(), Value::Table(meta));
}

/// Replaces a whole-string `"${a.b}"` by the variable's value (any type); `${...}` inside a
/// longer string is replaced by its text.
pub(super) fn substitute(v: &Value, vars: &toml::Table) -> Result<Value, String> {
    let Value::String(s) = v else {
        return Ok(v.clone());
    };
    if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !inner.contains("${") {
            return lookup(vars, inner);
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
        out.push_str(&value_label(&lookup(vars, &rest[at + 2..end])?));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// The value of the variable `a.b.c` (a path through nested tables).
fn lookup(vars: &toml::Table, path: &str) -> Result<Value, String> {
    let mut cur: Option<&Value> = None;
    for (i, part) in path.split('.').enumerate() {
        cur = if i == 0 {
            vars.get(part)
        } else {
            cur.and_then(|c| c.get(part))
        };
    }
    cur.cloned().ok_or_else(|| {
        format!("variable `${{{path}}}` is not defined (define it under [model], [data] or [vars])")
    })
}
