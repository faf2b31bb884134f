//! Hugging Face `config.json` -> [`ModelConfig`].

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::{Arch, LayerShape, ModelConfig, MoeConfig, RopeScaling, MAX_LAYERS};

struct Json<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Json<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key).ok_or_else(|| {
            Error::bad_config(self.path, key, "missing (expected a positive integer)")
        })?;
        v.as_u64().map(|x| x as usize).ok_or_else(|| {
            Error::bad_config(
                self.path,
                key,
                format!("expected a non-negative integer, found {v}"),
            )
        })
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_some() {
            self.usize(key)
        } else {
            Ok(default)
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::bad_config(self.path, key, format!("expected a number, found {v}"))
            }),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::bad_config(self.path, key, format!("expected true or false, found {v}"))
            }),
        }
    }
    /// A token id that may be written as an integer or a list of integers (first one wins).
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let first = match v {
            Value::Array(a) => a.first(),
            v => Some(v),
        };
        first
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .map(|id| {
                id.ok_or_else(|| {
                    Error::bad_config(
                        self.path,
                        key,
                        format!("expected a token id (an integer, or a list of them), found {v}"),
                    )
                })
            })
            .transpose()
    }
    /// The object under `key`, if any.
    fn object(&self, key: &str) -> Result<Option<&Value>> {
        match self.get(key) {
            Some(v) if !v.is_object() => Err(Error::bad_config(
                self.path,
                key,
                format!("expected an object, found {v}"),
            )),
            v => Ok(v),
        }
    }
}

fn rope_scaling(j: &Json, obj: &Value, key: &str) -> Result<Option<RopeScaling>> {
    let o = Json {
        v: obj,
        path: j.path,
    };
    let ty = match o.get("rope_type").or_else(|| o.get("type")) {
        None => "default",
        Some(v) => v.as_str().ok_or_else(|| {
            Error::bad_config(
                j.path,
                format!("{key}.rope_type"),
                format!("expected a string, found {v}"),
            )
        })?,
    };
    let f = |k: &str| {
        o.get(k).and_then(Value::as_f64).ok_or_else(|| {
            Error::bad_config(
                j.path,
                format!("{key}.{k}"),
                format!("missing number for rope_type {ty:?}"),
            )
        })
    };
    Ok(match ty {
        "default" => None,
        "ddp_factors" => Some(RopeScaling::Factors {
            factors: o
                .get("factors")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .ok_or_else(|| {
                    Error::bad_config(
                        j.path,
                        format!("{key}.factors"),
                        "expected a list of numbers",
                    )
                })?,
        }),
        "linear" => Some(RopeScaling::Linear {
            factor: f("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")?,
        }),
        other => {
            return Err(Error::bad_config(
                j.path,
                format!("{key}.rope_type"),
                format!("{other:?} is not supported (expected default, linear or llama3)"),
            ))
        }
    })
}

/// Parses a config.json text (path used in messages only).
pub fn parse(text: &str, path: &Path) -> Result<ModelConfig> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
    let j = Json { v: &v, path };
    let arch = arch_of(&j)?;
    let spec = arch.spec();
    let hidden_size = j.usize("hidden_size")?;
    let num_attention_heads = j.usize("num_attention_heads")?;
    let head_dim = match j.get("head_dim") {
        Some(_) => j.usize("head_dim")?,
        None if num_attention_heads > 0 => hidden_size / num_attention_heads,
        None => 0,
    };
    let (rope_theta, rope_scaling) = rope(&j)?;
    // MoE models may leave the dense width out; a dense model cannot.
    let intermediate_size = match spec.moe {
        Some(_) => j.usize_or("intermediate_size", 0)?,
        None => j.usize("intermediate_size")?,
    };
    let num_hidden_layers = layer_count(&j)?;
    unsupported_features(&j)?;
    let moe = match spec.moe {
        Some(_) => Some(moe_config(&j, arch, intermediate_size, num_hidden_layers)?),
        None => None,
    };
    let layer_shapes = ddp_layer_shapes(&j)?;
    let (sliding_window, sliding_layers_from) = sliding_window(&j, arch)?;
    let cfg = ModelConfig {
        arch,
        vocab_size: j.usize("vocab_size")?,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads: j.usize_or("num_key_value_heads", num_attention_heads)?,
        head_dim,
        rms_norm_eps: j.f64_or("rms_norm_eps", 1e-6)?,
        rope_theta,
        rope_scaling,
        max_position_embeddings: j.usize_or("max_position_embeddings", 2048)?,
        tie_word_embeddings: j.bool_or("tie_word_embeddings", false)?,
        attention_bias: j.bool_or("attention_bias", spec.qkv_bias)?,
        moe,
        bos_token_id: j.token_id("bos_token_id")?,
        eos_token_id: j.token_id("eos_token_id")?,
        layer_shapes,
        sliding_window,
        sliding_layers_from,
    };
    cfg.validate()
        .map_err(|what| Error::bad_config(path, "config", what))?;
    Ok(cfg)
}

