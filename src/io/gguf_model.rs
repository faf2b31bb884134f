//! A GGUF file seen as a model: [`ModelConfig`] from its metadata, and a [`WeightSource`] that
//! serves its tensors under Hugging Face names and layouts (dequantised, q/k rows put back in
//! `rotate_half` order, stacked experts split).

use std::collections::BTreeMap;
use std::path::Path;

use super::gguf::{GgufFile, TensorInfo, Value};
use super::quants;
use crate::model::weights::{summarize_dtypes, HostTensor, WeightSource};
use crate::error::{Error, Result};
use crate::model::config::{Arch, LayerShape, ModelConfig, MoeConfig, RopeScaling};

/// How one HF tensor is read from the GGUF.
#[derive(Debug, Clone)]
struct Entry {
    gguf: String,
    /// Index along the outermost dimension of a stacked-experts tensor.
    expert: Option<usize>,
    /// Undo llama.cpp's q/k permutation with this many heads.
    unpermute_heads: Option<usize>,
}

/// A GGUF model: the file, the config read from its metadata, and the map from Hugging Face
/// tensor names to GGUF tensors.
pub struct GgufModel {
    /// The open file.
    pub file: GgufFile,
    /// The model's shape and hyper-parameters, from the `{arch}.*` metadata.
    pub config: ModelConfig,
    map: BTreeMap<String, Entry>,
}

fn meta_usize(f: &GgufFile, key: &str) -> Result<usize> {
    let v = f
        .get(key)
        .ok_or_else(|| Error::bad_config(&f.path, key, "missing from the GGUF metadata"))?;
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| Error::bad_config(&f.path, key, format!("expected an integer, found {v:?}")))
}

fn meta_usize_or(f: &GgufFile, key: &str, default: usize) -> Result<usize> {
    if f.get(key).is_some() {
        meta_usize(f, key)
    } else {
        Ok(default)
    }
}

fn meta_f64_or(f: &GgufFile, key: &str, default: f64) -> Result<f64> {
    match f.get(key) {
        None => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| {
            Error::bad_config(&f.path, key, format!("expected a number, found {v:?}"))
        }),
    }
}

/// Permutes rows `[heads, 2, hd/2]` (llama.cpp) back to `[heads, hd/2, 2]`... i.e. HF row
/// `j * hd/2 + i` is GGUF row `2 i + j` within each head.
fn unpermute_rows(t: &mut HostTensor, heads: usize) {
    let rows = t.shape[0];
    let cols: usize = t.shape[1..].iter().product();
    let hd = rows / heads;
    let half = hd / 2;
    let src = t.data.clone();
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let dst_row = h * hd + j * half + i;
                let src_row = h * hd + 2 * i + j;
                t.data[dst_row * cols..(dst_row + 1) * cols]
                    .copy_from_slice(&src[src_row * cols..(src_row + 1) * cols]);
            }
        }
    }
}

impl GgufModel {
    /// Opens the file, reads its config and maps its tensors to Hugging Face names.
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = config_from_metadata(&file)?;
        let map = name_map(&file, &config)?;
        Ok(Self { file, config, map })
    }
}

