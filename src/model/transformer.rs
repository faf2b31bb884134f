//! The decoder-only transformer: embeddings, layers, final norm, LM head; batched prefill and
//! incremental decode through a KV cache; optional pruning gates.

use burn::tensor::{backend::Backend, Int, Tensor};

use super::config::ModelConfig;
use super::layers::{rms_norm, Attention, Ffn, LayerKv, Linear};
use super::rope::Rope;
use crate::error::{Error, Result};

/// One pre-norm decoder layer: `x += attn(norm(x))`, then `x += ffn(norm(x))`.
#[derive(Debug, Clone)]
pub struct Layer<B: Backend> {
    /// RMSNorm weight `[hidden]` before attention (`input_layernorm`).
    pub attn_norm: Tensor<B, 1>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// RMSNorm weight `[hidden]` before the FFN (`post_attention_layernorm`).
    pub ffn_norm: Tensor<B, 1>,
    /// Feed-forward block.
    pub ffn: Ffn<B>,
}

/// Token embeddings. With tied embeddings only the `[hidden, vocab]` LM-head matrix is kept
/// and rows are gathered from its columns, so the largest matrix is stored once.
#[derive(Debug, Clone)]
pub enum Embedding<B: Backend> {
    /// Separate input embedding and LM head.
    Untied {
        /// Input embedding, `[vocab, hidden]`.
        embed: Tensor<B, 2>,
        /// LM head, `[hidden, vocab]`.
        lm_head: Linear<B>,
    },
    /// One matrix for both.
    Tied {
        /// LM head, `[hidden, vocab]`; column t is token t's embedding.
        lm_head: Linear<B>,
    },
}

/// A decoder-only transformer on backend `B`.
#[derive(Debug, Clone)]
pub struct Model<B: Backend> {
    /// The shape it was built from.
    pub config: ModelConfig,
    /// Token embedding and LM head.
    pub embedding: Embedding<B>,
    /// Decoder layers, first to last.
    pub layers: Vec<Layer<B>>,
    /// Final RMSNorm weight `[hidden]`.
    pub norm: Tensor<B, 1>,
    /// RoPE frequencies, shared by every layer.
    pub rope: Rope,
    /// Where the weights live.
    pub device: B::Device,
}

/// Per-layer pruning gates. A gate multiplies a component's contribution: `heads` (one value
/// per query head, or per KV group: expanded to its query heads), `channels` (FFN intermediate
/// channels; in a MoE layer, those of its shared expert), `experts` (`[experts, channels]` of
/// the routed experts of a MoE block).
#[derive(Debug, Clone)]
pub struct LayerGates<B: Backend> {
    /// `[n_heads]` or `[n_kv_heads]`; `None`: heads ungated.
    pub heads: Option<Tensor<B, 1>>,
    /// `[width]` of the dense FFN or the shared expert; `None`: ungated.
    pub channels: Option<Tensor<B, 1>>,
    /// `[experts, expert width]`; `None`: ungated.
    pub experts: Option<Tensor<B, 2>>,
}

impl<B: Backend> Default for LayerGates<B> {
    fn default() -> Self {
        Self {
            heads: None,
            channels: None,
            experts: None,
        }
    }
}

/// Pruning gates for a whole model (see [`LayerGates`]).
#[derive(Debug, Clone)]
pub struct Gates<B: Backend> {
    /// One entry per decoder layer.
    pub layers: Vec<LayerGates<B>>,
}

/// Keys and values of every layer for the tokens processed so far.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
        }
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map(|kv| kv.k.dims()[2])
            .unwrap_or(0)
    }
    /// Whether no position is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position (scoring, training).
    All,
    /// Only the last position (generation): skips the LM head elsewhere.
    Last,
}

impl<B: Backend> Model<B> {
    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn lm_head(&self) -> &Linear<B> {
        match &self.embedding {
            Embedding::Untied { lm_head, .. } | Embedding::Tied { lm_head } => lm_head,
        }
    }

