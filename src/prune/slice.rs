//! From a final mask to a smaller dense model: surviving gate values are folded into the
//! weights (a head's gate into its o_proj columns, a channel's gate into its down_proj column)
//! and removed heads, KV groups and channels are cut out.
//!
//! Exactness: a unit whose gate is 0 contributes nothing, so the sliced model gives the gated
//! model's logits. Where shapes must stay regular (every KV group keeps the same number of
//! query heads; with `uniform`, every layer the same sizes) some removed units are kept as
//! zero-gated padding, which changes nothing numerically.

use std::collections::BTreeMap;

use super::mask::FinalMask;
use crate::error::{Error, Result};
use crate::io::weights::{HostTensor, WeightSource};
use crate::model::config::{LayerShape, ModelConfig};

/// The sliced model: its config and every tensor (HF names and layout).
pub struct Sliced {
    pub config: ModelConfig,
    pub tensors: BTreeMap<String, HostTensor>,
    /// Per layer: (kept query heads, kept KV heads, kept channels) before any padding.
    pub alive: Vec<(usize, usize, usize)>,
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

/// Slices a dense model. `channel_multiple`: with `uniform`, channel counts are rounded up to a
/// multiple of it (e.g. 64) so the result has a standard, kernel-friendly width.
pub fn slice(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    mask: &FinalMask,
    uniform: bool,
    channel_multiple: usize,
) -> Result<Sliced> {
    if cfg.moe.is_some() {
        return Err(Error::Invalid(
            "slicing MoE models is not supported yet: expert-channel masks can be trained and applied as gates, but not cut out".into(),
        ));
    }
    if mask.layers.len() != cfg.num_hidden_layers {
        return Err(Error::Invalid(format!(
            "the mask covers {} layers, the model has {}",
            mask.layers.len(),
            cfg.num_hidden_layers
        )));
    }
    let hd = cfg.head_dim;
    // Alive units per layer.
    struct Plan {
        groups: Vec<Vec<usize>>, // alive query heads of each KV group
        channels: Vec<usize>,
    }
    let mut plans = vec![];
    for (i, lm) in mask.layers.iter().enumerate() {
        let l = cfg.layer(i);
        if lm.heads.len() != l.num_attention_heads || lm.channels.len() != l.intermediate_size {
            return Err(Error::Invalid(format!(
                "layer {i}: mask has {} heads / {} channels, the model {} / {}",
                lm.heads.len(),
                lm.channels.len(),
                l.num_attention_heads,
                l.intermediate_size
            )));
        }
        let g = l.num_attention_heads / l.num_key_value_heads.max(1);
        let groups = (0..l.num_key_value_heads)
            .map(|k| {
                (k * g..(k + 1) * g)
                    .filter(|&h| lm.heads[h] != 0.0)
                    .collect()
            })
            .collect();
        let channels = (0..l.intermediate_size)
            .filter(|&c| lm.channels[c] != 0.0)
            .collect();
        plans.push(Plan { groups, channels });
    }
    let per_group = |p: &Plan| p.groups.iter().map(Vec::len).max().unwrap_or(0);
    let live_groups = |p: &Plan| p.groups.iter().filter(|g| !g.is_empty()).count();
    let round = |n: usize| {
        if channel_multiple > 1 {
            n.div_ceil(channel_multiple) * channel_multiple
        } else {
            n
        }
    };
    let (u_groups, u_per_group, u_channels) = (
        plans.iter().map(live_groups).max().unwrap_or(0),
        plans.iter().map(per_group).max().unwrap_or(0),
        plans.iter().map(|p| p.channels.len()).max().unwrap_or(0),
    );
    let mut tensors = BTreeMap::new();
    let mut shapes = vec![];
    let mut alive = vec![];
    for (i, p) in plans.iter().enumerate() {
        let l = cfg.layer(i);
        let lm = &mask.layers[i];
        let g = l.num_attention_heads / l.num_key_value_heads.max(1);
        let (n_groups, n_per_group, n_channels) = if uniform {
            (
                u_groups,
                u_per_group,
                round(u_channels).min(l.intermediate_size),
            )
        } else {
            (live_groups(p), per_group(p), p.channels.len())
        };
        let alive_groups: Vec<usize> = (0..p.groups.len())
            .filter(|&k| !p.groups[k].is_empty())
            .collect();
        let kv_keep = pick(&alive_groups, 0..l.num_key_value_heads, n_groups);
        let mut heads = vec![];
        for &k in &kv_keep {
            heads.extend(pick(&p.groups[k], k * g..(k + 1) * g, n_per_group));
        }
        let head_scale: Vec<f32> = heads.iter().map(|&h| lm.heads[h]).collect();
        let channels = pick(&p.channels, 0..l.intermediate_size, n_channels);
        let chan_scale: Vec<f32> = channels.iter().map(|&c| lm.channels[c]).collect();
        alive.push((
            p.groups.iter().map(Vec::len).sum(),
            alive_groups.len(),
            p.channels.len(),
        ));
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
        for n in ["gate_proj", "up_proj"] {
            tensors.insert(
                format!("{pre}.mlp.{n}.weight"),
                take_rows(&load(&format!("mlp.{n}.weight"))?, 1, &channels),
            );
        }
        tensors.insert(
            format!("{pre}.mlp.down_proj.weight"),
            take_cols(&load("mlp.down_proj.weight")?, 1, &channels, &chan_scale),
        );
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
        shapes.push(LayerShape {
            num_attention_heads: heads.len(),
            num_key_value_heads: kv_keep.len(),
            intermediate_size: channels.len(),
        });
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
    let mut config = cfg.clone();
    let first = shapes[0];
    if shapes.iter().all(|s| *s == first) {
        config.num_attention_heads = first.num_attention_heads;
        config.num_key_value_heads = first.num_key_value_heads;
        config.intermediate_size = first.intermediate_size;
        config.layer_shapes = None;
    } else {
        config.num_attention_heads = shapes
            .iter()
            .map(|s| s.num_attention_heads)
            .max()
            .unwrap_or(0);
        config.num_key_value_heads = shapes
            .iter()
            .map(|s| s.num_key_value_heads)
            .max()
            .unwrap_or(0);
        config.intermediate_size = shapes
            .iter()
            .map(|s| s.intermediate_size)
            .max()
            .unwrap_or(0);
        config.layer_shapes = Some(shapes);
    }
    config
        .validate()
        .map_err(|e| Error::Invalid(format!("the sliced model's config is invalid: {e}")))?;
    Ok(Sliced {
        config,
        tensors,
        alive,
    })
}
