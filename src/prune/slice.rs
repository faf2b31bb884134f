//! From a final mask to a smaller dense model: surviving gate values are folded into the
//! weights (a head's gate into its o_proj columns, a channel's gate into its down_proj column,
//! an expert channel's gate into that expert's down_proj column) and removed heads, KV groups
//! and channels are cut out.
//!
//! Exactness: a unit whose gate is 0 contributes nothing, so the sliced model gives the gated
//! model's logits. Where shapes must stay regular (every KV group keeps the same number of
//! query heads; all experts of a layer one width; with `uniform`, every layer the same sizes)
//! some removed units are kept as zero-gated padding, which changes nothing numerically.
//! Routed experts are never dropped, even with no channel left: the router would then pick
//! other experts for some tokens, and the sliced model would no longer be the gated one.

use std::collections::BTreeMap;

use super::mask::FinalMask;
use crate::error::{Error, Result};
use crate::model::accounting::{self, LayerUnits};
use crate::model::config::{Arch, LayerShape, ModelConfig};
use crate::model::weights::{HostTensor, WeightSource};

/// The sliced model: its config and every tensor (HF names and layout).
pub struct Sliced {
    /// The smaller model's config (`layer_shapes` set when layers differ).
    pub config: ModelConfig,
    /// Every tensor of the smaller model, by Hugging Face name.
    pub tensors: BTreeMap<String, HostTensor>,
}

/// Rows `idx` (each a block of `block` rows) of a `[rows, cols]` or `[rows]` tensor.
fn take_rows(t: &HostTensor, block: usize, idx: &[usize]) -> HostTensor {
    let cols: usize = t.shape[1..].iter().product();
    let mut data = Vec::with_capacity(idx.len() * block * cols);
    for &u in idx {
        data.extend_from_slice(&t.data[u * block * cols..(u + 1) * block * cols]);
    }
    let mut shape = t.shape.clone();
    shape[0] = idx.len() * block;
    HostTensor::new(shape, data)
}

/// Columns `idx` (blocks of `block`) of a `[rows, cols]` tensor, block u scaled by `scale[k]`.
fn take_cols(t: &HostTensor, block: usize, idx: &[usize], scale: &[f32]) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut data = Vec::with_capacity(r * idx.len() * block);
    for row in 0..r {
        for (k, &u) in idx.iter().enumerate() {
            data.extend(
                t.data[row * c + u * block..row * c + (u + 1) * block]
                    .iter()
                    .map(|x| x * scale[k]),
            );
        }
    }
    HostTensor::new(vec![r, idx.len() * block], data)
}

/// Picks `n` units: the alive ones (in order), then dead ones as padding, returned sorted.
fn pick(alive: &[usize], all: std::ops::Range<usize>, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = alive.to_vec();
    for u in all {
        if v.len() >= n {
            break;
        }
        if !v.contains(&u) {
            v.push(u);
        }
    }
    v.sort_unstable();
    v
}

/// Indices of the non-zero values.
fn alive(v: &[f32]) -> Vec<usize> {
    (0..v.len()).filter(|&i| v[i] != 0.0).collect()
}

/// Alive units of one layer, and what it has.
struct Plan {
    units: LayerUnits,
    /// Alive query heads of each KV group.
    groups: Vec<Vec<usize>>,
    /// Dense FFN channels, or the shared expert's.
    channels: Vec<usize>,
    /// Alive channels of each routed expert (empty in a dense layer).
    experts: Vec<Vec<usize>>,
}

impl Plan {
    fn per_group(&self) -> usize {
        self.groups.iter().map(Vec::len).max().unwrap_or(0)
    }
    fn live_groups(&self) -> usize {
        self.groups.iter().filter(|g| !g.is_empty()).count()
    }
    /// The width every expert of the layer needs: its widest expert's (at least 1, so the
    /// shape stays a MoE block).
    fn expert_width(&self) -> usize {
        self.experts.iter().map(Vec::len).max().unwrap_or(0).max(1)
    }
}

/// Copies, cuts and scales the three projections of one SwiGLU MLP: rows `keep` of gate and
/// up, the same columns of down scaled by `scale`.
fn slice_mlp(
    w: &dyn WeightSource,
    prefix: &str,
    names: [&str; 3],
    keep: &[usize],
    scale: &[f32],
    out: &mut BTreeMap<String, HostTensor>,
) -> Result<()> {
    for n in &names[..2] {
        let name = format!("{prefix}.{n}.weight");
        out.insert(name.clone(), take_rows(&w.load(&name)?, 1, keep));
    }
    let name = format!("{prefix}.{}.weight", names[2]);
    out.insert(name.clone(), take_cols(&w.load(&name)?, 1, keep, scale));
    Ok(())
}

