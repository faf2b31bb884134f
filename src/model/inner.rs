//! The same model on the autodiff backend's inner backend, sharing its weights.
//!
//! Mask-only training runs the dense teacher every step, but nothing flows back through it:
//! on the inner backend its forward records no graph and takes the inner backend's fast
//! paths (the in-place CPU matmul). `Tensor::inner` hands over the stored weights without a
//! copy, so the teacher costs no second copy of the model.

use burn::tensor::{backend::AutodiffBackend, Tensor};

use super::layers::{Attention, Ffn, Linear, Mlp, Moe};
use super::transformer::{Embedding, Layer, Model};

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

fn t<B: AutodiffBackend, const D: usize>(x: &Tensor<B, D>) -> Tensor<Inner<B>, D> {
    x.clone().inner()
}

fn linear<B: AutodiffBackend>(l: &Linear<B>) -> Linear<Inner<B>> {
    Linear {
        w: t(&l.w),
        b: l.b.as_ref().map(t),
        // Probes collect calibration statistics; the teacher view never does.
        probe: None,
    }
}

fn mlp<B: AutodiffBackend>(m: &Mlp<B>) -> Mlp<Inner<B>> {
    Mlp {
        gate: linear(&m.gate),
        up: linear(&m.up),
        down: linear(&m.down),
    }
}

fn attention<B: AutodiffBackend>(a: &Attention<B>) -> Attention<Inner<B>> {
    Attention {
        q: linear(&a.q),
        k: linear(&a.k),
        v: linear(&a.v),
        o: linear(&a.o),
        q_norm: a.q_norm.as_ref().map(t),
        k_norm: a.k_norm.as_ref().map(t),
        n_heads: a.n_heads,
        n_kv_heads: a.n_kv_heads,
        head_dim: a.head_dim,
        window: a.window,
    }
}

fn ffn<B: AutodiffBackend>(f: &Ffn<B>) -> Ffn<Inner<B>> {
    match f {
        Ffn::Dense(m) => Ffn::Dense(mlp(m)),
        Ffn::Moe(m) => Ffn::Moe(Moe {
            router: linear(&m.router),
            experts: m.experts.iter().map(mlp).collect(),
            top_k: m.top_k,
            norm_topk_prob: m.norm_topk_prob,
            shared: m.shared.as_ref().map(|(e, g)| (mlp(e), linear(g))),
        }),
    }
}

impl<B: AutodiffBackend> Model<B> {
    /// This model on the inner backend, weights shared (no copy).
    pub fn inner(&self) -> Model<Inner<B>> {
        Model {
            config: self.config.clone(),
            embedding: match &self.embedding {
                Embedding::Untied { embed, lm_head } => Embedding::Untied {
                    embed: t(embed),
                    lm_head: linear(lm_head),
                },
                Embedding::Tied { lm_head } => Embedding::Tied {
                    lm_head: linear(lm_head),
                },
            },
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    attn_norm: t(&l.attn_norm),
                    attn: attention(&l.attn),
                    ffn_norm: t(&l.ffn_norm),
                    ffn: ffn(&l.ffn),
                })
                .collect(),
            norm: t(&self.norm),
            rope: self.rope.clone(),
            device: self.device.clone(),
        }
    }
}
