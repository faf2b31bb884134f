//! `threshold`: trained gates -> final mask (which units survive, with which scale).

use anyhow::Result;

use super::common::{forward_model_json, open_input, read_json, write_json};
use crate::artifacts::{GATES, MASK};
use crate::engine::params::{choice, int_in, StageParams};
use crate::engine::stage::{Input, InputSpec, Metrics, ParamSpec, StageContext, StageKind};
use crate::model::accounting::{self, LayerUnits};
use crate::prune::mask::{self, FamilyKind, FamilySparsity};
use crate::prune::train::{deployed_values, GateState};

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "threshold";

/// The `threshold` stage kind.
pub struct Threshold;

crate::choice_enum! {
    /// How `threshold` turns gates into a mask.
    pub enum Rule {
        /// Keep ReLU(z) > 0 (the paper).
        Relu = "relu",
        /// Remove exactly the budget, smallest first.
        Topk = "topk",
        /// The same count in every layer, and in every KV group for per-head gates (a standard
        /// config).
        Uniform = "uniform",
    }
}

crate::stage_params! {
    /// The `threshold` stage's parameters.
    pub struct ThresholdParams {
        /// relu: keep ReLU(z) > 0; topk: remove exactly the budget, smallest first; uniform: same count per layer (per-head gates: the same number of query heads in every KV group)
        rule: Rule = "relu" => choice::<Rule>(),
        /// uniform rule: channels kept per layer rounded to a multiple of this (e.g. 64)
        multiple: usize = 1 => int_in(1, 1 << 16),
    }
}

impl StageKind for Threshold {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        // 2: uniform keeps per-head gates per KV group.
        2
    }
    fn about(&self) -> &'static str {
        "Turn trained gates into the final mask: relu (the paper: keep z > 0), topk (exactly the budget) or uniform (the same count in every layer, per-head gates the same number of query heads in every KV group, channels rounded to a multiple: a standard config)."
    }
    fn params(&self) -> Vec<ParamSpec> {
        ThresholdParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "trained",
            kinds: &[
                super::anneal_train::KIND,
                super::oneshot::KIND,
                super::gate_insert::KIND,
            ],
            doc: "gates to threshold",
        }]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("params_removed")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("trained")?;
        let state: GateState = read_json(&input.dir.join(GATES))?;
        let files = open_input(input, ctx.cache_root)?;
        let c = &files.config;
        let ThresholdParams { rule, multiple } = ctx.typed()?;
        if state.scored_by.is_some() && rule == Rule::Relu {
            anyhow::bail!(
                "stage {}: one-shot scores ({}) have no threshold of their own: use rule = \"topk\" or \"uniform\"",
                ctx.instance,
                state.scored_by.as_deref().unwrap_or_default()
            );
        }
        let rule = match rule {
            Rule::Relu => mask::Rule::Relu,
            Rule::Topk => mask::Rule::Topk,
            Rule::Uniform => mask::Rule::Uniform { multiple },
        };
        let units: Vec<LayerUnits> = (0..c.num_hidden_layers)
            .map(|i| accounting::units(c, i))
            .collect();
        let (final_mask, families) = mask::from_gates(&state, rule, &units)?;
        for f in &families {
            check_not_emptied(ctx, input, &state, f, &units)?;
        }
        if let (mask::Rule::Uniform { multiple }, None) = (rule, &state.scored_by) {
            for (f, report) in state.families.iter().zip(&families) {
                warn_zero_kept(ctx, &state, f, report, multiple, &units);
            }
        }
        let mut metrics = Metrics::new();
        for f in &families {
            metrics.insert(format!("sparsity_{}", f.kind), f.achieved);
            metrics.insert(format!("target_{}", f.kind), f.target);
            metrics.insert(format!("target_gap_{}", f.kind), f.achieved - f.target);
            for (i, s) in f.per_layer.iter().enumerate() {
                metrics.insert(format!("sparsity_{}_layer{i:02}", f.kind), *s);
            }
        }
        // What slicing takes away (no padding), and FLOPs per token of the sliced shapes.
        let kept = final_mask.kept(&units);
        let prunable = accounting::count(c).prunable();
        metrics.insert(
            "params_removed".into(),
            accounting::removed_params(c, &kept) as f64 / prunable as f64,
        );
        let pruned = accounting::pruned_config(c, &kept);
        metrics.insert(
            "flops_kept".into(),
            accounting::flops_per_token(&pruned, 512) / accounting::flops_per_token(c, 512),
        );
        write_json(&ctx.out_dir.join(MASK), &final_mask)?;
        forward_model_json(input, ctx.out_dir)?;
        Ok(metrics)
    }
}

