//! `oneshot`: the one-shot baselines (magnitude, wanda-sp, flap) as importance scores in the
//! gate-insert families, so `threshold` turns them into masks at the same budget as DDP.

use anyhow::Result;

use super::common::{forward_model_json, open_input, read_json, write_json};
use crate::artifacts::{ACTIVATION_STATS, GATES};
use crate::engine::params::{choice, StageParams};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, StageContext, StageKind};
use crate::prune::oneshot::{self, LayerStats};
use crate::prune::train::GateState;

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "oneshot";

/// The `oneshot` stage kind.
pub struct Oneshot;

crate::choice_enum! {
    /// The one-shot scoring method (the names of [`oneshot::METHODS`], which
    /// [`oneshot::score`] takes).
    pub enum OneshotMethod {
        /// Weight norms.
        Magnitude = "magnitude",
        /// |W| x input norm (needs activation statistics).
        WandaSp = "wanda-sp",
        /// Input fluctuation x column norm, standardised per layer (needs activation statistics).
        Flap = "flap",
    }
}

crate::stage_params! {
    /// The `oneshot` stage's parameters.
    pub struct OneshotParams {
        /// magnitude, wanda-sp or flap (the last two need calibrate's activation_stats)
        method: OneshotMethod = "wanda-sp" => choice::<OneshotMethod>(),
    }
}

impl StageKind for Oneshot {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "One-shot structured pruning scores for the gate-insert families: magnitude (weight norms), wanda-sp (|W| x input norm), flap (input fluctuation x column norm, standardised per layer); threshold (topk or uniform) makes the mask."
    }
    fn params(&self) -> Vec<ParamSpec> {
        OneshotParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "gates",
                kinds: &[super::gate_insert::KIND],
                doc: "the gate families and their budgets",
            },
            InputSpec {
                optional: true,
                name: "calibration",
                kinds: &[super::calibrate::KIND],
                doc: "activation statistics (wanda-sp, flap)",
            },
        ]
    }
    fn headline(&self) -> Option<&'static str> {
        None
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let gates_in = ctx.input("gates")?;
        let mut state: GateState = read_json(&gates_in.dir.join(GATES))?;
        let files = open_input(gates_in, ctx.cache_root)?;
        let stats: Option<Vec<LayerStats>> = match ctx.inputs.get("calibration") {
            Some(c) if c.dir.join(ACTIVATION_STATS).is_file() => {
                Some(read_json(&c.dir.join(ACTIVATION_STATS))?)
            }
            _ => None,
        };
        let method = ctx.typed::<OneshotParams>()?.method;
        oneshot::score(
            &method.to_string(),
            &files.config,
            files.weights.as_ref(),
            stats.as_deref(),
            &mut state,
        )
        .map_err(|e| anyhow::anyhow!("stage {}: {e}", ctx.instance))?;
        write_json(&ctx.out_dir.join(GATES), &state)?;
        forward_model_json(gates_in, ctx.out_dir)?;
        Ok(Metrics::from([(
            "stats_rows".into(),
            stats
                .and_then(|s| s.first().map(|l| l.down.rows as f64))
                .unwrap_or(0.0),
        )]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::params::Choice;

    #[test]
    fn the_method_names_are_the_librarys() {
        assert_eq!(OneshotMethod::NAMES, oneshot::METHODS);
    }
}
