//! Model configuration and the one table of per-architecture differences.

use serde::Serialize;

/// Supported decoder-only architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// LLaMA and its many derivatives (`llama`).
    Llama,
    /// Mistral (`mistral`): LLaMA's layout, optionally with sliding-window attention.
    Mistral,
    /// Qwen2 (`qwen2`): q/k/v biases.
    Qwen2,
    /// Qwen3 (`qwen3`): RMSNorm on q and k.
    Qwen3,
    /// Qwen2-MoE (`qwen2_moe`): routed experts plus a gated shared expert.
    Qwen2Moe,
    /// Qwen3-MoE (`qwen3_moe`): routed experts, RMSNorm on q and k.
    Qwen3Moe,
    /// Mixtral (`mixtral`): LLaMA with routed experts.
    Mixtral,
}

/// Tensor names of a routed-expert block, HF naming, relative to `model.layers.N.`.
#[derive(Debug, Clone, Copy)]
pub struct MoeNames {
    /// The expert block (`mlp`, `block_sparse_moe`).
    pub block: &'static str,
    /// The router's linear layer, inside the block.
    pub router: &'static str,
    /// An expert's gate projection, inside `{block}.experts.E.`.
    pub gate: &'static str,
    /// An expert's up projection, inside `{block}.experts.E.`.
    pub up: &'static str,
    /// An expert's down projection, inside `{block}.experts.E.`.
    pub down: &'static str,
}

/// Everything that differs between architectures, in one place.
#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    /// The architecture this row describes.
    pub arch: Arch,
    /// `model_type` in config.json.
    pub model_type: &'static str,
    /// `general.architecture` in GGUF.
    pub gguf_arch: &'static str,
    /// q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// RMSNorm over head_dim on q and k before RoPE.
    pub qk_norm: bool,
    /// Routed experts (None for dense FFNs).
    pub moe: Option<MoeNames>,
    /// Default of `norm_topk_prob` (renormalise the top-k router weights).
    pub norm_topk_default: bool,
    /// llama.cpp's converter permutes q/k rows for interleaved RoPE; we undo it on load.
    pub gguf_permutes_qk: bool,
}

const QWEN_MOE: MoeNames = MoeNames {
    block: "mlp",
    router: "gate",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

/// The table: one [`ArchSpec`] per [`Arch`].
pub const ARCHS: &[ArchSpec] = &[
    ArchSpec {
        arch: Arch::Llama,
        model_type: "llama",
        gguf_arch: "llama",
        qkv_bias: false,
        qk_norm: false,
        moe: None,
        norm_topk_default: false,
        gguf_permutes_qk: true,
    },
    ArchSpec {
        arch: Arch::Mistral,
        model_type: "mistral",
        gguf_arch: "llama",
        qkv_bias: false,
        qk_norm: false,
        moe: None,
        norm_topk_default: false,
        gguf_permutes_qk: true,
    },
    ArchSpec {
        arch: Arch::Qwen2,
        model_type: "qwen2",
        gguf_arch: "qwen2",
        qkv_bias: true,
        qk_norm: false,
        moe: None,
        norm_topk_default: false,
        gguf_permutes_qk: false,
    },
    ArchSpec {
        arch: Arch::Qwen3,
        model_type: "qwen3",
        gguf_arch: "qwen3",
        qkv_bias: false,
        qk_norm: true,
        moe: None,
        norm_topk_default: false,
        gguf_permutes_qk: false,
    },
    ArchSpec {
        arch: Arch::Qwen2Moe,
        model_type: "qwen2_moe",
        gguf_arch: "qwen2moe",
        qkv_bias: true,
        qk_norm: false,
        moe: Some(QWEN_MOE),
        norm_topk_default: false,
        gguf_permutes_qk: false,
    },
    ArchSpec {
        arch: Arch::Qwen3Moe,
        model_type: "qwen3_moe",
        gguf_arch: "qwen3moe",
        qkv_bias: false,
        qk_norm: true,
        moe: Some(QWEN_MOE),
        norm_topk_default: false,
        gguf_permutes_qk: false,
    },
    ArchSpec {
        arch: Arch::Mixtral,
        model_type: "mixtral",
        gguf_arch: "llama",
        qkv_bias: false,
        qk_norm: false,
        moe: Some(MoeNames {
            block: "block_sparse_moe",
            router: "gate",
            gate: "w1",
            up: "w3",
            down: "w2",
        }),
        // Mixtral's softmax over the selected logits equals renormalised top-k probabilities.
        norm_topk_default: true,
        gguf_permutes_qk: true,
    },
];

impl Arch {
    /// This architecture's row of [`ARCHS`].
    pub fn spec(self) -> &'static ArchSpec {
        ARCHS
            .iter()
            .find(|s| s.arch == self)
            .expect("every Arch is in ARCHS")
    }
    /// The architecture of a config.json `model_type`, if supported.
    pub fn from_model_type(t: &str) -> Option<Self> {
        ARCHS.iter().find(|s| s.model_type == t).map(|s| s.arch)
    }
    /// Every supported `model_type`, comma-separated (for error messages).
    pub fn known_model_types() -> String {
        ARCHS
            .iter()
            .map(|s| s.model_type)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How RoPE's inverse frequencies are rescaled for longer contexts (config.json
/// `rope_scaling`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// Llama 3.1's scaling: long wavelengths divided by `factor`, short ones kept, those
    /// between interpolated smoothly.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length, in tokens, the model was pre-trained for.
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as llama.cpp stores Llama-3 scaling (`rope_freqs.weight`).
    Factors {
        /// One divisor per rotated pair (`head_dim / 2` of them).
        factors: Vec<f64>,
    },
}

/// Routed-expert settings of a mixture-of-experts model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts each token is routed to (the router's top-k).
    pub num_experts_per_tok: usize,
    /// Width of every routed expert (before any per-layer pruning).
    pub moe_intermediate_size: usize,
    /// Renormalise the top-k router probabilities to sum to 1.
    pub norm_topk_prob: bool,
    /// Always-on shared expert (Qwen2-MoE), with a sigmoid gate.
    pub shared_expert_intermediate_size: Option<usize>,
    /// Layers whose FFN is a plain dense MLP.
    pub dense_layers: Vec<usize>,
}