/// Slices a model. `channel_multiple`: with `uniform`, channel counts (FFN, shared-expert and
/// expert widths) are rounded up to a multiple of it (e.g. 64) so the result has a standard,
/// kernel-friendly width.
pub fn slice(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    mask: &FinalMask,
    uniform: bool,
    channel_multiple: usize,
) -> Result<Sliced> {
    if mask.layers.len() != cfg.num_hidden_layers {
        return Err(Error::Invalid(format!(
            "the mask covers {} layers, the model has {}",
            mask.layers.len(),
            cfg.num_hidden_layers
        )));
    }
    let hd = cfg.head_dim;
    let mut plans = vec![];
    for (i, lm) in mask.layers.iter().enumerate() {
        let u = accounting::units(cfg, i);
        if lm.heads.len() != u.heads
            || lm.channels.len() != u.channels
            || lm.experts.len() != u.experts * u.expert_width
        {
            return Err(Error::Invalid(format!(
                "layer {i}: the mask has {} heads / {} channels / {} expert channels, the model {} / {} / {} ({} experts x {})",
                lm.heads.len(),
                lm.channels.len(),
                lm.experts.len(),
                u.heads,
                u.channels,
                u.experts * u.expert_width,
                u.experts,
                u.expert_width
            )));
        }
        let g = u.heads / u.kv_heads.max(1);
        plans.push(Plan {
            units: u,
            groups: (0..u.kv_heads)
                .map(|k| {
                    (k * g..(k + 1) * g)
                        .filter(|&h| lm.heads[h] != 0.0)
                        .collect()
                })
                .collect(),
            channels: alive(&lm.channels),
            experts: lm
                .experts
                .chunks(u.expert_width.max(1))
                .map(alive)
                .collect(),
        });
    }
    let round = |n: usize| {
        if channel_multiple > 1 {
            n.div_ceil(channel_multiple) * channel_multiple
        } else {
            n
        }
    };
    let moe_layers: Vec<bool> = plans.iter().map(|p| p.units.experts > 0).collect();
    // Uniform sizes: the largest any layer needs, dense FFNs and shared experts apart.
    let widest = |moe: bool, f: &dyn Fn(&Plan) -> usize| {
        plans
            .iter()
            .zip(&moe_layers)
            .filter(|(_, &m)| m == moe)
            .map(|(p, _)| f(p))
            .max()
            .unwrap_or(0)
    };
    let (u_groups, u_per_group) = (
        plans.iter().map(Plan::live_groups).max().unwrap_or(0),
        plans.iter().map(Plan::per_group).max().unwrap_or(0),
    );
    let u_dense = widest(false, &|p| p.channels.len());
    let u_shared = widest(true, &|p| p.channels.len().max(1));
    let u_expert = widest(true, &Plan::expert_width);
    let names = cfg.spec().moe;
    let mut tensors = BTreeMap::new();
    let mut shapes = vec![];
    for (i, p) in plans.iter().enumerate() {
        let u = p.units;
        let lm = &mask.layers[i];
        let g = u.heads / u.kv_heads.max(1);
        let is_moe = moe_layers[i];
        let (n_groups, n_per_group, n_channels, n_expert) = if uniform {
            (
                u_groups,
                u_per_group,
                round(if is_moe { u_shared } else { u_dense }).min(u.channels),
                round(u_expert).min(u.expert_width),
            )
        } else {
            (
                p.live_groups(),
                p.per_group(),
                if is_moe {
                    p.channels.len().max(1).min(u.channels)
                } else {
                    p.channels.len()
                },
                p.expert_width(),
            )
        };
        let alive_groups: Vec<usize> = (0..p.groups.len())
            .filter(|&k| !p.groups[k].is_empty())
            .collect();
        let kv_keep = pick(&alive_groups, 0..u.kv_heads, n_groups);
        let mut heads = vec![];
        for &k in &kv_keep {
            heads.extend(pick(&p.groups[k], k * g..(k + 1) * g, n_per_group));
        }
        let head_scale: Vec<f32> = heads.iter().map(|&h| lm.heads[h]).collect();
        let channels = pick(&p.channels, 0..u.channels, n_channels);
        let chan_scale: Vec<f32> = channels.iter().map(|&c| lm.channels[c]).collect();
        let pre = format!("model.layers.{i}");
        let load = |n: &str| w.load(&format!("{pre}.{n}"));
        for (proj, units, block) in [
            ("q_proj", &heads, hd),
            ("k_proj", &kv_keep, hd),
            ("v_proj", &kv_keep, hd),
        ] {
            tensors.insert(
                format!("{pre}.self_attn.{proj}.weight"),
                take_rows(&load(&format!("self_attn.{proj}.weight"))?, block, units),
            );
            if cfg.attention_bias {
                tensors.insert(
                    format!("{pre}.self_attn.{proj}.bias"),
                    take_rows(&load(&format!("self_attn.{proj}.bias"))?, block, units),
                );
            }
        }
        tensors.insert(
            format!("{pre}.self_attn.o_proj.weight"),
            take_cols(&load("self_attn.o_proj.weight")?, hd, &heads, &head_scale),
        );
        let mlp_names = ["gate_proj", "up_proj", "down_proj"];
        let mut shape = LayerShape {
            num_attention_heads: heads.len(),
            num_key_value_heads: kv_keep.len(),
            intermediate_size: cfg.layer(i).intermediate_size,
            ..Default::default()
        };
        match names.filter(|_| is_moe) {
            Some(nm) => {
                let b = format!("{pre}.{}", nm.block);
                let router = format!("{b}.{}.weight", nm.router);
                tensors.insert(router.clone(), w.load(&router)?);
                for (e, alive_e) in p.experts.iter().enumerate() {
                    let keep = pick(alive_e, 0..u.expert_width, n_expert);
                    let scale: Vec<f32> = keep
                        .iter()
                        .map(|&c| lm.experts[e * u.expert_width + c])
                        .collect();
                    slice_mlp(
                        w,
                        &format!("{b}.experts.{e}"),
                        [nm.gate, nm.up, nm.down],
                        &keep,
                        &scale,
                        &mut tensors,
                    )?;
                }
                if u.channels > 0 {
                    slice_mlp(
                        w,
                        &format!("{b}.shared_expert"),
                        mlp_names,
                        &channels,
                        &chan_scale,
                        &mut tensors,
                    )?;
                    let gate = format!("{b}.shared_expert_gate.weight");
                    tensors.insert(gate.clone(), w.load(&gate)?);
                }
                shape.moe_intermediate_size = n_expert;
                shape.shared_expert_intermediate_size = channels.len();
            }
            None => {
                slice_mlp(
                    w,
                    &format!("{pre}.mlp"),
                    mlp_names,
                    &channels,
                    &chan_scale,
                    &mut tensors,
                )?;
                shape.intermediate_size = channels.len();
            }
        }
        for n in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_norm.weight",
            "self_attn.k_norm.weight",
        ] {
            let name = format!("{pre}.{n}");
            if w.has(&name) {
                tensors.insert(name.clone(), w.load(&name)?);
            }
        }
        shapes.push(shape);
    }
    for n in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        if w.has(n) && !(n == "lm_head.weight" && cfg.tie_word_embeddings) {
            tensors.insert(n.to_string(), w.load(n)?);
        }
    }
    let config = sliced_config(cfg, &shapes, &moe_layers);
    config
        .validate()
        .map_err(|e| Error::Invalid(format!("the sliced model's config is invalid: {e}")))?;
    Ok(Sliced { config, tensors })
}

