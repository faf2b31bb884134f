//! What a model and each prunable unit cost, in parameters. The one place this is computed.

use serde::Serialize;

use super::config::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ParamCounts {
    pub total: usize,
    /// Token embeddings plus an untied LM head.
    pub embedding: usize,
    /// q/k/v/o projections (and their biases): removable by head pruning.
    pub attention: usize,
    /// FFN / expert projections: removable by channel pruning.
    pub ffn: usize,
    /// Norms, routers, shared-expert gates: kept whatever is pruned.
    pub other: usize,
}

impl ParamCounts {
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

/// Parameters of one FFN channel (a row of gate and up, a column of down).
pub fn channel_params(cfg: &ModelConfig) -> usize {
    3 * cfg.hidden_size
}

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
        match &cfg.moe {
            Some(m) if cfg.is_moe_layer(i) => {
                c.ffn += m.num_experts * 3 * h * m.moe_intermediate_size;
                c.other += m.num_experts * h;
                if let Some(si) = m.shared_expert_intermediate_size {
                    c.ffn += 3 * h * si;
                    c.other += h;
                }
            }
            _ => c.ffn += l.intermediate_size * channel_params(cfg),
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
        match &cfg.moe {
            Some(m) if cfg.is_moe_layer(i) => {
                macs += h * m.num_experts as f64; // router
                macs += m.num_experts_per_tok as f64 * 3.0 * h * m.moe_intermediate_size as f64;
                if let Some(si) = m.shared_expert_intermediate_size {
                    macs += 3.0 * h * si as f64;
                }
            }
            _ => macs += 3.0 * h * l.intermediate_size as f64,
        }
    }
    2.0 * macs
}
