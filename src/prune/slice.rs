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

use super::mask::{FinalMask, LayerMask};
use crate::error::{Error, Result};
use crate::model::accounting::{self, LayerUnits};
use crate::model::config::{Arch, LayerShape, ModelConfig, MoeNames};
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

/// Alive units of one layer, and what it has.
struct Plan<'a> {
    units: LayerUnits,
    /// The layer's gate values.
    mask: &'a LayerMask,
    /// Alive query heads of each KV group.
    groups: Vec<Vec<usize>>,
    /// Dense FFN channels, or the shared expert's.
    channels: Vec<usize>,
    /// Alive channels of each routed expert (empty in a dense layer).
    experts: Vec<Vec<usize>>,
}

impl Plan<'_> {
    fn is_moe(&self) -> bool {
        self.units.experts > 0
    }
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
    /// The sizes this layer needs on its own (no uniform shapes).
    fn own_sizes(&self) -> Sizes {
        Sizes {
            groups: self.live_groups(),
            per_group: self.per_group(),
            channels: if self.is_moe() {
                self.channels.len().max(1).min(self.units.channels)
            } else {
                self.channels.len()
            },
            expert: self.expert_width(),
        }
    }
    /// The dense (or shared-expert) channels kept, `n` of them, and their gate values.
    fn kept_channels(&self, n: usize) -> (Vec<usize>, Vec<f32>) {
        let channels = pick(&self.channels, 0..self.units.channels, n);
        let scale = channels.iter().map(|&c| self.mask.channels[c]).collect();
        (channels, scale)
    }
}

/// Checks layer `i`'s mask against the model and finds its alive units.
fn plan_layer<'a>(cfg: &ModelConfig, i: usize, lm: &'a LayerMask) -> Result<Plan<'a>> {
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
    Ok(Plan {
        units: u,
        mask: lm,
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
    })
}

/// How many units of each kind one sliced layer keeps.
#[derive(Clone, Copy)]
struct Sizes {
    /// KV groups.
    groups: usize,
    /// Query heads per KV group.
    per_group: usize,
    /// Dense FFN (or shared-expert) channels.
    channels: usize,
    /// Channels of every routed expert.
    expert: usize,
}

/// Uniform sizes: the largest any layer needs, dense FFNs and shared experts apart.
struct Widest {
    groups: usize,
    per_group: usize,
    dense: usize,
    shared: usize,
    expert: usize,
}

impl Widest {
    fn of(plans: &[Plan]) -> Self {
        let widest = |moe: bool, f: &dyn Fn(&Plan) -> usize| {
            plans
                .iter()
                .filter(|p| p.is_moe() == moe)
                .map(f)
                .max()
                .unwrap_or(0)
        };
        Self {
            groups: plans.iter().map(Plan::live_groups).max().unwrap_or(0),
            per_group: plans.iter().map(Plan::per_group).max().unwrap_or(0),
            dense: widest(false, &|p| p.channels.len()),
            shared: widest(true, &|p| p.channels.len().max(1)),
            expert: widest(true, &|p| p.expert_width()),
        }
    }
    /// The uniform sizes of layer `p`, channel counts rounded up to `channel_multiple` but no
    /// wider than the layer.
    fn sizes(&self, p: &Plan, channel_multiple: usize) -> Sizes {
        let round = |n: usize| {
            if channel_multiple > 1 {
                n.div_ceil(channel_multiple) * channel_multiple
            } else {
                n
            }
        };
        let channels = if p.is_moe() { self.shared } else { self.dense };
        Sizes {
            groups: self.groups,
            per_group: self.per_group,
            channels: round(channels).min(p.units.channels),
            expert: round(self.expert).min(p.units.expert_width),
        }
    }
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
    let plans = mask
        .layers
        .iter()
        .enumerate()
        .map(|(i, lm)| plan_layer(cfg, i, lm))
        .collect::<Result<Vec<_>>>()?;
    check_some_attention(&plans)?;
    let moe_layers: Vec<bool> = plans.iter().map(Plan::is_moe).collect();
    let widest = Widest::of(&plans);
    let mut tensors = BTreeMap::new();
    let mut shapes = vec![];
    for (i, p) in plans.iter().enumerate() {
        let sizes = if uniform {
            widest.sizes(p, channel_multiple)
        } else {
            p.own_sizes()
        };
        shapes.push(slice_layer(cfg, w, i, p, sizes, &mut tensors)?);
    }
    copy_globals(cfg, w, &mut tensors)?;
    let config = sliced_config(cfg, &shapes, &moe_layers);
    config
        .validate()
        .map_err(|e| Error::Invalid(format!("the sliced model's config is invalid: {e}")))?;
    Ok(Sliced { config, tensors })
}

