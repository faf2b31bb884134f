//! Variables: the `[model]`, `[data]` and `[vars]` tables (a recipe's override its pipeline's,
//! key by key), `${recipe.name}`, and `${...}` substitution in string parameters.

use toml::Value;

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
pub(super) fn merge_vars(vars: &mut toml::Table, tables: [(&str, Option<toml::Table>); 3]) {
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
