//! How stages connect: `after` lists upstream stages; a kind's declared inputs are matched by
//! the upstream's kind, or named explicitly with `inputs = { name = "stage" }`. Then each
//! kind's check of its upstreams, and the topological order of the graph.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::toposort;
use petgraph::graph::DiGraph;

use super::problems::Span;
use super::resolve::Resolved;
use super::syntax::RawStage;
use super::Parser;
use crate::engine::stage::{InputSpec, Params, StageKind};

impl Parser<'_> {
    /// Sets `inputs` and `after` of every resolved stage.
    pub(super) fn wire_inputs(
        &mut self,
        stages: &BTreeMap<String, RawStage>,
        out: &mut BTreeMap<String, Resolved>,
    ) {
        let names: BTreeSet<String> = stages.keys().cloned().collect();
        for (name, st) in stages {
            let Some(kind_name) = out.get(name).map(|r| r.kind.clone()) else {
                continue;
            };
            let k = self.registry.get(&kind_name).unwrap().clone();
            let mut after: Vec<String> = st.after.as_ref().map(|a| a.2.clone()).unwrap_or_default();
            let place = st.after_place();
            let mut inputs = self.named_inputs(name, st, k.as_ref(), &names, &mut after);
            self.check_after(name, &after, &names, &place);
            self.match_inputs(name, k.as_ref(), &after, out, &mut inputs, &place);
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
    }

    /// The inputs named with `inputs = {...}`; each named stage is added to `after`.
    fn named_inputs(
        &mut self,
        name: &str,
        st: &RawStage,
        k: &dyn StageKind,
        names: &BTreeSet<String>,
        after: &mut Vec<String>,
    ) -> BTreeMap<String, String> {
        let mut inputs = BTreeMap::new();
        for (input, (src, span, up)) in &st.inputs {
            if !k.inputs().iter().any(|s| s.name == input) {
                self.err(
                    *src,
                    span.clone(),
                    format!(
                        "stage `{name}` (kind {}) has no input named `{input}`",
                        k.name()
                    ),
                );
            }
            if !names.contains(up) {
                self.err(
                    *src,
                    span.clone(),
                    format!(
                        "stage `{name}`: input `{input}` names stage `{up}`, which is not defined"
                    ),
                );
                continue;
            }
            inputs.insert(input.clone(), up.clone());
            if !after.contains(up) {
                after.push(up.clone());
            }
        }
        inputs
    }

    /// Every upstream must be another defined stage.
    fn check_after(
        &mut self,
        name: &str,
        after: &[String],
        names: &BTreeSet<String>,
        place: &(usize, Span),
    ) {
        let (asrc, aspan) = place;
        for up in after {
            if up == name {
                self.err(
                    *asrc,
                    aspan.clone(),
                    format!("stage `{name}` lists itself in `after`"),
                );
            } else if !names.contains(up) {
                self.err(
                    *asrc,
                    aspan.clone(),
                    format!("stage `{name}`: `after` names stage `{up}`, which is not defined"),
                );
            }
        }
    }

    /// Binds each declared input not named explicitly to the one upstream of a fitting kind; none
    /// (for a required input) or several is a problem.
    fn match_inputs(
        &mut self,
        name: &str,
        k: &dyn StageKind,
        after: &[String],
        resolved: &BTreeMap<String, Resolved>,
        inputs: &mut BTreeMap<String, String>,
        place: &(usize, Span),
    ) {
        let (asrc, aspan) = place;
        for spec in k.inputs() {
            if inputs.contains_key(spec.name) {
                continue;
            }
            let candidates: Vec<&String> = after
                .iter()
                .filter(|u| {
                    resolved
                        .get(*u)
                        .is_some_and(|r| spec.kinds.contains(&r.kind.as_str()))
                })
                .collect();
            match candidates.as_slice() {
                [one] => {
                    inputs.insert(spec.name.to_string(), (*one).clone());
                }
                [] if spec.optional => {}
                [] => self.err(*asrc, aspan.clone(), missing_input(name, k.name(), &spec)),
                many => self.err(*asrc, aspan.clone(), ambiguous_input(name, &spec, many)),
            }
        }
    }

    /// Lets each kind check its upstreams' kinds and parameters (e.g. compatible settings).
    pub(super) fn check_upstreams(
        &mut self,
        stages: &BTreeMap<String, RawStage>,
        out: &BTreeMap<String, Resolved>,
    ) {
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
    }

    /// Topological order of the stage graph (petgraph), or a cycle error.
    pub(super) fn order(
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
                let (src, span) = stages[n].after_place();
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

/// A required input with no upstream of a fitting kind in `after`.
fn missing_input(name: &str, kind: &str, spec: &InputSpec) -> String {
    format!(
        "stage `{name}` (kind {kind}) needs input `{}` from a stage of kind {} ({}); add one to `after`",
        spec.name,
        spec.kinds.join(" or "),
        spec.doc
    )
}

/// An input that several upstreams in `after` could provide.
fn ambiguous_input(name: &str, spec: &InputSpec, many: &[&String]) -> String {
    format!(
        "stage `{name}`: input `{}` could come from {}; say which with inputs = {{ {} = \"STAGE\" }}",
        spec.name,
        many.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(" or "),
        spec.name
    )
}