/// The sizes of one decoder layer: uniform for a standard model, per layer after
/// non-uniform pruning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LayerShape {
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of the dense FFN (dense layers only).
    pub intermediate_size: usize,
    /// Width of every routed expert (MoE layers; 0 elsewhere).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moe_intermediate_size: usize,
    /// Width of the shared expert (MoE layers that have one; 0 elsewhere).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shared_expert_intermediate_size: usize,
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

/// A decoder-only transformer's shape and hyper-parameters, read from config.json or GGUF
/// metadata. Per-layer sizes are in [`layer`](Self::layer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Arch,
    /// Token ids: rows of the embedding and of `lm_head`.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the dense FFN (the largest over layers when `layer_shapes` is set).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer (the largest over layers when `layer_shapes` is set).
    pub num_attention_heads: usize,
    /// Key/value heads per layer (the largest over layers when `layer_shapes` is set).
    pub num_key_value_heads: usize,
    /// Width of one attention head (even, for RoPE).
    pub head_dim: usize,
    /// Epsilon added to the mean square in every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base: pair `i` of a head turns at `rope_theta^(-2i / head_dim)` radians per position.
    pub rope_theta: f64,
    /// RoPE frequency scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context, in tokens, that generation accepts.
    pub max_position_embeddings: usize,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q, k and v projections carry a bias (o never does).
    pub attention_bias: bool,
    /// Routed-expert settings (`None`: a dense model).
    pub moe: Option<MoeConfig>,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id, if any.
    pub eos_token_id: Option<u32>,
    /// Per-layer sizes when they differ between layers (ddp's non-uniform pruned models).
    pub layer_shapes: Option<Vec<LayerShape>>,
    /// Sliding-window attention: a query sees at most this many most recent positions
    /// (itself included) in the layers listed by `sliding_layers_from` onwards.
    pub sliding_window: Option<usize>,
    /// First layer that uses the sliding window (Qwen's `max_window_layers`; 0 for Mistral).
    pub sliding_layers_from: usize,
}

