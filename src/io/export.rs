//! Writing a model as a Hugging Face directory: model.safetensors in a chosen dtype (sharded
//! above a size), config.json in transformers' format, the tokenizer files, generation_config.json
//! and a model card. Files are written under temporary names
//! and renamed, so a killed export never leaves a directory that looks complete.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::TensorView;
use serde_json::{json, Value};

pub use super::dtype::WeightDtype;
use super::hf_tokenizer;
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig, RopeScaling};
use crate::model::weights::{HostTensor, WeightSource};

/// Shard size above which weights are split (what transformers' save_pretrained uses).
pub const SHARD_BYTES: usize = 5 << 30;

fn architectures(arch: Arch) -> &'static str {
    match arch {
        Arch::Llama => "LlamaForCausalLM",
        Arch::Mistral => "MistralForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Qwen3 => "Qwen3ForCausalLM",
        Arch::Qwen2Moe => "Qwen2MoeForCausalLM",
        Arch::Qwen3Moe => "Qwen3MoeForCausalLM",
        Arch::Mixtral => "MixtralForCausalLM",
    }
}

/// config.json for `cfg`, readable by transformers (uniform shapes) and by ddp (any shapes).
pub fn config_json(cfg: &ModelConfig) -> Value {
    let spec = cfg.spec();
    let mut v = json!({
        "architectures": [architectures(cfg.arch)],
        "model_type": spec.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": false,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    v["rope_scaling"] = match &cfg.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({"rope_type": "linear", "factor": factor}),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                     "high_freq_factor": high_freq_factor,
                     "original_max_position_embeddings": original_max_position_embeddings}),
        // transformers has no per-frequency form; ddp reads it back from its own key.
        Some(RopeScaling::Factors { factors }) => {
            json!({"rope_type": "ddp_factors", "factors": factors})
        }
    };
    if let Some(m) = &cfg.moe {
        let o = v.as_object_mut().unwrap();
        let experts_key = if cfg.arch == Arch::Mixtral {
            "num_local_experts"
        } else {
            "num_experts"
        };
        o.insert(experts_key.into(), json!(m.num_experts));
        o.insert("num_experts_per_tok".into(), json!(m.num_experts_per_tok));
        o.insert(
            "moe_intermediate_size".into(),
            json!(m.moe_intermediate_size),
        );
        o.insert("norm_topk_prob".into(), json!(m.norm_topk_prob));
        o.insert("mlp_only_layers".into(), json!(m.dense_layers));
        o.insert("decoder_sparse_step".into(), json!(1));
        if let Some(s) = m.shared_expert_intermediate_size {
            o.insert("shared_expert_intermediate_size".into(), json!(s));
        }
    }
    if let Some(w) = cfg.sliding_window {
        v["sliding_window"] = json!(w);
        if !matches!(cfg.arch, Arch::Mistral | Arch::Mixtral) {
            v["use_sliding_window"] = json!(true);
            v["max_window_layers"] = json!(cfg.sliding_layers_from);
        }
    }
    if let Some(shapes) = &cfg.layer_shapes {
        v["ddp_layer_shapes"] = json!(shapes);
    }
    v
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("part");
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// What [`write_hf_dir_with`] writes besides the weights and config.
#[derive(Debug, Clone, Default)]
pub struct HfOptions {
    /// The dtype of the weights (tensors are given in f32 and cast when written).
    pub dtype: WeightDtype,
    /// Shard size in bytes of the written dtype; `None`: [`SHARD_BYTES`].
    pub shard_bytes: Option<usize>,
    /// The source's generation_config.json, carried over; `None`: one from the config's and
    /// tokenizer's special-token ids.
    pub generation_config: Option<Value>,
    /// config.json's `ddp` block (what the model was pruned from and how; transformers keeps
    /// unknown keys as attributes and ignores them).
    pub ddp: Option<Value>,
    /// README.md (the model card), if any.
    pub readme: Option<String>,
}

/// Writes `tensors` (HF names) in f32 with `cfg` and an optional tokenizer into `dir`.
pub fn write_hf_dir(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    write_hf_dir_with(dir, cfg, tensors, tokenizer, &HfOptions::default())
}

