//! The stage contract: what a stage kind declares (parameters with defaults and meaning, inputs,
//! a version) and what it gets when it runs (resolved parameters, its inputs' directories, a
//! private output directory that survives a kill so it can resume from checkpoints).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use toml::Value;

/// Flat metrics a stage returns; stored in its manifest, read by reports.
pub type Metrics = BTreeMap<String, f64>;

/// Resolved parameters of one stage instance (defaults filled in).
pub type Params = BTreeMap<String, Value>;

/// The type of a parameter, checked before anything runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    /// `true` or `false`.
    Bool,
    /// An integer in `[min, max]`.
    Int {
        /// Smallest allowed value (inclusive).
        min: i64,
        /// Largest allowed value (inclusive).
        max: i64,
    },
    /// A finite number in `[min, max]`; an integer is accepted and stored as a float.
    Float {
        /// Smallest allowed value (inclusive).
        min: f64,
        /// Largest allowed value (inclusive).
        max: f64,
    },
    /// Any string.
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A list of strings (e.g. file globs).
    StrList,
    /// A non-empty list of integers in a range.
    IntList {
        /// Smallest allowed element (inclusive).
        min: i64,
        /// Largest allowed element (inclusive).
        max: i64,
    },
}

impl ParamType {
    /// The accepted values in words (e.g. `an integer in [1, 10]`), as validation messages and
    /// `explain` show them.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Bool => "true or false".into(),
            ParamType::Int { min, max } => format!("an integer in [{min}, {max}]"),
            ParamType::Float { min, max } => format!("a number in [{min}, {max}]"),
            ParamType::Str => "a string".into(),
            ParamType::Choice(c) => format!(
                "one of {}",
                c.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ParamType::StrList => "a list of strings".into(),
            ParamType::IntList { min, max } => {
                format!("a non-empty list of integers in [{min}, {max}]")
            }
        }
    }

    /// Checks (and normalises: integers are accepted where numbers are expected) a value.
    pub fn check(&self, v: &Value) -> Result<Value, String> {
        let bad = || {
            Err(format!(
                "expected {}, found {}",
                self.describe(),
                describe_value(v)
            ))
        };
        match (self, v) {
            (ParamType::Bool, Value::Boolean(_)) => Ok(v.clone()),
            (ParamType::Int { min, max }, Value::Integer(i)) => {
                if i < min || i > max {
                    bad()
                } else {
                    Ok(v.clone())
                }
            }
            (ParamType::Float { min, max }, Value::Float(_) | Value::Integer(_)) => {
                let x = match v {
                    Value::Float(f) => *f,
                    Value::Integer(i) => *i as f64,
                    _ => unreachable!(),
                };
                if !x.is_finite() || x < *min || x > *max {
                    bad()
                } else {
                    Ok(Value::Float(x))
                }
            }
            (ParamType::Str, Value::String(_)) => Ok(v.clone()),
            (ParamType::Choice(c), Value::String(s)) if c.contains(&s.as_str()) => Ok(v.clone()),
            (ParamType::StrList, Value::Array(a)) if a.iter().all(Value::is_str) => Ok(v.clone()),
            (ParamType::IntList { min, max }, Value::Array(a))
                if !a.is_empty()
                    && a.iter()
                        .all(|x| x.as_integer().is_some_and(|i| i >= *min && i <= *max)) =>
            {
                Ok(v.clone())
            }
            (ParamType::IntList { min, max }, Value::Integer(i)) if i >= min && i <= max => {
                Ok(Value::Array(vec![v.clone()]))
            }
            (ParamType::StrList, Value::String(s)) => {
                Ok(Value::Array(vec![Value::String(s.clone())]))
            }
            _ => bad(),
        }
    }
}

/// A TOML value in words (e.g. `the integer 3`, `a list`), for validation messages.
pub fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string \"{s}\""),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "a list".into(),
        Value::Table(_) => "a table".into(),
    }
}

/// One parameter a stage kind declares: name, type, default and meaning (usually generated by
/// [`stage_params!`](crate::stage_params)).
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// The name a recipe sets it by; also its key in [`Params`].
    pub name: &'static str,
    /// Its type; recipe and sweep values are checked against it before anything runs.
    pub ty: ParamType,
    /// `None`: required.
    pub default: Option<Value>,
    /// Its meaning in one line, shown by `explain` and when a required parameter is not set.
    pub doc: &'static str,
}

/// An upstream stage this kind needs: `kinds` lists the stage kinds that can provide it.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// The input's name: its key in [`StageContext::inputs`] and in a recipe's
    /// `inputs = { NAME = "stage" }`.
    pub name: &'static str,
    /// An optional input is bound when an upstream of a fitting kind is in `after`.
    pub optional: bool,
    /// Stage kinds that can provide it. The one upstream in `after` of such a kind is bound to
    /// it; when several fit, the recipe must choose with `inputs`.
    pub kinds: &'static [&'static str],
    /// What the input is, shown by `explain` and when a required input is missing.
    pub doc: &'static str,
}

