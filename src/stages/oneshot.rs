//! `oneshot`: the one-shot baselines (magnitude, wanda-sp, flap) as importance scores in the
//! gate-insert families, so `threshold` turns them into masks at the same budget as DDP.

use anyhow::Result;
use toml::Value;

use super::common::{forward_model_json, model_path, read_json, write_json};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::io;
use crate::prune::oneshot::{self, LayerStats};
use crate::prune::train::GateState;

pub struct Oneshot;

impl StageKind for Oneshot {
    fn name(&self) -> &'static str {
        "oneshot"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "One-shot structured pruning scores for the gate-insert families: magnitude (weight norms), wanda-sp (|W| x input norm), flap (input fluctuation x column norm, standardised per layer); threshold (topk or uniform) makes the mask."
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec {
            name: "method",
            ty: ParamType::Choice(oneshot::METHODS),
            default: Some(Value::String("wanda-sp".into())),
            doc: "magnitude, wanda-sp or flap (the last two need calibrate's activation_stats)",
        }]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "gates",
                kinds: &["gate-insert"],
                doc: "the gate families and their budgets",
            },
            InputSpec {
                optional: true,
                name: "calibration",
                kinds: &["calibrate"],
                doc: "activation statistics (wanda-sp, flap)",
            },
        ]
    }
    fn headline(&self) -> Option<&'static str> {
        None
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let gates_in = ctx.input("gates")?;
        let mut state: GateState = read_json(&gates_in.dir.join("gates.json"))?;
        let files = io::open_model(&model_path(gates_in, ctx.cache_root)?)?;
        let stats: Option<Vec<LayerStats>> = match ctx.inputs.get("calibration") {
            Some(c) if c.dir.join("activation_stats.json").is_file() => {
                Some(read_json(&c.dir.join("activation_stats.json"))?)
            }
            _ => None,
        };
        let method = ctx.str("method");
        oneshot::score(
            method,
            &files.config,
            files.weights.as_ref(),
            stats.as_deref(),
            &mut state,
        )
        .map_err(|e| anyhow::anyhow!("stage {}: {e}", ctx.instance))?;
        write_json(&ctx.out_dir.join("gates.json"), &state)?;
        forward_model_json(gates_in, ctx.out_dir)?;
        Ok(Metrics::from([(
            "stats_rows".into(),
            stats
                .and_then(|s| s.first().map(|l| l.down.rows as f64))
                .unwrap_or(0.0),
        )]))
    }
}
