//! `threshold`: trained gates -> final mask (which units survive, with which scale).

use anyhow::Result;
use toml::Value;

use super::common::{forward_model_json, model_path, read_json, write_json};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::io;
use crate::model::{accounting, config::LayerShape};
use crate::prune::mask::{self, expand_groups, FinalMask, LayerMask};
use crate::prune::train::{deployed_values, GateState, HeadGates};

pub struct Threshold;

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
        vec![
            ParamSpec { name: "rule", ty: ParamType::Choice(&["relu", "topk", "uniform"]), default: Some(Value::String("relu".into())), doc: "relu: keep ReLU(z) > 0; topk: remove exactly the budget, smallest first; uniform: same count per layer" },
            ParamSpec { name: "multiple", ty: ParamType::Int { min: 1, max: 1 << 16 }, default: Some(Value::Integer(1)), doc: "uniform rule: channels kept per layer rounded to a multiple of this (e.g. 64)" },
        ]
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
        let state: GateState = read_json(&input.dir.join("gates.json"))?;
        let files = io::open_model(&model_path(input, ctx.cache_root)?)?;
        let c = &files.config;
        let rule = ctx.str("rule");
        let multiple = ctx.int("multiple") as usize;
        let mut metrics = Metrics::new();
        let mut heads: Vec<Vec<f32>> = (0..c.num_hidden_layers)
            .map(|i| vec![1.0; c.layer(i).num_attention_heads])
            .collect();
        let mut channels: Vec<Vec<f32>> = (0..c.num_hidden_layers)
            .map(|i| vec![1.0; c.layer(i).intermediate_size])
            .collect();
        if state.scored_by.is_some() && rule == "relu" {
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
                "topk" => mask::topk(&values, (f.target * total as f64).round() as usize),
                "uniform" => {
                    let per = f.z.first().map_or(0, Vec::len);
                    let mut keep = ((1.0 - f.target) * per as f64).round() as usize;
                    if f.name == "channels" && multiple > 1 {
                        keep = (keep.div_ceil(multiple) * multiple).min(per);
                    }
                    mask::uniform(&values, keep.max(1))
                }
                _ => mask::relu(&values),
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
                if f.name == "heads" {
                    heads[i] = if state.heads == HeadGates::PerGroup {
                        expand_groups(&k, c.layer(i).num_attention_heads)
                    } else {
                        k
                    };
                } else {
                    channels[i] = k;
                }
            }
        }
        let final_mask = FinalMask {
            layers: heads
                .into_iter()
                .zip(channels)
                .map(|(h, c)| LayerMask {
                    heads: h,
                    channels: c,
                })
                .collect(),
        };
        // Parameters removed: what slicing with these masks (no padding) takes away.
        let p = accounting::count(c);
        let (per_q, per_kv) = accounting::head_params(c);
        let per_ch = accounting::channel_params(c);
        let mut removed = 0usize;
        for (i, l) in final_mask.layers.iter().enumerate() {
            let g = c.layer(i).num_attention_heads / c.layer(i).num_key_value_heads.max(1);
            let dead_q = l.heads.iter().filter(|&&x| x == 0.0).count();
            let dead_groups = l
                .heads
                .chunks(g.max(1))
                .filter(|grp| grp.iter().all(|&x| x == 0.0))
                .count();
            removed += dead_q * per_q
                + dead_groups * per_kv
                + l.channels.iter().filter(|&&x| x == 0.0).count() * per_ch;
        }
        metrics.insert(
            "params_removed".into(),
            removed as f64 / p.prunable() as f64,
        );
        // FLOPs per token of the sliced model (no padding) against dense, at a 512-token context.
        let mut pruned = c.clone();
        pruned.layer_shapes = Some(
            final_mask
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let g = c.layer(i).num_attention_heads / c.layer(i).num_key_value_heads.max(1);
                    LayerShape {
                        num_attention_heads: l.heads.iter().filter(|&&x| x != 0.0).count(),
                        num_key_value_heads: l
                            .heads
                            .chunks(g.max(1))
                            .filter(|grp| grp.iter().any(|&x| x != 0.0))
                            .count(),
                        intermediate_size: l.channels.iter().filter(|&&x| x != 0.0).count(),
                    }
                })
                .collect(),
        );
        metrics.insert(
            "flops_kept".into(),
            accounting::flops_per_token(&pruned, 512) / accounting::flops_per_token(c, 512),
        );
        write_json(&ctx.out_dir.join("mask.json"), &final_mask)?;
        forward_model_json(input, ctx.out_dir)?;
        Ok(metrics)
    }
}
