//! What a model and each prunable unit cost, in parameters. The one place this is computed.

use serde::Serialize;

use super::config::{LayerShape, ModelConfig};

/// Parameter counts of a model, by what they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ParamCounts {
    /// All parameters: `embedding + attention + ffn + other`.
    pub total: usize,
    /// Token embeddings plus an untied LM head.
    pub embedding: usize,
    /// q/k/v/o projections (and their biases): removable by head pruning.
    pub attention: usize,
    /// FFN, shared-expert and routed-expert projections: removable by channel pruning.
    pub ffn: usize,
    /// The routed experts' share of `ffn`.
    pub experts: usize,
    /// Norms, routers, shared-expert gates: kept whatever is pruned.
    pub other: usize,
}

impl ParamCounts {
    /// Parameters structured pruning can remove: `attention + ffn`.
    pub fn prunable(&self) -> usize {
        self.attention + self.ffn
    }
}

/// Parameters of one query head's share of q and o (plus bias), and of one KV head (k, v).
pub fn head_params(cfg: &ModelConfig) -> (usize, usize) {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let bias = usize::from(cfg.attention_bias);
    (2 * h * hd + bias * hd, 2 * (h * hd + bias * hd))
}

/// Parameters of one FFN channel (a row of gate and up, a column of down): the same for a
/// dense FFN, a shared expert and a routed expert.
pub fn channel_params(cfg: &ModelConfig) -> usize {
    3 * cfg.hidden_size
}

/// The prunable units of one layer, per gate family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerUnits {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Channels of the dense FFN, or of a MoE layer's shared expert (0 without one).
    pub channels: usize,
    /// Routed experts (0 in a dense layer), each `expert_width` channels wide.
    pub experts: usize,
    /// Channels per routed expert (`moe_intermediate_size`; 0 in a dense layer).
    pub expert_width: usize,
}

/// The prunable units of layer `i`.
pub fn units(cfg: &ModelConfig, i: usize) -> LayerUnits {
    let l = cfg.layer(i);
    let (channels, experts) = match &cfg.moe {
        Some(m) if cfg.is_moe_layer(i) => (l.shared_expert_intermediate_size, m.num_experts),
        _ => (l.intermediate_size, 0),
    };
    LayerUnits {
        heads: l.num_attention_heads,
        kv_heads: l.num_key_value_heads,
        channels,
        experts,
        // `cfg.layer` reports 0 outside MoE layers.
        expert_width: l.moe_intermediate_size,
    }
}

/// What survives of one layer's prunable units after pruning: the units whose mask value is
/// not 0, as slicing keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeptUnits {
    /// Query heads kept.
    pub heads: usize,
    /// KV heads kept: the KV groups that keep at least one query head.
    pub kv_heads: usize,
    /// Channels kept of the dense FFN, or of a MoE layer's shared expert.
    pub channels: usize,
    /// Routed-expert channels kept, all experts together.
    pub expert_channels: usize,
    /// Channels kept by the expert that keeps the most (0 in a dense layer).
    pub widest_expert: usize,
}

impl From<LayerUnits> for KeptUnits {
    /// An unpruned layer: every unit kept.
    fn from(u: LayerUnits) -> Self {
        Self {
            heads: u.heads,
            kv_heads: u.kv_heads,
            channels: u.channels,
            expert_channels: u.experts * u.expert_width,
            widest_expert: u.expert_width,
        }
    }
}

/// Prunable parameters (attention and FFN projections) a layer of `cfg` has with `k` units
/// kept, as slicing leaves them (no padding).
pub fn kept_params(cfg: &ModelConfig, k: &KeptUnits) -> usize {
    let (per_q, per_kv) = head_params(cfg);
    k.heads * per_q + k.kv_heads * per_kv + (k.channels + k.expert_channels) * channel_params(cfg)
}

/// Prunable parameters that pruning `cfg` to `kept` (one entry per layer) removes: the
/// model's [`prunable`](ParamCounts::prunable) count less what every layer keeps.
pub fn removed_params(cfg: &ModelConfig, kept: &[KeptUnits]) -> usize {
    count(cfg).prunable() - kept.iter().map(|k| kept_params(cfg, k)).sum::<usize>()
}

