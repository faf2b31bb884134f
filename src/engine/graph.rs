//! The graph the engine runs: stage instances after sweep expansion, in topological order, with
//! their resolved parameters and inputs. `recipe` produces it from TOML; the engine knows
//! nothing of the syntax.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::Value;

use super::stage::Params;

/// A sweep axis: one parameter (or a named group) and the values it takes.
#[derive(Debug, Clone)]
pub struct Axis {
    /// The axis name, as `[sweep]` writes it.
    pub name: String,
    /// The values, in the order instances are named.
    pub values: Vec<Value>,
    /// Parameter the axis sets (defaults to the axis name).
    pub param: String,
    /// Stages it applies to (`None`: every stage whose kind has `param`).
    pub stages: Option<Vec<String>>,
}

/// One runnable stage instance after sweep expansion.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Stable readable name, e.g. `anneal-train@sparsity=0.3,method=ddp`.
    pub name: String,
    /// The stage (recipe table name) it is an instance of.
    pub stage: String,
    /// The stage kind.
    pub kind: String,
    /// The sweep values this instance depends on (directly or through its inputs).
    pub assignment: Vec<(String, Value)>,
    /// Resolved parameters (defaults filled in, sweep values set).
    pub params: Params,
    /// Input name -> upstream instance name.
    pub inputs: BTreeMap<String, String>,
}

/// A parsed, validated and expanded recipe: the graph of instances the engine plans and runs.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe name (`out/<name>/`, lock file, reports).
    pub name: String,
    /// The recipe file.
    pub path: PathBuf,
    /// The sweep axes.
    pub axes: Vec<Axis>,
    /// In topological order.
    pub instances: Vec<Instance>,
    /// The command line's `--set STAGE.PARAM=VALUE` overrides, as given (already applied to the
    /// instances' parameters; kept for the lock file and `plan`).
    pub overrides: Vec<String>,
}

impl Recipe {
    /// The instance of that name.
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }
}
