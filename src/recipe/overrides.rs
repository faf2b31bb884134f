//! `--set STAGE.PARAM=VALUE` (and `--set model.NAME=VALUE`, `data.NAME`, `vars.NAME`): values
//! given on the command line, applied to the stages and variables read from the files as if the
//! recipe wrote them, so they are validated, keyed and cached like the file's own. Each `--set`
//! is a source of its own: its problems name the flag as given.

use std::collections::BTreeMap;

use toml::Value;

use super::problems::Src;
use super::syntax::RawStage;
use super::variables::did_you_mean as hint;
use super::{Axis, Parser};
use crate::engine::stage::ParamType;

/// The variable tables a `--set` may change, as `${TABLE.NAME}` names them.
const VAR_TABLES: [&str; 3] = ["model", "data", "vars"];

/// The value of `--set KEY=TEXT`: TEXT read as a TOML value (`60`, `0.5`, `"topk"`, `["a","b"]`,
/// `true`); text that is not one is a bare string, and so is a number or boolean given for a
/// string (`like_string`), so `rule=topk` and `name=2024` mean what they say (a list stays a
/// list, for the type check to refuse).
fn value_of(text: &str, like_string: bool) -> Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v @ (Value::String(_) | Value::Array(_) | Value::Table(_))) => v,
        Some(v) if !like_string => v,
        _ => Value::String(text.to_string()),
    }
}

impl Parser<'_> {
    /// Applies each `--set` to the stages (and variable tables) as read from the files; a
    /// malformed or unknown one is a problem naming it.
    pub(super) fn apply_overrides(
        &mut self,
        sets: &[String],
        stages: &mut BTreeMap<String, RawStage>,
        vars: &mut toml::Table,
        axes: &[Axis],
    ) {
        for set in sets {
            self.srcs.push(Src {
                path: format!("--set {set}").into(),
                text: set.clone(),
                whole: true,
            });
            let src = self.srcs.len() - 1;
            if let Err(msg) = self.apply_override(src, set, stages, vars, axes) {
                self.err(src, 0..0, msg);
            }
        }
    }

    /// One `--set` (source `src`): a stage parameter, or a variable.
    fn apply_override(
        &mut self,
        src: usize,
        set: &str,
        stages: &mut BTreeMap<String, RawStage>,
        vars: &mut toml::Table,
        axes: &[Axis],
    ) -> Result<(), String> {
        let form = "expected STAGE.PARAM=VALUE (or model.NAME=VALUE, data.NAME=..., vars.NAME=...)";
        let (key, text) = set.split_once('=').ok_or(form)?;
        let (stage, param) = key.trim().rsplit_once('.').ok_or(form)?;
        let text = text.trim();
        if let Some(st) = stages.get_mut(stage) {
            let like_string = self.set_param_check(stage, st, param, axes)?;
            let v = value_of(text, like_string);
            // The whole flag is the key's and the value's place: problems name it, not a line.
            st.params.insert(param.to_string(), (src, 0..0, 0..0, v));
            return Ok(());
        }
        if let Some((table, name)) = key.trim().split_once('.') {
            if VAR_TABLES.contains(&table) {
                return set_var(vars, table, name, text);
            }
        }
        let names: Vec<&str> = stages.keys().map(String::as_str).collect();
        Err(format!(
            "the recipe has no stage `{stage}`{} (stages: {}; variables: model.NAME, data.NAME, vars.NAME)",
            hint(stage, &names),
            names.join(", ")
        ))
    }

    /// Checks that stage `name` has a parameter `param` that no sweep axis sets; whether its
    /// type is a string (so a bare word is its value).
    fn set_param_check(
        &self,
        name: &str,
        st: &RawStage,
        param: &str,
        axes: &[Axis],
    ) -> Result<bool, String> {
        if ["kind", "after", "inputs"].contains(&param) {
            return Err(format!(
                "stage `{name}`: `{param}` shapes the graph; --set changes parameters only"
            ));
        }
        // An unknown kind is reported where the stage is resolved; take the value as given.
        let Some(kind) = st
            .kind
            .as_ref()
            .and_then(|(_, k)| self.registry.get(k.get_ref()))
        else {
            return Ok(false);
        };
        let specs = kind.params();
        let Some(spec) = specs.iter().find(|s| s.name == param) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(format!(
                "stage `{name}` (kind {}) has no parameter `{param}`{} (expected one of: {})",
                kind.name(),
                hint(param, &known),
                known.join(", ")
            ));
        };
        let sweeping = axes.iter().find(|a| {
            a.param == param
                && a.stages
                    .as_ref()
                    .is_none_or(|s| s.iter().any(|s| s == name))
        });
        if let Some(a) = sweeping {
            return Err(format!(
                "parameter `{param}` of stage `{name}` is swept by [sweep] axis `{}`, which sets it per instance",
                a.name
            ));
        }
        Ok(matches!(spec.ty, ParamType::Str | ParamType::Choice(_)))
    }
}

/// Replaces the variable `${TABLE.NAME}` (one the recipe or its pipeline defines).
fn set_var(vars: &mut toml::Table, table: &str, name: &str, text: &str) -> Result<(), String> {
    let t = vars.get_mut(table).and_then(Value::as_table_mut);
    let defined: Vec<String> = t.as_ref().map_or(vec![], |t| t.keys().cloned().collect());
    let Some(slot) = t.and_then(|t| t.get_mut(name)) else {
        let names: Vec<&str> = defined.iter().map(String::as_str).collect();
        if names.is_empty() {
            return Err(format!(
                "`{table}.{name}`: neither the recipe nor its pipeline has a [{table}] table"
            ));
        }
        return Err(format!(
            "[{table}] defines no `{name}`{} (it defines: {}), so no stage would see the value",
            hint(name, &names),
            names.join(", ")
        ));
    };
    *slot = value_of(text, slot.is_str());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::value_of;
    use toml::Value;

    #[test]
    fn values_read_as_toml_with_bare_words_as_strings() {
        assert_eq!(value_of("60", false), Value::Integer(60));
        assert_eq!(value_of("0.5", false), Value::Float(0.5));
        assert_eq!(value_of("\"topk\"", true), Value::String("topk".into()));
        assert_eq!(value_of("topk", false), Value::String("topk".into()));
        assert_eq!(value_of("2024", true), Value::String("2024".into()));
        assert_eq!(value_of("true", false), Value::Boolean(true));
        for like_string in [false, true] {
            let list = value_of("[\"a\", \"b\"]", like_string);
            assert_eq!(list.as_array().map(Vec::len), Some(2));
        }
        // Text that would be a second TOML line stays one string value.
        assert_eq!(
            value_of("1\nx = 2", false),
            Value::String("1\nx = 2".into())
        );
    }
}