/// The sizes layer `i` of `cfg` has once sliced to `k`: no padding, except that every routed
/// expert of a MoE layer is as wide as the widest kept (at least 1 channel).
pub fn pruned_shape(cfg: &ModelConfig, i: usize, k: &KeptUnits) -> LayerShape {
    let mut shape = LayerShape {
        num_attention_heads: k.heads,
        num_key_value_heads: k.kv_heads,
        intermediate_size: k.channels,
        ..Default::default()
    };
    if units(cfg, i).experts > 0 {
        shape.intermediate_size = cfg.layer(i).intermediate_size;
        shape.moe_intermediate_size = k.widest_expert.max(1);
        shape.shared_expert_intermediate_size = k.channels;
    }
    shape
}

/// `cfg` with the per-layer shapes of [`pruned_shape`] for `kept` (one entry per layer): the
/// config FLOPs of the pruned model are counted on.
pub fn pruned_config(cfg: &ModelConfig, kept: &[KeptUnits]) -> ModelConfig {
    let mut pruned = cfg.clone();
    pruned.layer_shapes = Some(
        kept.iter()
            .enumerate()
            .map(|(i, k)| pruned_shape(cfg, i, k))
            .collect(),
    );
    pruned
}

/// Parameter counts of the whole model described by `cfg`.
pub fn count(cfg: &ModelConfig) -> ParamCounts {
    let (h, v, hd) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim);
    let mut c = ParamCounts {
        embedding: v * h * if cfg.tie_word_embeddings { 1 } else { 2 },
        other: h, // final norm
        ..Default::default()
    };
    let (per_q, per_kv) = head_params(cfg);
    for i in 0..cfg.num_hidden_layers {
        let l = cfg.layer(i);
        c.attention += l.num_attention_heads * per_q + l.num_key_value_heads * per_kv;
        c.other += 2 * h;
        if cfg.spec().qk_norm {
            c.other += 2 * hd;
        }
        let u = units(cfg, i);
        c.ffn += (u.channels + u.experts * u.expert_width) * channel_params(cfg);
        c.experts += u.experts * u.expert_width * channel_params(cfg);
        if u.experts > 0 {
            c.other += u.experts * h; // router
            if u.channels > 0 {
                c.other += h; // shared-expert gate
            }
        }
    }
    c.total = c.embedding + c.attention + c.ffn + c.other;
    c
}

