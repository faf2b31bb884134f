//! `threshold`: trained gates -> final mask (which units survive, with which scale).

use anyhow::Result;

use super::artifacts::{GATES, MASK};
use super::common::{forward_model_json, model_path, read_json, write_json};
use crate::engine::params::{choice, int_in, StageParams};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, StageContext, StageKind};
use crate::io;
use crate::model::accounting::{self, LayerUnits};
use crate::model::config::LayerShape;
use crate::prune::mask::{self, expand_groups, FinalMask, LayerMask};
use crate::prune::train::{deployed_values, GateState, HeadGates};

/// The `threshold` stage kind.
pub struct Threshold;

crate::choice_enum! {
    /// How `threshold` turns gates into a mask.
    pub enum Rule {
        /// Keep ReLU(z) > 0 (the paper).
        Relu = "relu",
        /// Remove exactly the budget, smallest first.
        Topk = "topk",
        /// The same count in every layer (a standard config).
        Uniform = "uniform",
    }
}

crate::stage_params! {
    /// The `threshold` stage's parameters.
    pub struct ThresholdParams {
        /// relu: keep ReLU(z) > 0; topk: remove exactly the budget, smallest first; uniform: same count per layer
        rule: Rule = "relu" => choice::<Rule>(),
        /// uniform rule: channels kept per layer rounded to a multiple of this (e.g. 64)
        multiple: usize = 1 => int_in(1, 1 << 16),
    }
}

impl StageKind for Threshold {
    fn name(&self) -> &'static str {
        "threshold"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Turn trained gates into the final mask: relu (the paper: keep z > 0), topk (exactly the budget) or uniform (the same count in every layer, channels rounded to a multiple: a standard config)."
    }
    fn params(&self) -> Vec<ParamSpec> {
        ThresholdParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "trained",
            kinds: &["anneal-train", "oneshot", "gate-insert"],
            doc: "gates to threshold",
        }]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("params_removed")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("trained")?;
        let state: GateState = read_json(&input.dir.join(GATES))?;
        let files = io::open_model(&model_path(input, ctx.cache_root)?)?;
        let c = &files.config;
        let ThresholdParams { rule, multiple } = ctx.typed()?;
        let mut metrics = Metrics::new();
        let units: Vec<LayerUnits> = (0..c.num_hidden_layers)
            .map(|i| accounting::units(c, i))
            .collect();
        let mut heads: Vec<Vec<f32>> = units.iter().map(|u| vec![1.0; u.heads]).collect();
        let mut channels: Vec<Vec<f32>> = units.iter().map(|u| vec![1.0; u.channels]).collect();
        let mut experts: Vec<Vec<f32>> = units
            .iter()
            .map(|u| vec![1.0; u.experts * u.expert_width])
            .collect();
        if state.scored_by.is_some() && rule == Rule::Relu {
            anyhow::bail!(
                "stage {}: one-shot scores ({}) have no threshold of their own: use rule = \"topk\" or \"uniform\"",
                ctx.instance,
                state.scored_by.as_deref().unwrap_or_default()
            );
        }
        for f in &state.families {
            let total: usize = f.z.iter().map(Vec::len).sum();
            // What the parameters mean at deployment (ReLU(z), or deterministic hard-concrete gates).
            let values = deployed_values(state.method, &f.z);
            let kept = match rule {
                Rule::Topk => mask::topk(&values, (f.target * total as f64).round() as usize),
                Rule::Uniform => {
                    // Heads and channels: the same count in every layer; expert channels: the
                    // same count in every expert.
                    let groups: Vec<usize> = units
                        .iter()
                        .map(|u| {
                            if f.name == "experts" {
                                u.expert_width
                            } else {
                                0
                            }
                        })
                        .collect();
                    let channels = f.name != "heads";
                    mask::uniform(&values, &groups, |n| {
                        let mut keep = ((1.0 - f.target) * n as f64).round() as usize;
                        if channels && multiple > 1 {
                            keep = keep.div_ceil(multiple) * multiple;
                        }
                        keep.clamp(1, n)
                    })
                }
                Rule::Relu => mask::relu(&values),
            };
            // One-shot survivors keep their weights as they are.
            let kept: Vec<Vec<f32>> = if state.scored_by.is_some() {
                kept.into_iter()
                    .map(|l| {
                        l.into_iter()
                            .map(|x| if x > 0.0 { 1.0 } else { 0.0 })
                            .collect()
                    })
                    .collect()
            } else {
                kept
            };
            let (achieved, per_layer) = mask::sparsity(&kept);
            metrics.insert(format!("sparsity_{}", f.name), achieved);
            metrics.insert(format!("target_{}", f.name), f.target);
            metrics.insert(format!("target_gap_{}", f.name), achieved - f.target);
            for (i, s) in per_layer.iter().enumerate() {
                metrics.insert(format!("sparsity_{}_layer{i:02}", f.name), *s);
            }
            for (i, k) in kept.into_iter().enumerate() {
                match f.name.as_str() {
                    "heads" if state.heads == HeadGates::PerGroup => {
                        heads[i] = expand_groups(&k, units[i].heads)
                    }
                    "heads" => heads[i] = k,
                    "experts" => experts[i] = k,
                    _ => channels[i] = k,
                }
            }
        }
        let final_mask = FinalMask {
            layers: heads
                .into_iter()
                .zip(channels)
                .zip(experts)
                .map(|((heads, channels), experts)| LayerMask {
                    heads,
                    channels,
                    experts,
                })
                .collect(),
        };
        // Per layer, what survives: parameters removed (what slicing takes away without padding)
        // and the sliced shapes for FLOPs per token, with no padding either except that every
        // expert of a layer is as wide as its widest (as slicing makes them).
        let p = accounting::count(c);
        let (per_q, per_kv) = accounting::head_params(c);
        let per_ch = accounting::channel_params(c);
        let live = |v: &[f32]| v.iter().filter(|&&x| x != 0.0).count();
        let mut removed = 0usize;
        let mut shapes = vec![];
        for (i, (l, u)) in final_mask.layers.iter().zip(&units).enumerate() {
            let g = u.heads / u.kv_heads.max(1);
            let live_groups = l
                .heads
                .chunks(g.max(1))
                .filter(|grp| grp.iter().any(|&x| x != 0.0))
                .count();
            let live_q = live(&l.heads);
            let (live_ch, live_ex) = (live(&l.channels), live(&l.experts));
            removed += (u.heads - live_q) * per_q
                + (u.kv_heads - live_groups) * per_kv
                + (l.channels.len() + l.experts.len() - live_ch - live_ex) * per_ch;
            let mut shape = LayerShape {
                num_attention_heads: live_q,
                num_key_value_heads: live_groups,
                intermediate_size: live_ch,
                ..Default::default()
            };
            if u.experts > 0 {
                shape.intermediate_size = c.layer(i).intermediate_size;
                shape.moe_intermediate_size = l
                    .experts
                    .chunks(u.expert_width.max(1))
                    .map(live)
                    .max()
                    .unwrap_or(0)
                    .max(1);
                shape.shared_expert_intermediate_size = live_ch;
            }
            shapes.push(shape);
        }
        metrics.insert(
            "params_removed".into(),
            removed as f64 / p.prunable() as f64,
        );
        let mut pruned = c.clone();
        pruned.layer_shapes = Some(shapes);
        metrics.insert(
            "flops_kept".into(),
            accounting::flops_per_token(&pruned, 512) / accounting::flops_per_token(c, 512),
        );
        write_json(&ctx.out_dir.join(MASK), &final_mask)?;
        forward_model_json(input, ctx.out_dir)?;
        Ok(metrics)
    }
}
