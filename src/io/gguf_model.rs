//! A GGUF file seen as a model: [`ModelConfig`] from its metadata, and a [`WeightSource`] that
//! serves its tensors under Hugging Face names and layouts (dequantised, q/k rows put back in
//! `rotate_half` order, stacked experts split).

use std::collections::BTreeMap;
use std::path::Path;

use super::gguf::{GgufFile, TensorInfo, Value};
use super::quants;
use crate::error::{Error, Result};
use crate::model::config::{
    Arch, LayerShape, ModelConfig, MoeConfig, MoeNames, RopeScaling, MAX_LAYERS,
};
use crate::model::weights::{summarize_dtypes, HostTensor, WeightSource};

/// llama.cpp's names of a layer's dense tensors (`blk.N.{gguf}.weight|bias`) and their Hugging
/// Face names (`model.layers.N.{hf}.weight|bias`), as llama.cpp's `tensor_mapping.py` pairs
/// them; the writer (`gguf_write`) uses the same table the other way.
pub(crate) const BLOCK_NAMES: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The model-wide tensors: GGUF name, Hugging Face name.
pub(crate) const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// How one HF tensor is read from the GGUF.
#[derive(Debug, Clone)]
struct Entry {
    gguf: String,
    /// Index along the outermost dimension of a stacked-experts tensor.
    expert: Option<usize>,
    /// Undo llama.cpp's q/k permutation with this many heads.
    unpermute_heads: Option<usize>,
    /// Not in the file: zeros of this shape (the attention of a layer without heads, which
    /// llama.cpp's `deci` stores nothing of and ddp's loader reads as empty matrices).
    zeros: Option<Vec<usize>>,
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

/// The `{arch}.*` metadata keys of one architecture, read with file/key/expectation errors.
struct ArchMeta<'a> {
    f: &'a GgufFile,
    /// `general.architecture`, the prefix of every key.
    arch: &'a str,
}

impl ArchMeta<'_> {
    fn key(&self, s: &str) -> String {
        format!("{}.{s}", self.arch)
    }
    fn get(&self, s: &str) -> Option<&Value> {
        self.f.get(&self.key(s))
    }
    fn usize(&self, s: &str) -> Result<usize> {
        meta_usize(self.f, &self.key(s))
    }
    fn usize_or(&self, s: &str, default: usize) -> Result<usize> {
        meta_usize_or(self.f, &self.key(s), default)
    }
    fn f64_or(&self, s: &str, default: f64) -> Result<f64> {
        meta_f64_or(self.f, &self.key(s), default)
    }
    fn bad(&self, s: &str, what: impl Into<String>) -> Error {
        Error::bad_config(&self.f.path, self.key(s), what)
    }
    /// A key that is one integer for every layer, or an array of one per layer.
    fn per_layer(&self, s: &str, layers: usize) -> Result<Vec<usize>> {
        let Some(Value::Array(a)) = self.get(s) else {
            return Ok(vec![self.usize(s)?; layers]);
        };
        if a.len() != layers {
            return Err(self.bad(
                s,
                format!("{} entries for block_count = {layers} layers", a.len()),
            ));
        }
        a.iter()
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    self.bad(s, format!("expected non-negative integers, found {v:?}"))
                })
            })
            .collect()
    }
}