fn config_from_metadata(f: &GgufFile) -> Result<ModelConfig> {
    let a = f
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_config(&f.path, "general.architecture", "missing"))?;
    let k = |s: &str| format!("{a}.{s}");
    let n_experts = meta_usize_or(f, &k("expert_count"), 0)?;
    let arch = match (a, n_experts > 0) {
        ("llama", false) => Arch::Llama,
        ("llama", true) => Arch::Mixtral,
        ("qwen2", _) => Arch::Qwen2,
        ("qwen3", _) => Arch::Qwen3,
        ("qwen2moe", _) => Arch::Qwen2Moe,
        ("qwen3moe", _) => Arch::Qwen3Moe,
        _ => {
            return Err(Error::bad_config(
                &f.path,
                "general.architecture",
                format!(
                    "{a:?} is not supported (supported: llama, qwen2, qwen3, qwen2moe, qwen3moe)"
                ),
            ))
        }
    };
    let spec = arch.spec();
    let hidden = meta_usize(f, &k("embedding_length"))?;
    let layers = meta_usize(f, &k("block_count"))?;
    let heads = meta_usize(f, &k("attention.head_count"))?;
    let kv = meta_usize_or(f, &k("attention.head_count_kv"), heads)?;
    let head_dim = meta_usize_or(f, &k("attention.key_length"), hidden / heads.max(1))?;
    // feed_forward_length is a scalar, or one value per layer in some files.
    let ffn_key = k("feed_forward_length");
    let (intermediate, per_layer_ffn) = match f.get(&ffn_key) {
        Some(Value::Array(a)) => {
            let v: Vec<usize> = a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as usize)
                .collect();
            (v.first().copied().unwrap_or(0), Some(v))
        }
        Some(_) => (meta_usize(f, &ffn_key)?, None),
        None if n_experts > 0 => (0, None),
        None => {
            return Err(Error::bad_config(
                &f.path,
                &ffn_key,
                "missing from the GGUF metadata",
            ))
        }
    };
    let vocab = match f.get(&k("vocab_size")) {
        Some(_) => meta_usize(f, &k("vocab_size"))?,
        None => match f.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(t) => t.len(),
            None => f
                .tensors
                .get("token_embd.weight")
                .map(|t| t.ne[1])
                .ok_or_else(|| {
                    Error::bad_config(&f.path, k("vocab_size"), "missing, and no token list")
                })?,
        },
    };
    let rope_scaling = if let Some(t) = f.tensors.get("rope_freqs.weight") {
        let (_, v) = f.dequantize(&t.name)?;
        Some(RopeScaling::Factors {
            factors: v.into_iter().map(|x| x as f64).collect(),
        })
    } else {
        match f.get(&k("rope.scaling.type")).and_then(Value::as_str) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: meta_f64_or(f, &k("rope.scaling.factor"), 1.0)?,
            }),
            Some(other) => {
                return Err(Error::bad_config(
                    &f.path,
                    k("rope.scaling.type"),
                    format!("{other:?} is not supported (expected none or linear)"),
                ))
            }
        }
    };
    let moe = (n_experts > 0).then(|| -> Result<MoeConfig> {
        let shared = meta_usize_or(f, &k("expert_shared_feed_forward_length"), 0)?;
        Ok(MoeConfig {
            num_experts: n_experts,
            num_experts_per_tok: meta_usize(f, &k("expert_used_count"))?,
            moe_intermediate_size: meta_usize_or(
                f,
                &k("expert_feed_forward_length"),
                intermediate,
            )?,
            norm_topk_prob: f
                .get(&k("expert_weights_norm"))
                .and_then(Value::as_bool)
                .unwrap_or(spec.norm_topk_default),
            shared_expert_intermediate_size: (shared > 0).then_some(shared),
            dense_layers: (0..layers)
                .filter(|i| {
                    !f.tensors
                        .contains_key(&format!("blk.{i}.ffn_gate_inp.weight"))
                })
                .collect(),
        })
    });
    let layer_shapes = per_layer_ffn
        .filter(|v| v.iter().any(|&x| x != v[0]))
        .map(|v| {
            v.into_iter()
                .map(|ff| LayerShape {
                    num_attention_heads: heads,
                    num_key_value_heads: kv,
                    intermediate_size: ff,
                    ..Default::default()
                })
                .collect()
        });
    let tok = |key: &str| f.get(key).and_then(Value::as_u64).map(|x| x as u32);
    let cfg = ModelConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        rms_norm_eps: meta_f64_or(f, &k("attention.layer_norm_rms_epsilon"), 1e-6)?,
        rope_theta: meta_f64_or(f, &k("rope.freq_base"), 10000.0)?,
        rope_scaling,
        max_position_embeddings: meta_usize_or(f, &k("context_length"), 2048)?,
        tie_word_embeddings: !f.tensors.contains_key("output.weight"),
        attention_bias: f.tensors.contains_key("blk.0.attn_q.bias"),
        moe: moe.transpose()?,
        bos_token_id: tok("tokenizer.ggml.bos_token_id"),
        eos_token_id: tok("tokenizer.ggml.eos_token_id"),
        layer_shapes,
        sliding_window: None,
        sliding_layers_from: 0,
    };
    cfg.validate()
        .map_err(|what| Error::bad_config(&f.path, "metadata", what))?;
    Ok(cfg)
}

