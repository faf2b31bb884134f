//! `gate-insert`: decides the gate families (heads per KV group or per head, FFN channels,
//! routed-expert channels), their sparsity targets (as a fraction of units, or of prunable
//! parameters; per-head targets floored to whole heads per KV group) and the initial gate
//! parameters `z ~ N(1, 0.01)`. With `split = "learned"` (a global parameter budget) it records
//! instead one joint budget over the families' parameters ([`Joint`]: the fraction of the
//! covered parameters to remove and each family's parameters per unit), whose split between the
//! families anneal-train learns; the families' targets are then the equal split, unfloored, until
//! anneal-train replaces them with the learned one.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::common::{forward_model_json, open_input, write_json};
use crate::artifacts::GATES;
use crate::engine::params::{choice, float, int, StageParams};
use crate::engine::stage::{
    InputSpec, Metrics, ParamSpec, ParamType, Params, StageContext, StageKind,
};
use crate::model::accounting;
use crate::prune::budget;
use crate::prune::family::FamilyKind;
use crate::prune::train::{GateState, HeadGates, Joint, Scope};

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "gate-insert";

/// The `gate-insert` stage kind.
pub struct GateInsert;

crate::choice_enum! {
    /// What `gate-insert`'s sparsity is a fraction of.
    pub enum Budget {
        /// The prunable parameters.
        Params = "params",
        /// Every family's units.
        Units = "units",
    }
}

crate::choice_enum! {
    /// The attention gates `gate-insert` makes (see [`HeadGates`]).
    pub enum Heads {
        /// One gate per KV group.
        PerGroup = "per-group",
        /// One gate per query head.
        PerHead = "per-head",
        /// No attention gates.
        None = "none",
    }
}

impl From<Budget> for budget::Basis {
    fn from(b: Budget) -> Self {
        match b {
            Budget::Params => budget::Basis::Params,
            Budget::Units => budget::Basis::Units,
        }
    }
}

impl From<Heads> for HeadGates {
    fn from(h: Heads) -> Self {
        match h {
            Heads::PerGroup => HeadGates::PerGroup,
            Heads::PerHead => HeadGates::PerHead,
            Heads::None => HeadGates::None,
        }
    }
}

crate::choice_enum! {
    /// Where `gate-insert`'s sparsity target applies (see [`Scope`]).
    pub enum TargetScope {
        /// One budget over all layers.
        Global = "global",
        /// The same budget in every layer.
        PerLayer = "per-layer",
        /// The same budget in every layer and, with per-head gates, in every KV group.
        PerGroup = "per-group",
    }
}

impl From<TargetScope> for Scope {
    fn from(s: TargetScope) -> Self {
        match s {
            TargetScope::Global => Scope::Global,
            TargetScope::PerLayer => Scope::PerLayer,
            TargetScope::PerGroup => Scope::PerGroup,
        }
    }
}

crate::choice_enum! {
    /// How `gate-insert` splits a parameter budget between the gate families.
    pub enum Split {
        /// Every family removes the same fraction of its units.
        Equal = "equal",
        /// One Lagrangian over the expected removed parameters: training decides.
        Learned = "learned",
    }
}

crate::stage_params! {
    /// The `gate-insert` stage's parameters.
    pub struct GateInsertParams {
        /// fraction to remove (of prunable parameters, or of units: see `budget`)
        sparsity: f64 = 0.5 => float(0.0, 0.95),
        /// params: the fraction of prunable parameters (what users mean by 50 %); units: the same fraction of every family's units (the paper)
        budget: Budget = "params" => choice::<Budget>(),
        /// attention gates: per KV group (whole groups go), per query head (target floored to whole heads per KV group; with threshold rule = "uniform" every group keeps the same number: still a standard config), or none
        heads: Heads = "per-group" => choice::<Heads>(),
        /// gate FFN intermediate channels (and the shared expert's in MoE layers)
        channels: bool = true => ParamType::Bool,
        /// gate the channels of every routed expert (MoE models)
        experts: bool = true => ParamType::Bool,
        /// global: one budget over all layers (better quality); per-layer: the same in every layer; per-group: per layer and, with heads = "per-head", the same number of query heads from every KV group, the shape the uniform rule deploys
        scope: TargetScope = "global" => choice::<TargetScope>(),
        /// seed of the gate initialisation
        seed: u64 = 0 => int(0),
        /// equal: every family removes the same fraction of its units (per-head: floored to whole heads per KV group); learned: one Lagrangian over the expected removed parameters (CoFi / Sheared-LLaMA), so anneal-train decides how much each family gives, and writes the split it learned as the families' targets (needs budget = "params" and scope = "global")
        split: Split = "equal" => choice::<Split>(),
    }
}

