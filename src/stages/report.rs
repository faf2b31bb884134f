//! `report`: gathers every evaluate and benchmark instance of the run (across the sweep) and
//! writes report.md with plots, report.json and report.csv (see report::write).

use anyhow::Result;

use crate::engine::params::StageParams;
use crate::engine::stage::{Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::report::{sweep, write};

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "report";

/// The `report` stage kind.
pub struct Report;

crate::stage_params! {
    /// The `report` stage's parameters.
    pub struct ReportParams {
        /// heading of the report (default: the stage instance)
        title: String = "" => ParamType::Str,
    }
}

impl StageKind for Report {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        // 2: labels name the swept values, tokens trained and perplexity ± SE in the table,
        // plots/perplexity_vs_tokens.png.
        2
    }
    fn about(&self) -> &'static str {
        "Gather the run's evaluations and benchmarks (every sweep point) into report.md with plots (quality vs sparsity with the Pareto front, quality vs tokens trained, speed-up vs the ideal, training curves, kept units per layer), report.json and report.csv."
    }
    fn params(&self) -> Vec<ParamSpec> {
        ReportParams::specs()
    }
    fn gathers(&self) -> bool {
        true
    }
    fn headline(&self) -> Option<&'static str> {
        Some("rows")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let sources = sweep::Sources {
            evaluate: super::evaluate::KIND,
            benchmark: super::benchmark::KIND,
            model_input: "model",
            trained: super::anneal_train::KIND,
            oneshot: super::oneshot::KIND,
            method_param: "method",
            gates: (super::gate_insert::KIND, "sparsity"),
            mask: super::threshold::KIND,
            tokens_trained: "tokens_trained",
        };
        let rows = sweep::rows(&ctx.inputs, ctx.cache_root, &sources);
        if rows.is_empty() {
            anyhow::bail!(
                "stage {}: no evaluate stage among its inputs (list the evaluate and benchmark stages in `after`)",
                ctx.instance
            );
        }
        let title = match ctx.typed::<ReportParams>()?.title {
            t if t.is_empty() => ctx.instance.to_string(),
            t => t,
        };
        let pngs = write::write(&rows, ctx.out_dir, &title)?;
        Ok(Metrics::from([
            ("rows".into(), rows.len() as f64),
            ("plots".into(), pngs.len() as f64),
        ]))
    }
}