/// Fails when the mask removes every attention head of every layer: a layer may lose its
/// attention (its shape records 0 heads), but a model with none has no valid config.
fn check_some_attention(plans: &[Plan]) -> Result<()> {
    let has_heads = plans.iter().any(|p| p.units.heads > 0);
    if !has_heads || plans.iter().any(|p| p.live_groups() > 0) {
        return Ok(());
    }
    let layers = match plans.len() {
        1 => "layer 0".to_string(),
        n => format!("layers 0-{}", n - 1),
    };
    Err(Error::Invalid(format!(
        "the mask removes every attention head of {layers} (every layer), and a model needs heads in at least one. \
         If the gates collapsed in training (anneal-train warned of an expected sparsity near 1), rerun anneal-train \
         with lower learning rates (lr_z, eta, lr_lambda, lr_lambda2); otherwise threshold with a lower sparsity \
         or rule = \"uniform\" (it keeps at least one open head per layer)"
    )))
}

/// The projection names of a dense FFN and of a shared expert.
const MLP_NAMES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Slices layer `i` (attention, FFN, norms) into `tensors` and returns its shape.
fn slice_layer(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    i: usize,
    p: &Plan,
    sizes: Sizes,
    tensors: &mut BTreeMap<String, HostTensor>,
) -> Result<LayerShape> {
    let pre = format!("model.layers.{i}");
    let (num_attention_heads, num_key_value_heads) =
        slice_attention(cfg, w, &pre, p, sizes, tensors)?;
    let mut shape = LayerShape {
        num_attention_heads,
        num_key_value_heads,
        intermediate_size: cfg.layer(i).intermediate_size,
        ..Default::default()
    };
    match cfg.spec().moe.filter(|_| p.is_moe()) {
        Some(nm) => {
            shape.shared_expert_intermediate_size = slice_moe(w, &pre, nm, p, sizes, tensors)?;
            shape.moe_intermediate_size = sizes.expert;
        }
        None => {
            let (channels, scale) = p.kept_channels(sizes.channels);
            slice_mlp(
                w,
                &format!("{pre}.mlp"),
                MLP_NAMES,
                &channels,
                &scale,
                tensors,
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
    Ok(shape)
}

/// Cuts the attention of the layer at `pre` down to `sizes.groups` KV groups of
/// `sizes.per_group` query heads each, folding the head gates into o_proj's columns; returns
/// the query and KV heads kept.
fn slice_attention(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    pre: &str,
    p: &Plan,
    sizes: Sizes,
    tensors: &mut BTreeMap<String, HostTensor>,
) -> Result<(usize, usize)> {
    let (u, hd) = (p.units, cfg.head_dim);
    let g = u.heads / u.kv_heads.max(1);
    let alive_groups: Vec<usize> = (0..p.groups.len())
        .filter(|&k| !p.groups[k].is_empty())
        .collect();
    let kv_keep = pick(&alive_groups, 0..u.kv_heads, sizes.groups);
    let mut heads = vec![];
    for &k in &kv_keep {
        heads.extend(pick(&p.groups[k], k * g..(k + 1) * g, sizes.per_group));
    }
    let head_scale: Vec<f32> = heads.iter().map(|&h| p.mask.heads[h]).collect();
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
    Ok((heads.len(), kv_keep.len()))
}

/// Slices the MoE block of the layer at `pre`: the router as is, every routed expert cut to
/// `sizes.expert` channels, the shared expert (if any) to `sizes.channels`, gates folded into
/// the down projections; returns the shared expert's width.
fn slice_moe(
    w: &dyn WeightSource,
    pre: &str,
    nm: MoeNames,
    p: &Plan,
    sizes: Sizes,
    tensors: &mut BTreeMap<String, HostTensor>,
) -> Result<usize> {
    let u = p.units;
    let b = format!("{pre}.{}", nm.block);
    let router = format!("{b}.{}.weight", nm.router);
    tensors.insert(router.clone(), w.load(&router)?);
    for (e, alive_e) in p.experts.iter().enumerate() {
        let keep = pick(alive_e, 0..u.expert_width, sizes.expert);
        let scale: Vec<f32> = keep
            .iter()
            .map(|&c| p.mask.experts[e * u.expert_width + c])
            .collect();
        slice_mlp(
            w,
            &format!("{b}.experts.{e}"),
            [nm.gate, nm.up, nm.down],
            &keep,
            &scale,
            tensors,
        )?;
    }
    let (channels, scale) = p.kept_channels(sizes.channels);
    if u.channels > 0 {
        slice_mlp(
            w,
            &format!("{b}.shared_expert"),
            MLP_NAMES,
            &channels,
            &scale,
            tensors,
        )?;
        let gate = format!("{b}.shared_expert_gate.weight");
        tensors.insert(gate.clone(), w.load(&gate)?);
    }
    Ok(channels.len())
}

/// Copies the embeddings, the final norm and (unless tied) the LM head.
fn copy_globals(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    tensors: &mut BTreeMap<String, HostTensor>,
) -> Result<()> {
    for n in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        if w.has(n) && !(n == "lm_head.weight" && cfg.tie_word_embeddings) {
            tensors.insert(n.to_string(), w.load(n)?);
        }
    }
    Ok(())
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