/// `num_hidden_layers`, refused when absurd before any per-layer list is built from it.
fn layer_count(j: &Json) -> Result<usize> {
    let n = j.usize("num_hidden_layers")?;
    if n > MAX_LAYERS {
        return Err(Error::bad_config(
            j.path,
            "num_hidden_layers",
            format!("{n} is more than {MAX_LAYERS}: not a real model"),
        ));
    }
    Ok(n)
}

/// Refuses what the forward pass does not implement (every supported architecture uses SiLU
/// and bias-free MLPs), rather than computing something else silently.
fn unsupported_features(j: &Json) -> Result<()> {
    if let Some(act) = j.get("hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(Error::bad_config(
                j.path,
                "hidden_act",
                format!("{act} is not supported (expected \"silu\")"),
            ));
        }
    }
    if j.bool_or("mlp_bias", false)? {
        return Err(Error::bad_config(
            j.path,
            "mlp_bias",
            "true is not supported (MLP projections without bias only)",
        ));
    }
    Ok(())
}

/// The [`Arch`] of `model_type`.
fn arch_of(j: &Json) -> Result<Arch> {
    let model_type = j.get("model_type").and_then(Value::as_str).ok_or_else(|| {
        Error::bad_config(j.path, "model_type", "missing (expected e.g. \"llama\")")
    })?;
    Arch::from_model_type(model_type).ok_or_else(|| {
        Error::bad_config(
            j.path,
            "model_type",
            format!(
                "{model_type:?} is not supported (supported: {})",
                Arch::known_model_types()
            ),
        )
    })
}

/// RoPE theta and scaling. transformers 5 keeps them in `rope_parameters`; 4.x in
/// `rope_theta`/`rope_scaling`.
fn rope(j: &Json) -> Result<(f64, Option<RopeScaling>)> {
    Ok(match j.object("rope_parameters")? {
        Some(p) => {
            let pj = Json { v: p, path: j.path };
            (
                pj.f64_or("rope_theta", 10000.0)?,
                rope_scaling(j, p, "rope_parameters")?,
            )
        }
        None => (
            j.f64_or("rope_theta", 10000.0)?,
            match j.object("rope_scaling")? {
                Some(s) => rope_scaling(j, s, "rope_scaling")?,
                None => None,
            },
        ),
    })
}

/// The routed-experts config of a MoE architecture. Dense layers are those in
/// `mlp_only_layers` and those off the `decoder_sparse_step` grid.
fn moe_config(
    j: &Json,
    arch: Arch,
    intermediate_size: usize,
    num_hidden_layers: usize,
) -> Result<MoeConfig> {
    let num_experts = match j.get("num_local_experts") {
        Some(_) => j.usize("num_local_experts")?,
        None => j.usize("num_experts")?,
    };
    let step = j.usize_or("decoder_sparse_step", 1)?.max(1);
    let listed = match j.get("mlp_only_layers") {
        None => Some(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect(),
        Some(_) => None,
    };
    let mut dense_layers = listed.ok_or_else(|| {
        Error::bad_config(
            j.path,
            "mlp_only_layers",
            "expected a list of layer indices",
        )
    })?;
    dense_layers.extend((0..num_hidden_layers).filter(|i| (i + 1) % step != 0));
    dense_layers.sort_unstable();
    dense_layers.dedup();
    // Indices past the last layer mean nothing (and would slow every layer lookup).
    dense_layers.retain(|&l| l < num_hidden_layers);
    let shared = j.usize_or("shared_expert_intermediate_size", 0)?;
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok: j.usize("num_experts_per_tok")?,
        moe_intermediate_size: j.usize_or("moe_intermediate_size", intermediate_size)?,
        norm_topk_prob: j.bool_or("norm_topk_prob", arch.spec().norm_topk_default)?,
        shared_expert_intermediate_size: (shared > 0).then_some(shared),
        dense_layers,
    })
}

/// Per-layer shapes of a pruned model (`ddp_layer_shapes`, written by this crate).
fn ddp_layer_shapes(j: &Json) -> Result<Option<Vec<LayerShape>>> {
    j.get("ddp_layer_shapes")
        .map(|s| {
            serde_json::from_value::<Vec<LayerShape>>(s.clone()).map_err(|e| {
                Error::bad_config(
                    j.path,
                    "ddp_layer_shapes",
                    format!("expected a list of layer shapes: {e}"),
                )
            })
        })
        .transpose()
}

/// The sliding window and the first layer it applies to. Mistral/Mixtral: `sliding_window`
/// applies to every layer when set. Qwen: only with `use_sliding_window`, from layer
/// `max_window_layers` on.
fn sliding_window(j: &Json, arch: Arch) -> Result<(Option<usize>, usize)> {
    Ok(match arch {
        Arch::Mistral | Arch::Mixtral => (
            j.get("sliding_window")
                .map(|_| j.usize("sliding_window"))
                .transpose()?,
            0,
        ),
        _ if j.bool_or("use_sliding_window", false)? => (
            Some(j.usize("sliding_window")?),
            j.usize_or("max_window_layers", 0)?,
        ),
        _ => (None, 0),
    })
}

/// Reads and parses a `config.json` file.
pub fn load(path: &Path) -> Result<ModelConfig> {
    super::regular_file(path, super::MODEL_FILE)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, path)
}