fn config_from_metadata(f: &GgufFile) -> Result<ModelConfig> {
    let a = f
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_config(&f.path, "general.architecture", "missing"))?;
    let m = ArchMeta { f, arch: a };
    let n_experts = m.usize_or("expert_count", 0)?;
    let arch = arch_of(f, a, n_experts)?;
    let hidden = m.usize("embedding_length")?;
    let layers = m.usize("block_count")?;
    if layers > MAX_LAYERS {
        // Before the per-layer lists below are built.
        return Err(m.bad(
            "block_count",
            format!("{layers} is more than {MAX_LAYERS}: not a real model"),
        ));
    }
    // Scalars, or per-layer arrays (llama.cpp's `deci`, ddp's per-layer widths).
    let heads_of = m.per_layer("attention.head_count", layers)?;
    let kv_of = match m.get("attention.head_count_kv") {
        Some(_) => m.per_layer("attention.head_count_kv", layers)?,
        None => heads_of.clone(),
    };
    let ffn_of = match m.get("feed_forward_length") {
        Some(_) => m.per_layer("feed_forward_length", layers)?,
        // MoE models may omit it.
        None if n_experts > 0 => vec![0; layers],
        None => return Err(m.bad("feed_forward_length", "missing from the GGUF metadata")),
    };
    let widest = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
    let (heads, kv, intermediate) = (widest(&heads_of), widest(&kv_of), widest(&ffn_of));
    // llama.cpp's own default: the hidden size over layer 0's heads.
    let head_dim = m.usize_or(
        "attention.key_length",
        hidden / heads_of.first().map_or(1, |&h| h.max(1)),
    )?;
    let vocab = vocab_size(&m)?;
    let rope_scaling = gguf_rope_scaling(&m)?;
    // Its error, if any, is reported after those of the keys read in the struct below.
    let moe = (n_experts > 0).then(|| moe_config(&m, arch, n_experts, intermediate, layers));
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
        rms_norm_eps: m.f64_or("attention.layer_norm_rms_epsilon", 1e-6)?,
        rope_theta: m.f64_or("rope.freq_base", 10000.0)?,
        rope_scaling,
        max_position_embeddings: m.usize_or("context_length", 2048)?,
        tie_word_embeddings: !f.tensors.contains_key("output.weight"),
        attention_bias: f.tensors.contains_key("blk.0.attn_q.bias"),
        moe: moe.transpose()?,
        bos_token_id: tok("tokenizer.ggml.bos_token_id"),
        eos_token_id: tok("tokenizer.ggml.eos_token_id"),
        layer_shapes: per_layer_shapes(&heads_of, &kv_of, &ffn_of),
        sliding_window: None,
        sliding_layers_from: 0,
    };
    cfg.validate()
        .map_err(|what| Error::bad_config(&f.path, "metadata", what))?;
    Ok(cfg)
}

/// The [`Arch`] of `general.architecture` = `a` (llama with experts is Mixtral).
fn arch_of(f: &GgufFile, a: &str, n_experts: usize) -> Result<Arch> {
    Ok(match (a, n_experts > 0) {
        ("llama", false) => Arch::Llama,
        ("llama", true) => Arch::Mixtral,
        // NVIDIA's per-layer llama (Nemotron-NAS), which ddp writes for per-layer widths.
        ("deci", false) => Arch::Llama,
        ("qwen2", _) => Arch::Qwen2,
        ("qwen3", _) => Arch::Qwen3,
        ("qwen2moe", _) => Arch::Qwen2Moe,
        ("qwen3moe", _) => Arch::Qwen3Moe,
        _ => {
            return Err(Error::bad_config(
                &f.path,
                "general.architecture",
                format!(
                "{a:?} is not supported (supported: llama, deci, qwen2, qwen3, qwen2moe, qwen3moe)"
            ),
            ))
        }
    })
}

/// `{arch}.vocab_size`, else the length of the token list, else the embedding's rows.
fn vocab_size(m: &ArchMeta) -> Result<usize> {
    let f = m.f;
    if m.get("vocab_size").is_some() {
        return m.usize("vocab_size");
    }
    Ok(
        match f.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(t) => t.len(),
            None => f
                .tensors
                .get("token_embd.weight")
                .and_then(|t| t.ne.get(1).copied())
                .ok_or_else(|| m.bad("vocab_size", "missing, and no token list"))?,
        },
    )
}

/// Per-frequency factors from a `rope_freqs.weight` tensor, else `{arch}.rope.scaling.*`.
fn gguf_rope_scaling(m: &ArchMeta) -> Result<Option<RopeScaling>> {
    let f = m.f;
    if let Some(t) = f.tensors.get("rope_freqs.weight") {
        let (_, v) = f.dequantize(&t.name)?;
        return Ok(Some(RopeScaling::Factors {
            factors: v.into_iter().map(|x| x as f64).collect(),
        }));
    }
    Ok(match m.get("rope.scaling.type").and_then(Value::as_str) {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: m.f64_or("rope.scaling.factor", 1.0)?,
        }),
        Some(other) => {
            return Err(m.bad(
                "rope.scaling.type",
                format!("{other:?} is not supported (expected none or linear)"),
            ))
        }
    })
}

