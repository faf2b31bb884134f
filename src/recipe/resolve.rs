//! Stages resolved against the registry: each stage's kind, and its parameters (variables
//! substituted, types checked, swept values checked, defaults filled in). Inputs are wired in
//! `inputs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::syntax::RawStage;
use super::variables::{closest, did_you_mean, substitute, value_label};
use super::{Axis, Parser};
use crate::engine::stage::{ParamSpec, ParamType, Params, StageKind};

/// A stage resolved against its kind (before expansion into instances).
pub(super) struct Resolved {
    /// Its kind's name.
    pub(super) kind: String,
    /// Takes every instance of its upstreams (see `StageKind::gathers`).
    pub(super) gathers: bool,
    /// Every parameter of the kind: set, substituted and checked, or its default (swept
    /// parameters without a default are set per instance).
    pub(super) params: Params,
    /// Axes that set this stage's own parameters.
    pub(super) axes: Vec<String>,
    /// Input name to upstream stage.
    pub(super) inputs: BTreeMap<String, String>,
    /// Upstream stages: `after`, then stages named in `inputs` that `after` does not list.
    pub(super) after: Vec<String>,
}

impl Parser<'_> {
    /// Kinds, params (defaults, types, variables), inputs of every stage; a stage whose kind is
    /// missing or unknown is left out (with a problem).
    pub(super) fn resolve_stages(
        &mut self,
        stages: &BTreeMap<String, RawStage>,
        vars: &toml::Table,
        axes: &[Axis],
    ) -> BTreeMap<String, Resolved> {
        let mut out = BTreeMap::new();
        for (name, st) in stages {
            if let Some(r) = self.resolve_stage(name, st, vars, axes) {
                out.insert(name.clone(), r);
            }
        }
        self.wire_inputs(stages, &mut out);
        self.check_upstreams(stages, &out);
        self.check_axes_used(axes, &out);
        out
    }

    /// One stage's kind and parameters (inputs still empty).
    fn resolve_stage(
        &mut self,
        name: &str,
        st: &RawStage,
        vars: &toml::Table,
        axes: &[Axis],
    ) -> Option<Resolved> {
        let k = self.stage_kind(name, st)?;
        let specs = k.params();
        let mut params = self.set_params(name, st, k.name(), &specs, vars);
        let swept: Vec<&Axis> = axes
            .iter()
            .filter(|a| {
                specs.iter().any(|s| s.name == a.param)
                    && a.stages
                        .as_ref()
                        .is_none_or(|only| only.iter().any(|s| s == name))
            })
            .collect();
        self.check_swept_values(name, &specs, &swept);
        self.set_defaults(name, st, k.name(), &specs, &swept, &mut params);
        Some(Resolved {
            kind: k.name().to_string(),
            gathers: k.gathers(),
            params,
            axes: swept.iter().map(|a| a.name.clone()).collect(),
            inputs: BTreeMap::new(),
            after: vec![],
        })
    }

    /// The stage's kind from the registry, or a problem (no `kind`, or an unknown one).
    fn stage_kind(&mut self, name: &str, st: &RawStage) -> Option<Arc<dyn StageKind>> {
        let Some((ksrc, kind)) = &st.kind else {
            self.err(
                st.src,
                st.name_span.clone(),
                format!("stage `{name}` has no `kind` (and no pipeline defines it)"),
            );
            return None;
        };
        let Some(k) = self.registry.get(kind.get_ref()).cloned() else {
            let msg = self.registry.unknown_kind_message(kind.get_ref());
            self.err(*ksrc, kind.span(), msg);
            return None;
        };
        Some(k)
    }

    /// The parameters the stage sets, known to its kind, variables substituted and types
    /// checked; each bad one is left out with a problem.
    fn set_params(
        &mut self,
        name: &str,
        st: &RawStage,
        kind: &str,
        specs: &[ParamSpec],
        vars: &toml::Table,
    ) -> Params {
        let mut params = Params::new();
        for (pname, (src, kspan, vspan, value)) in &st.params {
            let Some(spec) = specs.iter().find(|s| s.name == pname) else {
                let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                let hint = did_you_mean(pname, &known);
                self.err(*src, kspan.clone(), format!("stage `{name}` (kind {kind}): unknown parameter `{pname}`{hint} (expected one of: {})", known.join(", ")));
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
                Err(e) => {
                    let hint = choice_hint(&spec.ty, &value);
                    self.err(
                        *src,
                        vspan.clone(),
                        format!("stage `{name}`, parameter `{pname}`: {e}{hint}"),
                    )
                }
            }
        }
        params
    }

    /// Checks every value of the axes that sweep one of the stage's parameters against its type.
    fn check_swept_values(&mut self, name: &str, specs: &[ParamSpec], swept: &[&Axis]) {
        for a in swept {
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
    }

    /// Fills in the defaults of parameters not set; a required one neither set nor swept is a
    /// problem.
    fn set_defaults(
        &mut self,
        name: &str,
        st: &RawStage,
        kind: &str,
        specs: &[ParamSpec],
        swept: &[&Axis],
        params: &mut Params,
    ) {
        for spec in specs {
            if params.contains_key(spec.name) {
                continue;
            }
            match &spec.default {
                Some(d) => {
                    params.insert(spec.name.to_string(), d.clone());
                }
                None if swept.iter().any(|a| a.param == spec.name) => {}
                None => self.err(
                    st.src,
                    st.name_span.clone(),
                    format!(
                        "stage `{name}` (kind {kind}): required parameter `{}` is not set ({})",
                        spec.name, spec.doc
                    ),
                ),
            }
        }
    }
}

/// ` (did you mean "X"?)` for a string that is a plausible typo of one of a choice's names.
fn choice_hint(ty: &ParamType, v: &toml::Value) -> String {
    match (ty, v.as_str()) {
        (ParamType::Choice(names), Some(s)) => {
            closest(s, names).map_or(String::new(), |c| format!(" (did you mean \"{c}\"?)"))
        }
        _ => String::new(),
    }
}