/// Why `p` cannot be run: a learned split needs one budget over parameters (`budget =
/// "params"`) and over all layers (`scope = "global"`).
fn check_split(p: &GateInsertParams) -> std::result::Result<(), String> {
    if p.split != Split::Learned {
        return Ok(());
    }
    let bad = if p.budget != Budget::Params {
        Some(("budget", p.budget.to_string(), "params"))
    } else if p.scope != TargetScope::Global {
        Some(("scope", p.scope.to_string(), "global"))
    } else {
        None
    };
    match bad {
        Some((key, found, want)) => Err(format!(
            "split = \"learned\" needs {key} = \"{want}\" (found {key} = \"{found}\"): the training learns one split of a budget over the prunable parameters of all layers; set {key} = \"{want}\" or split = \"equal\""
        )),
        None => Ok(()),
    }
}

impl StageKind for GateInsert {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        // 2: per-head targets floored to whole heads per KV group.
        // 3: the `split` parameter; with "learned", gates.json carries the joint budget.
        3
    }
    fn about(&self) -> &'static str {
        "Choose the gate families and their sparsity targets, and initialise the gates z ~ N(1, 0.01)."
    }
    fn params(&self) -> Vec<ParamSpec> {
        GateInsertParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "model",
            kinds: &[super::load::KIND],
            doc: "the model to prune",
        }]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("units")
    }
    fn check_upstream(
        &self,
        params: &Params,
        _upstream: &BTreeMap<String, (&str, &Params)>,
    ) -> std::result::Result<(), String> {
        // Refused when the recipe is checked, before anything runs.
        match GateInsertParams::from_params(params, KIND) {
            Ok(p) => check_split(&p),
            Err(_) => Ok(()),
        }
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("model")?;
        let files = open_input(input, ctx.cache_root)?;
        let c = &files.config;
        let params = ctx.typed::<GateInsertParams>()?;
        if let Err(e) = check_split(&params) {
            bail!("stage {}: {e}", ctx.instance);
        }
        let heads: HeadGates = params.heads.into();
        let fams = budget::families(c, heads, params.channels, params.experts);
        if fams.is_empty() {
            bail!("gate-insert: nothing to prune (no heads, channels or expert channels are gated in this model)");
        }
        let plain = budget::target(
            params.sparsity,
            params.budget.into(),
            &accounting::count(c),
            &fams,
        );
        let learned = params.split == Split::Learned;
        // A learned split is not floored while training: the floor is a uniform-rule detail.
        let targets = match learned {
            true => vec![plain; fams.len()],
            false => budget::targets(params.sparsity, params.budget.into(), c, &fams, heads),
        };
        let rows: Vec<(FamilyKind, f64, Vec<usize>)> = fams
            .iter()
            .zip(&targets)
            .map(|(f, &t)| (f.kind, t, f.units.clone()))
            .collect();
        if let Some((_, t, _)) = rows
            .iter()
            .find(|r| r.0 == FamilyKind::Heads && r.1 < plain)
        {
            ctx.note(&format!(
                "per-head target {plain:.3} floored to {t:.3}: whole query heads per KV group, what the uniform rule keeps{}",
                if rows.len() > 1 && params.budget == Budget::Params {
                    "; the other families take the parameters left"
                } else {
                    ""
                }
            ));
        }
        let units: usize = fams.iter().map(|f| f.units.iter().sum::<usize>()).sum();
        let mut state = GateState::init(&rows, heads, params.scope.into(), params.seed);
        if params.scope == TargetScope::PerGroup && heads == HeadGates::PerHead {
            state.kv_groups = (0..c.num_hidden_layers)
                .map(|i| accounting::units(c, i).kv_heads)
                .collect();
        }
        let mut metrics = Metrics::from([("units".into(), units as f64)]);
        if learned {
            let w = fams
                .iter()
                .map(|f| (f.kind, budget::unit_params(c, f.kind, heads)))
                .collect::<BTreeMap<_, _>>();
            metrics.insert("params_target".into(), plain);
            state.joint = Some(Joint::new(plain, w));
        }
        write_json(&ctx.out_dir.join(GATES), &state)?;
        forward_model_json(input, ctx.out_dir)?;
        for (name, t, _) in &rows {
            metrics.insert(format!("target_{name}"), *t);
        }
        Ok(metrics)
    }
}