/// Multiply-accumulate FLOPs (2 per MAC) of one token's forward pass that attends to `context`
/// earlier positions: every projection, the active experts, the LM head, and the attention
/// scores and weighted sum. Norms, RoPE and softmax are left out (they are O(hidden)).
pub fn flops_per_token(cfg: &ModelConfig, context: usize) -> f64 {
    let (h, v, hd) = (
        cfg.hidden_size as f64,
        cfg.vocab_size as f64,
        cfg.head_dim as f64,
    );
    let mut macs = h * v; // LM head
    for i in 0..cfg.num_hidden_layers {
        let l = cfg.layer(i);
        let (nh, nkv) = (l.num_attention_heads as f64, l.num_key_value_heads as f64);
        macs += h * hd * (2.0 * nh + 2.0 * nkv); // q, o; k, v
        let ctx = cfg.window(i).map_or(context, |w| context.min(w)) as f64;
        macs += 2.0 * nh * hd * ctx; // scores and weighted sum
        let u = units(cfg, i);
        macs += 3.0 * h * u.channels as f64; // dense FFN or shared expert
        if let Some(m) = cfg.moe.as_ref().filter(|_| u.experts > 0) {
            macs += h * u.experts as f64; // router
            macs += m.num_experts_per_tok as f64 * 3.0 * h * u.expert_width as f64;
        }
    }
    2.0 * macs
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// 2 dense layers: hidden 8, 4 query heads of width 2 in 2 KV groups, 16 FFN channels.
    /// One query head's q and o: 2 * 8 * 2 = 32; one KV head's k and v: 32; a channel: 24.
    pub(crate) fn dense() -> ModelConfig {
        let j = r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 2}"#;
        crate::io::hf_config::parse(j, "config.json".as_ref()).unwrap()
    }

    /// Layer 0: 2 routed experts 4 wide and a shared expert 6 wide; layer 1 dense (16).
    /// Qwen2-MoE has q/k/v biases: a query head costs 34, a KV head 36, a channel 24.
    fn moe() -> ModelConfig {
        let j = r#"{"model_type": "qwen2_moe", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 2, "num_experts": 2,
            "num_experts_per_tok": 1, "moe_intermediate_size": 4,
            "shared_expert_intermediate_size": 6, "mlp_only_layers": [1]}"#;
        crate::io::hf_config::parse(j, "config.json".as_ref()).unwrap()
    }

    fn unpruned(cfg: &ModelConfig) -> Vec<KeptUnits> {
        (0..cfg.num_hidden_layers)
            .map(|i| units(cfg, i).into())
            .collect()
    }

    #[test]
    fn dense_counts_by_hand() {
        let c = dense();
        assert_eq!(head_params(&c), (32, 32));
        let p = count(&c);
        // Per layer 4 * 32 + 2 * 32 = 192 attention, 16 * 24 = 384 FFN.
        assert_eq!((p.attention, p.ffn, p.experts), (384, 768, 0));
        assert_eq!(p.prunable(), 1152);
        // Untied embedding and LM head 2 * 10 * 8, norms 8 + 2 * 2 * 8.
        assert_eq!((p.embedding, p.other, p.total), (160, 40, 1352));
    }

    #[test]
    fn kept_and_removed_parameters_of_a_dense_mask() {
        let c = dense();
        let all = unpruned(&c);
        assert_eq!(removed_params(&c, &all), 0);
        // Layer 0 keeps one KV group (2 query heads) and half its channels.
        let half = KeptUnits {
            heads: 2,
            kv_heads: 1,
            channels: 8,
            ..Default::default()
        };
        assert_eq!(kept_params(&c, &half), 2 * 32 + 32 + 8 * 24);
        assert_eq!(kept_params(&c, &all[1]), 576);
        assert_eq!(removed_params(&c, &[half, all[1]]), 1152 - 288 - 576);
        let shape = pruned_shape(&c, 0, &half);
        assert_eq!(
            shape,
            LayerShape {
                num_attention_heads: 2,
                num_key_value_heads: 1,
                intermediate_size: 8,
                ..Default::default()
            }
        );
        let pruned = pruned_config(&c, &[half, all[1]]);
        assert_eq!(pruned.layer(0), shape);
        assert_eq!(pruned.layer(1), c.layer(1));
        assert!(flops_per_token(&pruned, 512) < flops_per_token(&c, 512));
    }

    #[test]
    fn kept_and_removed_parameters_of_a_moe_mask() {
        let c = moe();
        assert_eq!(head_params(&c), (34, 36));
        let p = count(&c);
        // Attention 2 * (4 * 34 + 2 * 36); FFN (6 + 2 * 4 + 16) * 24, of which 8 * 24 routed.
        assert_eq!((p.attention, p.ffn, p.experts), (416, 720, 192));
        let all = unpruned(&c);
        assert_eq!(removed_params(&c, &all), 0);
        assert_eq!(
            flops_per_token(&pruned_config(&c, &all), 512),
            flops_per_token(&c, 512)
        );
        // Layer 0 keeps 3 shared-expert channels and 2 + 1 routed ones.
        let k = KeptUnits {
            heads: 4,
            kv_heads: 2,
            channels: 3,
            expert_channels: 3,
            widest_expert: 2,
        };
        assert_eq!(kept_params(&c, &k), 4 * 34 + 2 * 36 + 6 * 24);
        assert_eq!(removed_params(&c, &[k, all[1]]), (3 + 5) * 24);
        let shape = pruned_shape(&c, 0, &k);
        assert_eq!(
            (
                shape.intermediate_size,
                shape.moe_intermediate_size,
                shape.shared_expert_intermediate_size
            ),
            (16, 2, 3)
        );
        // Experts never go narrower than one channel.
        let none = KeptUnits {
            expert_channels: 0,
            widest_expert: 0,
            ..k
        };
        assert_eq!(pruned_shape(&c, 0, &none).moe_intermediate_size, 1);
        // A dense layer of a MoE model has no expert widths.
        assert_eq!(pruned_shape(&c, 1, &all[1]).moe_intermediate_size, 0);
    }
}