/// The routed-experts config of a model with `n_experts` experts; layers without a router
/// tensor are dense.
fn moe_config(
    m: &ArchMeta,
    arch: Arch,
    n_experts: usize,
    intermediate: usize,
    layers: usize,
) -> Result<MoeConfig> {
    let f = m.f;
    let shared = m.usize_or("expert_shared_feed_forward_length", 0)?;
    Ok(MoeConfig {
        num_experts: n_experts,
        num_experts_per_tok: m.usize("expert_used_count")?,
        moe_intermediate_size: m.usize_or("expert_feed_forward_length", intermediate)?,
        norm_topk_prob: m
            .get("expert_weights_norm")
            .and_then(Value::as_bool)
            .unwrap_or(arch.spec().norm_topk_default),
        shared_expert_intermediate_size: (shared > 0).then_some(shared),
        dense_layers: (0..layers)
            .filter(|i| {
                !f.tensors
                    .contains_key(&format!("blk.{i}.ffn_gate_inp.weight"))
            })
            .collect(),
    })
}

/// Layer shapes when heads, KV heads or FFN widths differ between layers.
fn per_layer_shapes(heads: &[usize], kv: &[usize], ffn: &[usize]) -> Option<Vec<LayerShape>> {
    let uniform = |v: &[usize]| v.iter().all(|&x| x == v[0]);
    if uniform(heads) && uniform(kv) && uniform(ffn) {
        return None;
    }
    let shape = |i: usize| LayerShape {
        num_attention_heads: heads[i],
        num_key_value_heads: kv[i],
        intermediate_size: ffn[i],
        ..Default::default()
    };
    Some((0..heads.len()).map(shape).collect())
}

impl Entry {
    /// The whole GGUF tensor `g`, as stored.
    fn plain(g: &str) -> Self {
        Entry {
            gguf: g.to_string(),
            expert: None,
            unpermute_heads: None,
            zeros: None,
        }
    }
}

/// Empty attention matrices (and a norm llama.cpp leaves out) for every layer without heads.
fn map_headless_layers(cfg: &ModelConfig, map: &mut BTreeMap<String, Entry>) {
    let (h, bias) = (cfg.hidden_size, cfg.attention_bias);
    for i in (0..cfg.num_hidden_layers).filter(|&i| cfg.layer(i).num_attention_heads == 0) {
        let p = format!("model.layers.{i}");
        let mut shapes = [
            ("self_attn.q_proj.weight", vec![0, h]),
            ("self_attn.k_proj.weight", vec![0, h]),
            ("self_attn.v_proj.weight", vec![0, h]),
            ("self_attn.o_proj.weight", vec![h, 0]),
            ("input_layernorm.weight", vec![h]),
        ]
        .map(|(n, s)| (n.to_string(), s))
        .to_vec();
        if bias {
            for n in ["q", "k", "v"].map(|x| format!("self_attn.{x}_proj.bias")) {
                shapes.push((n, vec![0]));
            }
        }
        for (n, shape) in shapes {
            map.entry(format!("{p}.{n}")).or_insert(Entry {
                zeros: Some(shape),
                ..Entry::plain("")
            });
        }
    }
}

fn name_map(f: &GgufFile, cfg: &ModelConfig) -> Result<BTreeMap<String, Entry>> {
    let mut map = BTreeMap::new();
    for name in &f.order {
        let global = GLOBAL_NAMES.iter().find(|(g, _)| g == name);
        let hf = match (name.as_str(), global) {
            (_, Some((_, hf))) => *hf,
            ("rope_freqs.weight", _) => continue,
            _ => {
                let block = name
                    .strip_prefix("blk.")
                    .and_then(|rest| rest.split_once('.'))
                    .and_then(|(idx, tail)| Some((idx.parse::<usize>().ok()?, tail)));
                // A block past the last layer is never read (and has no layer shape).
                if let Some((i, tail)) = block.filter(|&(i, _)| i < cfg.num_hidden_layers) {
                    map_block_tensor(f, cfg, name, i, tail, &mut map);
                }
                continue;
            }
        };
        map.insert(hf.into(), Entry::plain(name));
    }
    map_headless_layers(cfg, &mut map);
    // Older Mixtral GGUFs store experts one tensor each: blk.N.ffn_gate.E.weight.
    if let Some(m) = cfg.spec().moe {
        map_per_expert_tensors(f, m, &mut map);
    }
    Ok(map)
}

