//! Writing a model as a Hugging Face directory: model.safetensors (sharded above a size),
//! config.json in transformers' format, tokenizer.json. Files are written under temporary names
//! and renamed, so a killed export never leaves a directory that looks complete.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

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

/// Writes `tensors` (HF names) with `cfg` and an optional tokenizer into `dir`.
pub fn write_hf_dir(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    write_hf_dir_sharded(dir, cfg, tensors, tokenizer, SHARD_BYTES)
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
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Greedy packing in name order.
    let mut shards: Vec<Vec<(&String, &HostTensor)>> = vec![vec![]];
    let mut acc = 0;
    for (name, t) in tensors {
        let b = t.numel() * 4;
        if acc > 0 && acc + b > shard_bytes {
            shards.push(vec![]);
            acc = 0;
        }
        acc += b;
        shards.last_mut().unwrap().push((name, t));
    }
    let total: usize = tensors.values().map(|t| t.numel() * 4).sum();
    let n_shards = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n_shards:05}.safetensors", i + 1)
        };
        let views: Vec<(String, TensorView)> = shard
            .iter()
            .map(|(n, t)| {
                let bytes: &[u8] = bytemuck::cast_slice(&t.data);
                let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                    .map_err(|e| Error::bad_tensor(dir, n.as_str(), e.to_string()))?;
                weight_map.insert((*n).clone(), json!(file));
                Ok(((*n).clone(), view))
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
    if let Some(t) = tokenizer {
        let p = dir.join("tokenizer.json");
        let s = t
            .inner
            .to_string(false)
            .map_err(|e| Error::bad_file(&p, e.to_string()))?;
        write_atomic(&p, s.as_bytes())?;
    }
    let cfg_text = serde_json::to_string_pretty(&config_json(cfg)).unwrap();
    // config.json last: its presence marks a complete directory.
    write_atomic(&dir.join("config.json"), cfg_text.as_bytes())
}

/// Every tensor of a source, in HF form (e.g. to convert a GGUF into a HF directory).
pub fn read_all(w: &dyn WeightSource) -> Result<BTreeMap<String, HostTensor>> {
    w.names()
        .into_iter()
        .map(|n| w.load(&n).map(|t| (n, t)))
        .collect()
}