impl ModelConfig {
    /// The architecture's [`ArchSpec`].
    pub fn spec(&self) -> &'static ArchSpec {
        self.arch.spec()
    }

    /// The sizes of layer `i`: its entry of `layer_shapes`, or the model-wide sizes; expert
    /// widths are those of the model where a MoE layer records none, and 0 in dense layers.
    pub fn layer(&self, i: usize) -> LayerShape {
        let mut s = match &self.layer_shapes {
            Some(v) => v[i],
            None => LayerShape {
                num_attention_heads: self.num_attention_heads,
                num_key_value_heads: self.num_key_value_heads,
                intermediate_size: self.intermediate_size,
                moe_intermediate_size: 0,
                shared_expert_intermediate_size: 0,
            },
        };
        // Expert widths not recorded per layer are the model-wide ones.
        match &self.moe {
            Some(m) if self.is_moe_layer(i) => {
                if s.moe_intermediate_size == 0 {
                    s.moe_intermediate_size = m.moe_intermediate_size;
                    s.shared_expert_intermediate_size =
                        m.shared_expert_intermediate_size.unwrap_or(0);
                }
            }
            _ => {
                s.moe_intermediate_size = 0;
                s.shared_expert_intermediate_size = 0;
            }
        }
        s
    }

    /// The attention window of layer `i`, if it has one.
    pub fn window(&self, i: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| i >= self.sliding_layers_from)
    }

    /// Whether layer `i` uses routed experts.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| !m.dense_layers.contains(&i))
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<(), String> {
        let pos = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (k, v) in pos {
            if v == 0 {
                return Err(format!("{k} must be positive"));
            }
        }
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(format!(
                "num_hidden_layers {} is more than {MAX_LAYERS}: not a real model",
                self.num_hidden_layers
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        for (k, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{k} must be a positive number, not {v}"));
            }
        }
        if let Some(shapes) = &self.layer_shapes {
            if shapes.len() != self.num_hidden_layers {
                return Err(format!(
                    "ddp_layer_shapes has {} entries for {} layers",
                    shapes.len(),
                    self.num_hidden_layers
                ));
            }
        }
        for i in 0..self.num_hidden_layers {
            let l = self.layer(i);
            if l.num_key_value_heads > 0
                && !l.num_attention_heads.is_multiple_of(l.num_key_value_heads)
            {
                return Err(format!(
                    "layer {i}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    l.num_attention_heads, l.num_key_value_heads
                ));
            }
            if (l.num_attention_heads == 0) != (l.num_key_value_heads == 0) {
                return Err(format!(
                    "layer {i}: heads and KV heads must both be zero or both positive"
                ));
            }
        }
        if let Some(m) = &self.moe {
            if m.num_experts_per_tok == 0 || m.num_experts_per_tok > m.num_experts {
                return Err(format!(
                    "num_experts_per_tok {} must be in 1..={}",
                    m.num_experts_per_tok, m.num_experts
                ));
            }
        }
        if self.params_upper_bound() > MAX_PARAMS {
            return Err(format!(
                "the sizes (hidden_size {}, vocab_size {}, head_dim {}, ...) make more than 2^50 parameters: not a real model",
                self.hidden_size, self.vocab_size, self.head_dim
            ));
        }
        Ok(())
    }

    /// More than the model's parameter count, computed without overflow: what keeps the
    /// `usize` arithmetic of the accounting and the loader from overflowing on absurd sizes.
    fn params_upper_bound(&self) -> u128 {
        let prod = |xs: &[usize]| xs.iter().fold(1u128, |p, &x| p.saturating_mul(x as u128));
        let sum = |xs: &[u128]| xs.iter().fold(0u128, |s, &x| s.saturating_add(x));
        let (h, hd) = (self.hidden_size, self.head_dim);
        let experts = self.moe.as_ref().map_or(0, |m| m.num_experts);
        let mut total = prod(&[2, self.vocab_size, h]);
        for i in 0..self.num_hidden_layers {
            let l = self.layer(i);
            // q, k, v, o with biases; FFN widths; norms, routers and q/k norms.
            let heads = sum(&[
                prod(&[l.num_attention_heads]),
                prod(&[l.num_key_value_heads]),
            ]);
            let widths = sum(&[
                prod(&[l.intermediate_size]),
                prod(&[l.shared_expert_intermediate_size]),
                prod(&[experts, l.moe_intermediate_size]),
            ]);
            total = sum(&[
                total,
                prod(&[4, hd])
                    .saturating_mul(heads)
                    .saturating_mul(prod(&[h]) + 1),
                prod(&[3, h]).saturating_mul(widths),
                prod(&[4, h]).saturating_mul(prod(&[experts]) + prod(&[hd]) + 1),
            ]);
        }
        total
    }
}

/// More decoder layers than any real model has; a config beyond it is garbage, and refusing
/// it bounds the per-layer loops that run before the weights are read.
pub const MAX_LAYERS: usize = 1 << 14;

/// More parameters than any real model has (2^50, about 10^15).
const MAX_PARAMS: u128 = 1 << 50;
