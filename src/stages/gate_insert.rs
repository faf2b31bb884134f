//! `gate-insert`: decides the gate families (heads per KV group or per head, FFN channels),
//! their sparsity targets (as a fraction of units, or of prunable parameters) and the initial
//! gate parameters `z ~ N(1, 0.01)`.

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
            ParamSpec { name: "channels", ty: ParamType::Bool, default: Some(Value::Boolean(true)), doc: "gate FFN intermediate channels" },
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
        if c.moe.is_some() {
            bail!(
                "gate-insert: MoE expert-channel gates are not available yet (dense models only)"
            );
        }
        let heads = match ctx.str("heads") {
            "per-head" => HeadGates::PerHead,
            "none" => HeadGates::None,
            _ => HeadGates::PerGroup,
        };
        let alpha = ctx.float("sparsity");
        let p = accounting::count(c);
        let use_ch = ctx.bool("channels");
        // Targets per family. With both families at the same unit fraction the removed share of
        // prunable parameters equals that fraction; with one family, it must carry it alone.
        let (mut t_heads, mut t_channels) = (alpha, alpha);
        if ctx.str("budget") == "params" {
            match (heads, use_ch) {
                (HeadGates::None, true) => {
                    t_channels = (alpha * p.prunable() as f64 / p.ffn as f64).min(0.95)
                }
                (_, false) if heads != HeadGates::None => {
                    t_heads = (alpha * p.prunable() as f64 / p.attention as f64).min(0.95)
                }
                _ => {}
            }
        }
        let mut fams = vec![];
        if heads != HeadGates::None {
            let per: Vec<usize> = (0..c.num_hidden_layers)
                .map(|i| {
                    let l = c.layer(i);
                    if heads == HeadGates::PerGroup {
                        l.num_key_value_heads
                    } else {
                        l.num_attention_heads
                    }
                })
                .collect();
            fams.push(("heads".to_string(), t_heads, per));
        }
        if use_ch {
            fams.push((
                "channels".to_string(),
                t_channels,
                (0..c.num_hidden_layers)
                    .map(|i| c.layer(i).intermediate_size)
                    .collect(),
            ));
        }
        if fams.is_empty() {
            bail!("gate-insert: nothing to prune (heads = \"none\" and channels = false)");
        }
        let units: usize = fams.iter().map(|f| f.2.iter().sum::<usize>()).sum();
        let scope = if ctx.str("scope") == "per-layer" {
            Scope::PerLayer
        } else {
            Scope::Global
        };
        let state = GateState::init(&fams, heads, scope, ctx.int("seed") as u64);
        write_json(&ctx.out_dir.join("gates.json"), &state)?;
        forward_model_json(input, ctx.out_dir)?;
        Ok(Metrics::from([
            ("units".into(), units as f64),
            (
                "target_heads".into(),
                if heads == HeadGates::None {
                    0.0
                } else {
                    t_heads
                },
            ),
            (
                "target_channels".into(),
                if use_ch { t_channels } else { 0.0 },
            ),
        ]))
    }
}