    /// Embeddings `[batch, seq, hidden]` of `tokens: [batch, seq]`.
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = tokens.dims();
        let flat = tokens.reshape([b * s]);
        let rows = match &self.embedding {
            Embedding::Untied { embed, .. } => embed.clone().select(0, flat),
            Embedding::Tied { lm_head } => lm_head.w.clone().select(1, flat).transpose(),
        };
        rows.reshape([b, s, self.config.hidden_size])
    }

    /// Checks gates against the model's shapes, so a wrong gate vector is an error, not a panic
    /// in a broadcast.
    pub fn check_gates(&self, gates: &Gates<B>) -> Result<()> {
        if gates.layers.len() != self.layers.len() {
            return Err(Error::Invalid(format!(
                "gates cover {} layers, the model has {}",
                gates.layers.len(),
                self.layers.len()
            )));
        }
        for (i, (g, l)) in gates.layers.iter().zip(&self.layers).enumerate() {
            if let Some(h) = &g.heads {
                let n = h.dims()[0];
                if n != l.attn.n_heads && n != l.attn.n_kv_heads {
                    return Err(Error::Invalid(format!(
                        "layer {i}: head gate has {n} values, expected {} (query heads) or {} (KV groups)",
                        l.attn.n_heads, l.attn.n_kv_heads
                    )));
                }
            }
            let (width, what) = match &l.ffn {
                Ffn::Dense(m) => (m.width(), "the FFN"),
                Ffn::Moe(m) => (m.shared_width(), "the shared expert of this MoE layer"),
            };
            if let Some(c) = g.channels.as_ref().filter(|c| c.dims()[0] != width) {
                return Err(Error::Invalid(format!(
                    "layer {i}: channel gate has {} values, {what} has {width} channels",
                    c.dims()[0]
                )));
            }
            match (&l.ffn, &g.experts) {
                (Ffn::Moe(m), Some(e)) => {
                    let want = [m.experts.len(), m.expert_width()];
                    if e.dims() != want {
                        return Err(Error::Invalid(format!(
                            "layer {i}: expert gate has shape {:?}, expected {want:?}",
                            e.dims()
                        )));
                    }
                }
                (Ffn::Dense(_), Some(_)) => {
                    return Err(Error::Invalid(format!(
                        "layer {i}: expert gates given for a dense layer"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Final hidden states (after the last norm), `[batch, seq, hidden]`.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
        gates: Option<&Gates<B>>,
    ) -> Tensor<B, 3> {
        let [_, s] = tokens.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let (cos, sin) = self.rope.tables::<B>(start, s, &self.device);
        let eps = self.config.rms_norm_eps;
        let mut x = self.embed(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let g = gates.map(|g| &g.layers[i]);
            let head_gate = g.and_then(|g| g.heads.as_ref()).map(|h| {
                let (nh, nkv) = (layer.attn.n_heads, layer.attn.n_kv_heads);
                if h.dims()[0] == nh {
                    h.clone()
                } else {
                    h.clone()
                        .reshape([nkv, 1])
                        .expand([nkv, nh / nkv])
                        .reshape([nh])
                }
            });
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            let a = layer.attn.forward(
                rms_norm(x.clone(), &layer.attn_norm, eps),
                &cos,
                &sin,
                eps,
                slot,
                head_gate.as_ref(),
            );
            x = x + a;
            let h = rms_norm(x.clone(), &layer.ffn_norm, eps);
            let f = match &layer.ffn {
                Ffn::Dense(m) => m.forward(h, g.and_then(|g| g.channels.as_ref())),
                Ffn::Moe(m) => m.forward(
                    h,
                    g.and_then(|g| g.experts.as_ref()),
                    g.and_then(|g| g.channels.as_ref()),
                ),
            };
            x = x + f;
        }
        rms_norm(x, &self.norm, eps)
    }

    /// Logits `[batch, seq, vocab]` (or `[batch, 1, vocab]` with [`Logits::Last`]).
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
        gates: Option<&Gates<B>>,
        which: Logits,
    ) -> Tensor<B, 3> {
        let h = self.forward_hidden(tokens, cache, gates);
        let h = match which {
            Logits::All => h,
            Logits::Last => {
                let [b, s, d] = h.dims();
                h.slice([0..b, s - 1..s, 0..d])
            }
        };
        self.lm_head().forward(h)
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }
}
