//! `gate-insert`: decides the gate families (heads per KV group or per head, FFN channels,
//! routed-expert channels), their sparsity targets (as a fraction of units, or of prunable
//! parameters) and the initial gate parameters `z ~ N(1, 0.01)`.

use anyhow::{bail, Result};

use super::artifacts::GATES;
use super::common::{forward_model_json, model_path, write_json};
use crate::engine::params::{choice, float, int, StageParams};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::io;
use crate::model::accounting;
use crate::prune::train::{GateState, HeadGates, Scope};

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
    }
}

impl From<TargetScope> for Scope {
    fn from(s: TargetScope) -> Self {
        match s {
            TargetScope::Global => Scope::Global,
            TargetScope::PerLayer => Scope::PerLayer,
        }
    }
}

crate::stage_params! {
    /// The `gate-insert` stage's parameters.
    pub struct GateInsertParams {
        /// fraction to remove (of prunable parameters, or of units: see `budget`)
        sparsity: f64 = 0.5 => float(0.0, 0.95),
        /// params: the fraction of prunable parameters (what users mean by 50 %); units: the same fraction of every family's units (the paper)
        budget: Budget = "params" => choice::<Budget>(),
        /// attention gates: per KV group (whole groups go: loadable by standard runtimes), per query head, or none
        heads: Heads = "per-group" => choice::<Heads>(),
        /// gate FFN intermediate channels (and the shared expert's in MoE layers)
        channels: bool = true => ParamType::Bool,
        /// gate the channels of every routed expert (MoE models)
        experts: bool = true => ParamType::Bool,
        /// one budget over all layers (better quality) or the same in every layer
        scope: TargetScope = "global" => choice::<TargetScope>(),
        /// seed of the gate initialisation
        seed: u64 = 0 => int(0),
    }
}

impl StageKind for GateInsert {
    fn name(&self) -> &'static str {
        "gate-insert"
    }
    fn version(&self) -> u32 {
        1
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
            kinds: &["load"],
            doc: "the model to prune",
        }]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("units")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("model")?;
        let files = io::open_model(&model_path(input, ctx.cache_root)?)?;
        let c = &files.config;
        let params = ctx.typed::<GateInsertParams>()?;
        let heads: HeadGates = params.heads.into();
        let alpha = params.sparsity;
        let p = accounting::count(c);
        let layers: Vec<_> = (0..c.num_hidden_layers)
            .map(|i| accounting::units(c, i))
            .collect();
        // Families: (name, units per layer, the parameters they cover). `channels` are the dense
        // FFNs' (and MoE shared experts') channels, `experts` the routed experts' channels.
        let mut fams: Vec<(&str, Vec<usize>, usize)> = vec![];
        if heads != HeadGates::None {
            let per = layers
                .iter()
                .map(|u| {
                    if heads == HeadGates::PerGroup {
                        u.kv_heads
                    } else {
                        u.heads
                    }
                })
                .collect();
            fams.push(("heads", per, p.attention));
        }
        if params.channels {
            fams.push((
                "channels",
                layers.iter().map(|u| u.channels).collect(),
                p.ffn - p.experts,
            ));
        }
        if params.experts {
            fams.push((
                "experts",
                layers.iter().map(|u| u.experts * u.expert_width).collect(),
                p.experts,
            ));
        }
        // A family with no units in this model (experts of a dense model, channels of a MoE
        // model without shared experts) is left out.
        fams.retain(|f| f.1.iter().sum::<usize>() > 0);
        if fams.is_empty() {
            bail!("gate-insert: nothing to prune (no heads, channels or expert channels are gated in this model)");
        }
        // Targets per family. With every family at the same unit fraction the removed share of
        // prunable parameters equals that fraction; families left out leave their share to the
        // gated ones.
        let covered: usize = fams.iter().map(|f| f.2).sum();
        let target = match params.budget {
            Budget::Params => (alpha * p.prunable() as f64 / covered.max(1) as f64).min(0.95),
            Budget::Units => alpha,
        };
        let fams: Vec<(String, f64, Vec<usize>)> = fams
            .into_iter()
            .map(|(n, per, _)| (n.to_string(), target, per))
            .collect();
        let units: usize = fams.iter().map(|f| f.2.iter().sum::<usize>()).sum();
        let state = GateState::init(&fams, heads, params.scope.into(), params.seed);
        write_json(&ctx.out_dir.join(GATES), &state)?;
        forward_model_json(input, ctx.out_dir)?;
        let mut metrics = Metrics::from([("units".into(), units as f64)]);
        for (name, t, _) in &fams {
            metrics.insert(format!("target_{name}"), *t);
        }
        Ok(metrics)
    }
}
