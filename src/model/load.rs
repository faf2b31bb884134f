//! Builds a [`Model`] from a config and a [`WeightSource`] (HF names, `[out, in]` layout).

use burn::tensor::{backend::Backend, Tensor, TensorData};
use indicatif::ProgressBar;

use super::config::ModelConfig;
use super::layers::{Attention, Ffn, Linear, Mlp, Moe};
use super::rope::Rope;
use super::transformer::{Embedding, Layer, Model};
use super::weights::{HostTensor, WeightSource};
use crate::error::{Error, Result};

/// `[rows, cols]` -> `[cols, rows]`, blocked for cache locality.
pub fn transpose(t: &HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = vec![0f32; r * c];
    const B: usize = 32;
    for i0 in (0..r).step_by(B) {
        for j0 in (0..c).step_by(B) {
            for i in i0..(i0 + B).min(r) {
                for j in j0..(j0 + B).min(c) {
                    out[j * r + i] = t.data[i * c + j];
                }
            }
        }
    }
    HostTensor::new(vec![c, r], out)
}

struct Loader<'a, B: Backend> {
    w: &'a dyn WeightSource,
    device: &'a B::Device,
    bar: Option<&'a ProgressBar>,
}

impl<B: Backend> Loader<'_, B> {
    fn tick(&self) {
        if let Some(b) = self.bar {
            b.inc(1);
        }
    }
    fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        let t = self.w.load_shaped(name, &[len])?;
        self.tick();
        Ok(Tensor::from_data(
            TensorData::new(t.data, [len]),
            self.device,
        ))
    }
    /// A `[out, in]` matrix stored transposed for `x W`.
    fn linear(&self, prefix: &str, out: usize, inn: usize, bias: bool) -> Result<Linear<B>> {
        let t = self
            .w
            .load_shaped(&format!("{prefix}.weight"), &[out, inn])?;
        let t = transpose(&t);
        self.tick();
        let b = if bias {
            Some(self.vector(&format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear {
            w: Tensor::from_data(TensorData::new(t.data, [inn, out]), self.device),
            b,
            probe: None,
        })
    }
    fn mlp(&self, prefix: &str, names: [&str; 3], hidden: usize, width: usize) -> Result<Mlp<B>> {
        Ok(Mlp {
            gate: self.linear(&format!("{prefix}.{}", names[0]), width, hidden, false)?,
            up: self.linear(&format!("{prefix}.{}", names[1]), width, hidden, false)?,
            down: self.linear(&format!("{prefix}.{}", names[2]), hidden, width, false)?,
        })
    }
}

/// Number of tensors the loader will read (for a progress bar).
pub fn tensor_count(w: &dyn WeightSource) -> u64 {
    w.names().len() as u64
}

/// Validates `cfg` and builds the model from `w` on `device`, checking every tensor's shape
/// against the config; `bar`, if given, advances once per tensor read.
pub fn load_model<B: Backend>(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    device: &B::Device,
    bar: Option<&ProgressBar>,
) -> Result<Model<B>> {
    cfg.validate()
        .map_err(|what| Error::bad_config(w.origin(), "config", what))?;
    let l = Loader::<B> { w, device, bar };
    let spec = cfg.spec();
    let (h, v, hd) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim);
    let has_head = w.has("lm_head.weight");
    if !cfg.tie_word_embeddings && !has_head {
        return Err(Error::bad_tensor(
            w.origin(),
            "lm_head.weight",
            "missing, and the config says tie_word_embeddings = false",
        ));
    }
    let embedding = if cfg.tie_word_embeddings {
        Embedding::Tied {
            lm_head: l.linear("model.embed_tokens", v, h, false)?,
        }
    } else {
        let e = w.load_shaped("model.embed_tokens.weight", &[v, h])?;
        l.tick();
        Embedding::Untied {
            embed: Tensor::from_data(TensorData::new(e.data, [v, h]), device),
            lm_head: l.linear("lm_head", v, h, false)?,
        }
    };
    let mut layers = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let shape = cfg.layer(i);
        let (nh, nkv) = (shape.num_attention_heads, shape.num_key_value_heads);
        let bias = cfg.attention_bias;
        let attn = Attention {
            q: l.linear(&format!("{p}.self_attn.q_proj"), nh * hd, h, bias)?,
            k: l.linear(&format!("{p}.self_attn.k_proj"), nkv * hd, h, bias)?,
            v: l.linear(&format!("{p}.self_attn.v_proj"), nkv * hd, h, bias)?,
            o: l.linear(&format!("{p}.self_attn.o_proj"), h, nh * hd, false)?,
            q_norm: spec
                .qk_norm
                .then(|| l.vector(&format!("{p}.self_attn.q_norm.weight"), hd))
                .transpose()?,
            k_norm: spec
                .qk_norm
                .then(|| l.vector(&format!("{p}.self_attn.k_norm.weight"), hd))
                .transpose()?,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            window: cfg.window(i),
        };
        let ffn = match (&cfg.moe, spec.moe) {
            (Some(m), Some(names)) if cfg.is_moe_layer(i) => {
                let b = format!("{p}.{}", names.block);
                // Grown as the tensors are read: the config's count is not checked yet.
                let mut experts = Vec::new();
                for e in 0..m.num_experts {
                    experts.push(l.mlp(
                        &format!("{b}.experts.{e}"),
                        [names.gate, names.up, names.down],
                        h,
                        shape.moe_intermediate_size,
                    )?);
                }
                let shared = match m.shared_expert_intermediate_size {
                    Some(_) => Some((
                        l.mlp(
                            &format!("{b}.shared_expert"),
                            ["gate_proj", "up_proj", "down_proj"],
                            h,
                            shape.shared_expert_intermediate_size,
                        )?,
                        l.linear(&format!("{b}.shared_expert_gate"), 1, h, false)?,
                    )),
                    None => None,
                };
                Ffn::Moe(Moe {
                    router: l.linear(&format!("{b}.{}", names.router), m.num_experts, h, false)?,
                    experts,
                    top_k: m.num_experts_per_tok,
                    norm_topk_prob: m.norm_topk_prob,
                    shared,
                })
            }
            _ => Ffn::Dense(l.mlp(
                &format!("{p}.mlp"),
                ["gate_proj", "up_proj", "down_proj"],
                h,
                shape.intermediate_size,
            )?),
        };
        layers.push(Layer {
            attn_norm: l.vector(&format!("{p}.input_layernorm.weight"), h)?,
            attn,
            ffn_norm: l.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
            ffn,
        });
    }
    Ok(Model {
        config: cfg.clone(),
        embedding,
        layers,
        norm: l.vector("model.norm.weight", h)?,
        rope: Rope::new(hd, cfg.rope_theta, cfg.rope_scaling.as_ref()),
        device: device.clone(),
    })
}