/// The config of the sliced layers: the standard form when every layer has the same attention
/// shape, every dense layer the same FFN width and every MoE layer the same expert and
/// shared-expert widths; otherwise the per-layer shapes (`ddp_layer_shapes`).
fn sliced_config(cfg: &ModelConfig, shapes: &[LayerShape], moe_layers: &[bool]) -> ModelConfig {
    let mut config = cfg.clone();
    let same = |f: &dyn Fn(&LayerShape) -> usize, moe: Option<bool>| -> Option<usize> {
        let mut it = shapes
            .iter()
            .zip(moe_layers)
            .filter(|(_, &m)| moe.is_none_or(|x| x == m))
            .map(|(s, _)| f(s));
        let first = it.next();
        it.all(|x| Some(x) == first).then_some(first).flatten()
    };
    let standard = (
        same(&|s| s.num_attention_heads, None),
        same(&|s| s.num_key_value_heads, None),
        same(&|s| s.intermediate_size, Some(false)),
        same(&|s| s.moe_intermediate_size, Some(true)),
        same(&|s| s.shared_expert_intermediate_size, Some(true)),
    );
    let max = |f: &dyn Fn(&LayerShape) -> usize| shapes.iter().map(f).max().unwrap_or(0);
    let any_dense = moe_layers.iter().any(|m| !m);
    let any_moe = moe_layers.iter().any(|&m| m);
    match standard {
        (Some(nh), Some(nkv), dense, experts, shared)
            if (dense.is_some() || !any_dense)
                && ((experts.is_some() && shared.is_some()) || !any_moe) =>
        {
            config.num_attention_heads = nh;
            config.num_key_value_heads = nkv;
            if let Some(d) = dense {
                config.intermediate_size = d;
            }
            if let (Some(m), Some(e)) = (config.moe.as_mut(), experts) {
                m.moe_intermediate_size = e;
                m.shared_expert_intermediate_size = shared.filter(|&s| s > 0);
                // Mixtral's config has no expert width of its own: its experts are
                // `intermediate_size` wide.
                if cfg.arch == Arch::Mixtral {
                    config.intermediate_size = e;
                }
            }
            config.layer_shapes = None;
        }
        _ => {
            config.num_attention_heads = max(&|s| s.num_attention_heads);
            config.num_key_value_heads = max(&|s| s.num_key_value_heads);
            config.intermediate_size = max(&|s| s.intermediate_size);
            config.layer_shapes = Some(shapes.to_vec());
        }
    }
    config
}