/// Maps `blk.{i}.{tail}` (GGUF tensor `name`) to its HF name(s).
fn map_block_tensor(
    f: &GgufFile,
    cfg: &ModelConfig,
    name: &str,
    i: usize,
    tail: &str,
    map: &mut BTreeMap<String, Entry>,
) {
    let spec = cfg.spec();
    let p = format!("model.layers.{i}");
    let shape = cfg.layer(i);
    let (base, suffix) = tail.rsplit_once('.').unwrap_or((tail, ""));
    let moe = spec.moe;
    let blk = moe.map(|m| m.block).unwrap_or("mlp");
    let dense = BLOCK_NAMES.iter().find(|(g, _)| *g == base);
    let hf_base: Option<String> = match base {
        "attn_q" | "attn_k" => {
            let which = &base[5..];
            let heads = if which == "q" {
                shape.num_attention_heads
            } else {
                shape.num_key_value_heads
            };
            let e = Entry {
                unpermute_heads: spec.gguf_permutes_qk.then_some(heads),
                ..Entry::plain(name)
            };
            map.insert(format!("{p}.self_attn.{which}_proj.{suffix}"), e);
            None
        }
        _ if dense.is_some() => dense.map(|(_, hf)| format!("{p}.{hf}")),
        "ffn_gate_inp" => moe.map(|m| format!("{p}.{blk}.{}", m.router)),
        "ffn_gate_inp_shexp" => Some(format!("{p}.mlp.shared_expert_gate")),
        "ffn_gate_shexp" | "ffn_up_shexp" | "ffn_down_shexp" => Some(format!(
            "{p}.mlp.shared_expert.{}_proj",
            base.trim_start_matches("ffn_").trim_end_matches("_shexp")
        )),
        "ffn_gate_exps" | "ffn_up_exps" | "ffn_down_exps" => {
            if let Some(m) = moe {
                let proj = expert_proj(m, base.trim_end_matches("_exps"));
                // The outermost dimension indexes the experts.
                // Beyond the config's experts a stacked tensor is never read.
                let n = f.tensors[name].ne.last().copied().unwrap_or(0);
                let n = n.min(cfg.moe.as_ref().map_or(0, |c| c.num_experts));
                for e in 0..n {
                    let entry = Entry {
                        expert: Some(e),
                        ..Entry::plain(name)
                    };
                    map.insert(format!("{p}.{blk}.experts.{e}.{proj}.{suffix}"), entry);
                }
            }
            None
        }
        _ => None,
    };
    if let Some(b) = hf_base {
        map.insert(format!("{b}.{suffix}"), Entry::plain(name));
    }
}

/// The HF name of an expert's projection for `ffn_gate`, `ffn_up` or (otherwise) `ffn_down`.
fn expert_proj(m: MoeNames, base: &str) -> &'static str {
    match base {
        "ffn_gate" => m.gate,
        "ffn_up" => m.up,
        _ => m.down,
    }
}

/// Maps one-tensor-per-expert weights, `blk.N.ffn_gate.E.weight`, to their HF names.
fn map_per_expert_tensors(f: &GgufFile, m: MoeNames, map: &mut BTreeMap<String, Entry>) {
    for name in &f.order {
        let parts: Vec<&str> = name.split('.').collect();
        if let ["blk", i, base @ ("ffn_gate" | "ffn_up" | "ffn_down"), e, "weight"] = parts[..] {
            if let Ok(e) = e.parse::<usize>() {
                map.insert(
                    format!(
                        "model.layers.{i}.{}.experts.{e}.{}.weight",
                        m.block,
                        expert_proj(m, base)
                    ),
                    Entry::plain(name),
                );
            }
        }
    }
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
        if let Some(z) = &e.zeros {
            return Some(z.clone());
        }
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
        if let Some(z) = &e.zeros {
            return Ok(HostTensor::new(z.clone(), vec![0.0; z.iter().product()]));
        }
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