/// [`write_hf_dir`] with shards of at most `shard_bytes` (a tensor larger than that gets a
/// shard of its own).
pub fn write_hf_dir_sharded(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    tokenizer: Option<&Tokenizer>,
    shard_bytes: usize,
) -> Result<()> {
    let opts = HfOptions {
        shard_bytes: Some(shard_bytes),
        ..HfOptions::default()
    };
    write_hf_dir_with(dir, cfg, tensors, tokenizer, &opts)
}

/// Writes the directory transformers' `save_pretrained` would: the weights in `opts.dtype`
/// (model.safetensors, or shards and their index above the shard size), config.json, the
/// tokenizer's files (tokenizer.json, tokenizer_config.json, special_tokens_map.json),
/// generation_config.json, and README.md when `opts` has one.
pub fn write_hf_dir_with(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    tokenizer: Option<&Tokenizer>,
    opts: &HfOptions,
) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_weights(dir, tensors, opts)?;
    if let Some(t) = tokenizer {
        for (name, text) in hf_tokenizer::files(t, cfg).map_err(|e| Error::bad_file(dir, e))? {
            write_atomic(&dir.join(name), text.as_bytes())?;
        }
    }
    let gen = opts
        .generation_config
        .clone()
        .unwrap_or_else(|| hf_tokenizer::generation_config(cfg, tokenizer));
    write_atomic(&dir.join("generation_config.json"), pretty(&gen).as_bytes())?;
    if let Some(readme) = &opts.readme {
        write_atomic(&dir.join("README.md"), readme.as_bytes())?;
    }
    let mut config = config_json(cfg);
    config["torch_dtype"] = json!(opts.dtype.torch_name());
    if let Some(block) = &opts.ddp {
        config["ddp"] = block.clone();
    }
    // config.json last: its presence marks a complete directory.
    write_atomic(&dir.join("config.json"), pretty(&config).as_bytes())
}

/// JSON as transformers writes its files: indented, with a final newline.
pub(super) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n"
}

/// The safetensors file(s), packed greedily in name order into shards of at most the shard
/// size (counted in bytes of the written dtype), with an index when there are several.
fn write_weights(
    dir: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    opts: &HfOptions,
) -> Result<()> {
    let shard_bytes = opts.shard_bytes.unwrap_or(SHARD_BYTES);
    let width = opts.dtype.size();
    let mut shards: Vec<Vec<(&String, &HostTensor)>> = vec![vec![]];
    let mut acc = 0;
    for (name, t) in tensors {
        let b = t.numel() * width;
        if acc > 0 && acc + b > shard_bytes {
            shards.push(vec![]);
            acc = 0;
        }
        acc += b;
        shards.last_mut().unwrap().push((name, t));
    }
    let total: usize = tensors.values().map(|t| t.numel() * width).sum();
    let n_shards = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n_shards:05}.safetensors", i + 1)
        };
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = shard
            .iter()
            .map(|(n, t)| {
                let bytes = opts
                    .dtype
                    .encode(&t.data, &format!("tensor {n}"))
                    .map_err(|e| Error::bad_tensor(dir, n.as_str(), e))?;
                weight_map.insert((*n).clone(), json!(file));
                Ok(((*n).clone(), t.shape.clone(), bytes))
            })
            .collect::<Result<_>>()?;
        let views: Vec<(String, TensorView)> = encoded
            .iter()
            .map(|(n, shape, bytes)| {
                TensorView::new(opts.dtype.safetensors(), shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::bad_tensor(dir, n.as_str(), e.to_string()))
            })
            .collect::<Result<_>>()?;
        let meta = Some(
            [("format".to_string(), "pt".to_string())]
                .into_iter()
                .collect(),
        );
        let bytes = safetensors::serialize(views, meta)
            .map_err(|e| Error::bad_file(dir.join(&file), e.to_string()))?;
        write_atomic(&dir.join(&file), &bytes)?;
    }
    if n_shards > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(
            &dir.join("model.safetensors.index.json"),
            index.to_string().as_bytes(),
        )?;
    }
    Ok(())
}

/// Every tensor of a source, in HF form (e.g. to convert a GGUF into a HF directory).
pub fn read_all(w: &dyn WeightSource) -> Result<BTreeMap<String, HostTensor>> {
    w.names()
        .into_iter()
        .map(|n| w.load(&n).map(|t| (n, t)))
        .collect()
}
