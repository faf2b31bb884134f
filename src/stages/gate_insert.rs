//! `gate-insert`: decides the gate families (heads per KV group or per head, FFN channels,
//! routed-expert channels), their sparsity targets (as a fraction of units, or of prunable
//! parameters) and the initial gate parameters `z ~ N(1, 0.01)`.

use anyhow::{bail, Result};
use toml::Value;

use super::common::{forward_model_json, model_path, write_json};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::io;
use crate::model::accounting;
use crate::prune::train::{GateState, HeadGates, Scope};

pub struct GateInsert;

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
        vec![
            ParamSpec { name: "sparsity", ty: ParamType::Float { min: 0.0, max: 0.95 }, default: Some(Value::Float(0.5)), doc: "fraction to remove (of prunable parameters, or of units: see `budget`)" },
            ParamSpec { name: "budget", ty: ParamType::Choice(&["params", "units"]), default: Some(Value::String("params".into())), doc: "params: the fraction of prunable parameters (what users mean by 50 %); units: the same fraction of every family's units (the paper)" },
            ParamSpec { name: "heads", ty: ParamType::Choice(&["per-group", "per-head", "none"]), default: Some(Value::String("per-group".into())), doc: "attention gates: per KV group (whole groups go: loadable by standard runtimes), per query head, or none" },
            ParamSpec { name: "channels", ty: ParamType::Bool, default: Some(Value::Boolean(true)), doc: "gate FFN intermediate channels (and the shared expert's in MoE layers)" },
            ParamSpec { name: "experts", ty: ParamType::Bool, default: Some(Value::Boolean(true)), doc: "gate the channels of every routed expert (MoE models)" },
            ParamSpec { name: "scope", ty: ParamType::Choice(&["global", "per-layer"]), default: Some(Value::String("global".into())), doc: "one budget over all layers (better quality) or the same in every layer" },
            ParamSpec { name: "seed", ty: ParamType::Int { min: 0, max: i64::MAX }, default: Some(Value::Integer(0)), doc: "seed of the gate initialisation" },
        ]
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
        let heads = match ctx.str("heads") {
            "per-head" => HeadGates::PerHead,
            "none" => HeadGates::None,
            _ => HeadGates::PerGroup,
        };
        let alpha = ctx.float("sparsity");
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
        if ctx.bool("channels") {
            fams.push((
                "channels",
                layers.iter().map(|u| u.channels).collect(),
                p.ffn - p.experts,
            ));
        }
        if ctx.bool("experts") {
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
        let target = if ctx.str("budget") == "params" {
            (alpha * p.prunable() as f64 / covered.max(1) as f64).min(0.95)
        } else {
            alpha
        };
        let fams: Vec<(String, f64, Vec<usize>)> = fams
            .into_iter()
            .map(|(n, per, _)| (n.to_string(), target, per))
            .collect();
        let units: usize = fams.iter().map(|f| f.2.iter().sum::<usize>()).sum();
        let scope = if ctx.str("scope") == "per-layer" {
            Scope::PerLayer
        } else {
            Scope::Global
        };
        let state = GateState::init(&fams, heads, scope, ctx.int("seed") as u64);
        write_json(&ctx.out_dir.join("gates.json"), &state)?;
        forward_model_json(input, ctx.out_dir)?;
        let mut metrics = Metrics::from([("units".into(), units as f64)]);
        for (name, t, _) in &fams {
            metrics.insert(format!("target_{name}"), *t);
        }
        Ok(metrics)
    }
}