/// Warns when the uniform rule keeps units of `f` whose trained gate is 0: the training removed
/// more of them in some layers than the rule's count (one budget over all layers), so the
/// model loses more than the budget; a per-layer budget trains the shape the rule deploys.
fn warn_zero_kept(
    ctx: &StageContext,
    state: &GateState,
    f: &crate::prune::train::Family,
    report: &FamilySparsity,
    multiple: usize,
    units: &[LayerUnits],
) {
    let lens: Vec<usize> = f.z.iter().map(Vec::len).collect();
    let total: usize = lens.iter().sum();
    let zeros = (report.achieved * total as f64).round() as usize;
    let nominal = mask::uniform_removes(f.name, state.heads, f.target, multiple, units, &lens);
    if zeros > nominal {
        ctx.warn(&format!(
            "the uniform rule keeps {} {} whose trained gate is 0, so {} of {} are removed where the rule's count is {}: the training chose more in some layers than the same count per layer allows. Train with gate-insert scope = \"per-layer\" (the budget per layer; \"per-group\" with per-head gates, per KV group) so training meets the uniform shape, or deploy per-layer shapes (threshold rule = \"topk\", slice uniform = false)",
            zeros - nominal,
            f.name,
            zeros,
            total,
            nominal
        ));
    }
}

/// Fails when `f`'s mask removes every unit of its family in every layer that has some: a
/// model without attention (or without FFNs) is never what a budget asks for, and one without
/// heads cannot even be sliced. The error names the cause: gates all closed (a collapsed
/// training, which anneal-train warned of) or the rule. One layer emptied is fine: slicing
/// records its shape, or pads it under uniform shapes.
fn check_not_emptied(
    ctx: &StageContext,
    input: &Input,
    state: &GateState,
    f: &FamilySparsity,
    units: &[LayerUnits],
) -> Result<()> {
    let size = |u: &LayerUnits| match f.kind {
        FamilyKind::Heads => u.heads,
        FamilyKind::Channels => u.channels,
        FamilyKind::Experts => u.experts * u.expert_width,
    };
    let layers: Vec<usize> = (0..units.len()).filter(|&i| size(&units[i]) > 0).collect();
    if layers.is_empty() || layers.iter().any(|&i| f.per_layer[i] < 1.0) {
        return Ok(());
    }
    let fam = f.kind.name();
    let figures = format!("sparsity {:.2} against target {:.2}", f.achieved, f.target);
    let upstream = match input.metrics.get(&format!("expected_sparsity_{fam}")) {
        Some(q) => format!("; {} ended at expected sparsity {q:.2}", input.stage),
        None => String::new(),
    };
    let closed = state.families.iter().filter(|g| g.name == f.kind).all(|g| {
        deployed_values(state.method, &g.z)
            .iter()
            .flatten()
            .all(|&v| v <= 0.0)
    });
    let (cause, remedy) = if closed && input.kind == super::anneal_train::KIND {
        (
            format!("training collapsed: every gate of the {fam} family is closed (value 0) in every layer"),
            format!("rerun {} with lower learning rates (lr_z, eta, lr_lambda, lr_lambda2)", input.stage),
        )
    } else if closed {
        (
            format!("every {fam} gate or score is 0 or below in every layer"),
            format!("check {}'s output: there is nothing to rank", input.stage),
        )
    } else {
        (
            format!("the rule removes every {fam} unit of every layer"),
            "use a lower sparsity or rule = \"uniform\"".to_string(),
        )
    };
    anyhow::bail!(
        "stage {}: {cause} ({figures}{upstream}), so the mask would leave the model no {fam} at all: {remedy}",
        ctx.instance
    )
}
