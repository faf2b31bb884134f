//! What a model and each prunable unit cost, in parameters. The one place this is computed.

use serde::Serialize;

use super::config::ModelConfig;

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