fn name_map(f: &GgufFile, cfg: &ModelConfig) -> Result<BTreeMap<String, Entry>> {
    let spec = cfg.spec();
    let mut map = BTreeMap::new();
    let plain = |g: &str| Entry {
        gguf: g.to_string(),
        expert: None,
        unpermute_heads: None,
    };
    for name in &f.order {
        let mut add = |hf: String, e: Entry| {
            map.insert(hf, e);
        };
        match name.as_str() {
            "token_embd.weight" => add("model.embed_tokens.weight".into(), plain(name)),
            "output_norm.weight" => add("model.norm.weight".into(), plain(name)),
            "output.weight" => add("lm_head.weight".into(), plain(name)),
            "rope_freqs.weight" => {}
            _ => {
                let Some(rest) = name.strip_prefix("blk.") else {
                    continue;
                };
                let Some((idx, tail)) = rest.split_once('.') else {
                    continue;
                };
                let Ok(i) = idx.parse::<usize>() else {
                    continue;
                };
                let p = format!("model.layers.{i}");
                let shape = cfg.layer(i);
                let (base, suffix) = tail.rsplit_once('.').unwrap_or((tail, ""));
                let moe = spec.moe;
                let blk = moe.map(|m| m.block).unwrap_or("mlp");
                let hf_base: Option<String> = match base {
                    "attn_norm" => Some(format!("{p}.input_layernorm")),
                    "ffn_norm" => Some(format!("{p}.post_attention_layernorm")),
                    "attn_q" | "attn_k" => {
                        let which = &base[5..];
                        let heads = if which == "q" {
                            shape.num_attention_heads
                        } else {
                            shape.num_key_value_heads
                        };
                        add(
                            format!("{p}.self_attn.{which}_proj.{suffix}"),
                            Entry {
                                gguf: name.clone(),
                                expert: None,
                                unpermute_heads: spec.gguf_permutes_qk.then_some(heads),
                            },
                        );
                        None
                    }
                    "attn_v" => Some(format!("{p}.self_attn.v_proj")),
                    "attn_output" => Some(format!("{p}.self_attn.o_proj")),
                    "attn_q_norm" => Some(format!("{p}.self_attn.q_norm")),
                    "attn_k_norm" => Some(format!("{p}.self_attn.k_norm")),
                    "ffn_gate" | "ffn_up" | "ffn_down" => {
                        Some(format!("{p}.mlp.{}_proj", &base[4..]))
                    }
                    "ffn_gate_inp" => moe.map(|m| format!("{p}.{blk}.{}", m.router)),
                    "ffn_gate_inp_shexp" => Some(format!("{p}.mlp.shared_expert_gate")),
                    "ffn_gate_shexp" | "ffn_up_shexp" | "ffn_down_shexp" => Some(format!(
                        "{p}.mlp.shared_expert.{}_proj",
                        base.trim_start_matches("ffn_").trim_end_matches("_shexp")
                    )),
                    "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => {
                        if let Some(m) = moe {
                            let proj = match base {
                                "ffn_gate_exps" => m.gate,
                                "ffn_up_exps" => m.up,
                                _ => m.down,
                            };
                            let n = f.tensors[name].ne.last().copied().unwrap_or(0);
                            for e in 0..n {
                                add(
                                    format!("{p}.{blk}.experts.{e}.{proj}.{suffix}"),
                                    Entry {
                                        gguf: name.clone(),
                                        expert: Some(e),
                                        unpermute_heads: None,
                                    },
                                );
                            }
                        }
                        None
                    }
                    _ => None,
                };
                if let Some(b) = hf_base {
                    add(format!("{b}.{suffix}"), plain(name));
                }
            }
        }
    }
    // Older Mixtral GGUFs store experts one tensor each: blk.N.ffn_gate.E.weight.
    if let Some(m) = spec.moe {
        for name in &f.order {
            let parts: Vec<&str> = name.split('.').collect();
            if let ["blk", i, base @ ("ffn_gate" | "ffn_up" | "ffn_down"), e, "weight"] = parts[..]
            {
                if let Ok(e) = e.parse::<usize>() {
                    let proj = match base {
                        "ffn_gate" => m.gate,
                        "ffn_up" => m.up,
                        _ => m.down,
                    };
                    map.insert(
                        format!("model.layers.{i}.{}.experts.{e}.{proj}.weight", m.block),
                        plain(name),
                    );
                }
            }
        }
    }
    Ok(map)
}

impl GgufModel {
    fn info(&self, e: &Entry) -> &TensorInfo {
        &self.file.tensors[&e.gguf]
    }
}

impl WeightSource for GgufModel {
    fn origin(&self) -> &Path {
        &self.file.path
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let e = self.map.get(name)?;
        let s = self.info(e).shape();
        Some(if e.expert.is_some() {
            s[1..].to_vec()
        } else {
            s
        })
    }

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    fn dtype_summary(&self) -> String {
        summarize_dtypes(self.file.tensors.values().map(|t| t.ty.name()))
    }

    fn load(&self, name: &str) -> Result<HostTensor> {
        let e = self.map.get(name).ok_or_else(|| {
            Error::bad_tensor(&self.file.path, name, "missing (no GGUF tensor maps to it)")
        })?;
        let info = self.info(e);
        let raw = self.file.raw(info);
        let shape = self.shape(name).expect("mapped names have shapes");
        let numel: usize = shape.iter().product();
        let bytes = match e.expert {
            Some(x) => {
                let per = raw.len() / info.ne.last().copied().unwrap_or(1);
                &raw[x * per..(x + 1) * per]
            }
            None => raw,
        };
        let mut data = vec![0f32; numel];
        quants::dequantize(info.ty, bytes, &mut data);
        let mut t = HostTensor::new(shape, data);
        if let Some(heads) = e.unpermute_heads {
            if heads == 0 || !t.shape[0].is_multiple_of(2 * heads) {
                return Err(Error::bad_tensor(
                    &self.file.path,
                    &e.gguf,
                    format!(
                        "{} rows cannot be split into {heads} heads of even size",
                        t.shape[0]
                    ),
                ));
            }
            unpermute_rows(&mut t, heads);
        }
        Ok(t)
    }
}