/// One input of a running stage: the upstream instance's finished cache entry.
#[derive(Debug, Clone)]
pub struct Input {
    /// The upstream instance's name (e.g. `load` or `evaluate@sparsity=0.5`).
    pub stage: String,
    /// The upstream's stage kind.
    pub kind: String,
    /// The upstream's stage key.
    pub key: String,
    /// The upstream's cache entry, `<root>/<kind>/<key>`. Read only: its files are checked
    /// against its manifest, and a changed file marks the entry damaged.
    pub dir: PathBuf,
    /// The metrics the upstream returned (as stored in its manifest).
    pub metrics: Metrics,
}

/// What a stage gets when it runs.
pub struct StageContext<'a> {
    /// The instance's name (e.g. `anneal-train@sparsity=0.5`), for messages.
    pub instance: &'a str,
    /// The instance's resolved parameters: checked, defaults filled in, sweep values set. Read
    /// them with [`typed`](Self::typed) or the accessors below.
    pub params: &'a Params,
    /// By input name (as the kind declares them).
    pub inputs: BTreeMap<String, Input>,
    /// The stage's private output directory (a temporary directory inside the cache, renamed
    /// into place when the stage succeeds). It survives a kill: checkpoints written here are
    /// found again when the stage is rerun with the same key.
    pub out_dir: &'a Path,
    /// The cache root, for shared downloads.
    pub cache_root: &'a Path,
    /// This instance's progress bar (drawn only when stderr is a terminal); the stage sets its
    /// length and advances it.
    pub progress: &'a ProgressBar,
    /// Where [`note`](Self::note) and [`warn`](Self::warn) go.
    pub observer: &'a dyn super::observer::Observer,
}

impl StageContext<'_> {
    /// Tells the user what the stage is doing (a log line, above the bars on a terminal).
    pub fn note(&self, message: &str) {
        self.observer.note(self.instance, message);
    }
    /// Warns about something that does not stop the stage (e.g. training that did not converge).
    pub fn warn(&self, message: &str) {
        self.observer.warn(&format!("{}: {message}", self.instance));
    }
    /// The parameters as the kind's typed struct (see [`crate::stage_params!`]).
    pub fn typed<P: super::params::StageParams>(&self) -> anyhow::Result<P> {
        Ok(P::from_params(self.params, self.instance)?)
    }
    /// The input bound to `name`, or an error naming the instance when none is (e.g. an optional
    /// input no upstream provides).
    pub fn input(&self, name: &str) -> anyhow::Result<&Input> {
        self.inputs.get(name).ok_or_else(|| {
            anyhow::anyhow!("stage {}: input `{name}` is not connected", self.instance)
        })
    }
}

/// A kind of stage: what it declares (name, version, parameters, inputs) and how it runs.
/// Registered in a [`Registry`](super::registry::Registry); instances may run on several threads
/// at once.
pub trait StageKind: Send + Sync {
    /// The kind's name, as a recipe's `kind = "..."` writes it. Unique in a registry (a kind registered
    /// later by the same name replaces it); part of every key and of the entry path
    /// `<root>/<kind>/<key>`.
    fn name(&self) -> &'static str;
    /// Bumped whenever the kind's semantics change; part of every key.
    fn version(&self) -> u32;
    /// What the kind does, in one line, shown by `explain`.
    fn about(&self) -> &'static str;
    /// The parameters a recipe may set (any other name is refused), the same on every call. The
    /// resolved values, defaults included, are part of the key: a new parameter with a default
    /// changes every key of the kind.
    fn params(&self) -> Vec<ParamSpec>;
    /// The upstream stages it reads, by input name (default: none). Upstreams in `after` that
    /// bind no declared input are passed too, under their stage name.
    fn inputs(&self) -> Vec<InputSpec> {
        vec![]
    }
    /// External files this instance reads (their digests are part of the key).
    fn external_files(&self, _params: &Params, _cache_root: &Path) -> anyhow::Result<Vec<PathBuf>> {
        Ok(vec![])
    }
    /// Checks this stage's parameters against its upstream stages' (by input name: kind and
    /// parameters) when the recipe is validated, so a contradiction is refused before anything
    /// runs.
    fn check_upstream(
        &self,
        _params: &Params,
        _upstream: &BTreeMap<String, (&str, &Params)>,
    ) -> Result<(), String> {
        Ok(())
    }
    /// A gathering stage (a report) takes every instance of its upstream stages across the
    /// sweep, instead of being instantiated once per sweep point.
    fn gathers(&self) -> bool {
        false
    }
    /// The metric shown in summaries.
    fn headline(&self) -> Option<&'static str> {
        None
    }
    /// Files in [`out_dir`](StageContext::out_dir) that a killed attempt leaves for the next one
    /// to resume from (a checkpoint, the log it continues). The engine removes everything else
    /// there before an attempt, so nothing stray is ever committed with the entry.
    fn resume_files(&self) -> &'static [&'static str] {
        &[]
    }
    /// Runs one instance: reads its parameters and inputs, writes its outputs under
    /// [`out_dir`](StageContext::out_dir) only, and returns its metrics (stored in the manifest;
    /// [`headline`](Self::headline) names one). A cached entry is reused for its key, so the
    /// outputs must depend only on what the key covers (the device a stage kind was built with aside), and `out_dir` holds only the [`resume_files`](Self::resume_files) of a killed earlier attempt. On error the instance
    /// fails and nothing is committed.
    fn run(&self, ctx: &StageContext) -> anyhow::Result<Metrics>;
}
