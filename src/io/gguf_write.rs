//! Writing a model as a GGUF v3 file that llama.cpp loads: metadata and tensor names as
//! llama.cpp's `convert_hf_to_gguf.py` writes them, q/k rows permuted for its interleaved RoPE,
//! matrices as F32, F16, Q8_0 or Q4_0 (1-D tensors and norms stay F32, as the converter keeps
//! them). Uniform models keep their architecture (`llama`, `qwen2`, `qwen3`); per-layer widths
//! become llama.cpp's `deci` architecture, whose head counts and FFN widths are per-layer arrays.
//! The file is written under a temporary name and renamed, so a killed write leaves no
//! complete-looking file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::gguf::Value;
use super::gguf_model::{BLOCK_NAMES, GLOBAL_NAMES};
use super::gguf_vocab;
use super::quants::{self, GgmlType};
use super::tokenizer::Tokenizer;
use super::ModelFiles;
use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig, RopeScaling};
use crate::model::rope::llama3_divisor;
use crate::model::weights::HostTensor;

/// GGUF metadata in file order.
pub type Metadata = Vec<(String, Value)>;

/// The data section's alignment (GGUF's default, so `general.alignment` is not written).
const ALIGN: usize = 32;

/// The width written for a layer whose FFN was removed entirely: zero weights of a width that
/// every block type divides. llama.cpp's `deci` skips the whole rest of a layer with
/// `n_ff == 0` (its attention output included), and a GGUF tensor cannot have a zero dimension;
/// a zero FFN adds exactly nothing.
pub const EMPTY_FFN_WIDTH: usize = 32;

/// What goes into the file besides the config and the weights.
pub struct GgufOptions<'a> {
    /// Storage type of the matrices: F32, F16, Q8_0 or Q4_0.
    pub ty: GgmlType,
    /// `general.name`.
    pub name: String,
    /// The `tokenizer.*` keys ([`gguf_vocab::tokenizer_metadata`]).
    pub tokenizer: Metadata,
    /// When given, the written file's tokenizer must encode probe texts as this one does, or
    /// nothing is written.
    pub check_tokenizer: Option<&'a Tokenizer>,
    /// More keys (`ddp.*`), written last.
    pub extra: Metadata,
}

/// The storage types GGUF output writes, by the names users give them (`convert --type`,
/// export's `gguf_type`).
/// With each, the `general.file_type` (llama.cpp's `llama_ftype`) of a file whose matrices are
/// of that type.
pub const OUTPUT_TYPES: &[(&str, GgmlType, u32)] = &[
    ("f32", GgmlType::F32, 0),
    ("f16", GgmlType::F16, 1),
    ("q8_0", GgmlType::Q8_0, 7),
    ("q4_0", GgmlType::Q4_0, 2),
];

/// The names of [`OUTPUT_TYPES`], for parameter and flag checks.
pub const OUTPUT_TYPE_NAMES: &[&str] = &["f32", "f16", "q8_0", "q4_0"];

/// The output type called `name` (one of [`OUTPUT_TYPE_NAMES`]).
pub fn output_type(name: &str) -> Result<GgmlType> {
    OUTPUT_TYPES
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, t, _)| *t)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "GGUF output type {name:?} is not one of {}",
                OUTPUT_TYPE_NAMES.join(", ")
            ))
        })
}

/// The `general.file_type` (llama.cpp's `llama_ftype`) of a file whose matrices are `ty`.
fn file_type(ty: GgmlType) -> Result<u32> {
    match OUTPUT_TYPES.iter().find(|(_, t, _)| *t == ty) {
        Some((.., ftype)) => Ok(*ftype),
        None => Err(Error::Invalid(format!(
            "GGUF output as {} is not supported (supported: {})",
            ty.name(),
            OUTPUT_TYPE_NAMES.join(", ")
        ))),
    }
}

/// How the model is laid out in GGUF: llama.cpp's architecture name and whether q/k rows are
/// permuted (llama.cpp's llama and deci rotate adjacent pairs; HF checkpoints rotate halves).
struct Layout {
    arch: &'static str,
    permute_qk: bool,
    per_layer: bool,
}

/// The layout of `cfg`, or an error naming what llama.cpp cannot be given.
fn layout(cfg: &ModelConfig) -> Result<Layout> {
    let refuse = |what: String| Err(Error::Invalid(format!("cannot write a GGUF: {what}")));
    if cfg.moe.is_some() {
        return refuse(format!(
            "{} has routed experts, and GGUF output of MoE models is not implemented",
            cfg.spec().model_type
        ));
    }
    if let Some(w) = cfg.sliding_window {
        return refuse(format!(
            "the model uses sliding-window attention (window {w}), which llama.cpp's {} does not",
            cfg.spec().gguf_arch
        ));
    }
    let spec = cfg.spec();
    let q_rows = cfg.num_attention_heads * cfg.head_dim;
    // llama.cpp's qwen2 reads q and o as n_embd x n_embd, and every q bias as n_embd long.
    if (cfg.arch == Arch::Qwen2 || cfg.attention_bias) && q_rows != cfg.hidden_size {
        return refuse(format!(
            "llama.cpp's {} expects {} query rows (the hidden size), the model has {q_rows} ({} heads of {})",
            spec.gguf_arch, cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        ));
    }
    if cfg.layer_shapes.is_none() {
        return Ok(Layout {
            arch: spec.gguf_arch,
            permute_qk: spec.gguf_permutes_qk,
            per_layer: false,
        });
    }
    // llama.cpp's deci: a llama whose layers differ; no q/k norms, and a q bias of n_embd rows.
    if !matches!(cfg.arch, Arch::Llama | Arch::Mistral) || cfg.attention_bias {
        return refuse(format!(
            "per-layer widths are written as llama.cpp's `deci` architecture, a llama without \
             attention biases or q/k norms; {} is not one",
            spec.model_type
        ));
    }
    if cfg.layer(0).num_attention_heads == 0 {
        return refuse(
            "layer 0 has no attention heads, and llama.cpp's `deci` takes the head size from \
             layer 0 (its head count must be positive)"
                .into(),
        );
    }
    Ok(Layout {
        arch: "deci",
        permute_qk: true,
        per_layer: true,
    })
}

/// A layer's FFN width as written ([`EMPTY_FFN_WIDTH`] for a removed FFN).
fn ffn_width(cfg: &ModelConfig, i: usize) -> usize {
    match cfg.layer(i).intermediate_size {
        0 => EMPTY_FFN_WIDTH,
        w => w,
    }
}

/// The `{arch}.*` and `general.*` keys of `cfg`.
fn arch_metadata(cfg: &ModelConfig, l: &Layout, opts: &GgufOptions) -> Result<Metadata> {
    let a = l.arch;
    let u = |x: usize| Value::U32(x as u32);
    // Per-layer values as llama.cpp's converter writes them: arrays of INT32.
    let per_layer = |f: &dyn Fn(usize) -> usize| {
        Value::Array(
            (0..cfg.num_hidden_layers)
                .map(|i| Value::I32(f(i) as i32))
                .collect(),
        )
    };
    let (heads, kv, ffn) = if l.per_layer {
        (
            per_layer(&|i| cfg.layer(i).num_attention_heads),
            per_layer(&|i| cfg.layer(i).num_key_value_heads),
            per_layer(&|i| ffn_width(cfg, i)),
        )
    } else {
        (
            u(cfg.num_attention_heads),
            u(cfg.num_key_value_heads),
            u(ffn_width(cfg, 0)),
        )
    };
    let mut m: Metadata = vec![
        ("general.architecture".into(), Value::Str(a.into())),
        ("general.name".into(), Value::Str(opts.name.clone())),
        ("general.file_type".into(), Value::U32(file_type(opts.ty)?)),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    let arch_keys = [
        ("vocab_size", u(cfg.vocab_size)),
        ("context_length", u(cfg.max_position_embeddings)),
        ("embedding_length", u(cfg.hidden_size)),
        ("block_count", u(cfg.num_hidden_layers)),
        ("feed_forward_length", ffn),
        ("attention.head_count", heads),
        ("attention.head_count_kv", kv),
        // Always written: llama.cpp otherwise derives them from layer 0's head count.
        ("attention.key_length", u(cfg.head_dim)),
        ("attention.value_length", u(cfg.head_dim)),
        ("rope.dimension_count", u(cfg.head_dim)),
        ("rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    m.extend(arch_keys.map(|(k, v)| (format!("{a}.{k}"), v)));
    if let Some(RopeScaling::Linear { factor }) = &cfg.rope_scaling {
        m.push((
            format!("{a}.rope.scaling.type"),
            Value::Str("linear".into()),
        ));
        m.push((
            format!("{a}.rope.scaling.factor"),
            Value::F32(*factor as f32),
        ));
    }
    Ok(m)
}

/// Where a tensor's values come from.
enum Data<'a> {
    /// As stored.
    Plain(&'a HostTensor),
    /// Rows permuted for llama.cpp's RoPE, with this many heads.
    Permuted(&'a HostTensor, usize),
    /// Computed here (RoPE factors, an empty FFN's zeros).
    Owned(Vec<f32>),
}

/// One tensor to write.
struct Planned<'a> {
    name: String,
    /// Row-major (PyTorch) order.
    shape: Vec<usize>,
    ty: GgmlType,
    data: Data<'a>,
}

impl Planned<'_> {
    fn n_bytes(&self) -> usize {
        let n = self.shape.iter().product();
        self.ty
            .bytes_for(n)
            .expect("the type was chosen for whole rows of blocks")
    }

    /// The tensor's values in file order.
    fn values(&self) -> std::borrow::Cow<'_, [f32]> {
        match &self.data {
            Data::Plain(t) => std::borrow::Cow::Borrowed(&t.data),
            Data::Permuted(t, heads) => std::borrow::Cow::Owned(permute_rows(t, *heads)),
            Data::Owned(v) => std::borrow::Cow::Borrowed(v),
        }
    }
}

/// llama.cpp's q/k permutation (`LlamaModel.permute`): within each head, HF row `j * hd/2 + i`
/// (rotate-half pairs) becomes row `2 i + j` (adjacent pairs).
fn permute_rows(t: &HostTensor, heads: usize) -> Vec<f32> {
    let rows = t.shape[0];
    let cols: usize = t.shape[1..].iter().product();
    let (hd, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0f32; t.data.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * hd + j * half + i;
                let dst = h * hd + 2 * i + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The storage type of a tensor when matrices are `want`: 1-D tensors and norms F32; F16
/// where rows are not a whole number of quantisation blocks (as the converter falls back).
fn storage_type(name: &str, shape: &[usize], want: GgmlType) -> GgmlType {
    let row = shape.last().copied().unwrap_or(0);
    if shape.len() < 2 || name.ends_with("_norm.weight") || want == GgmlType::F32 {
        GgmlType::F32
    } else if want.bytes_for(row).is_none() {
        GgmlType::F16
    } else {
        want
    }
}

/// Plans every tensor: GGUF names and types, q/k permuted, removed FFNs as zeros; an HF tensor
/// that has no GGUF name is an error naming it.
fn plan<'a>(
    cfg: &ModelConfig,
    l: &Layout,
    tensors: &'a BTreeMap<String, HostTensor>,
    want: GgmlType,
) -> Result<Vec<Planned<'a>>> {
    let mut out = vec![];
    let mut used = std::collections::BTreeSet::new();
    let mut push = |name: String, shape: Vec<usize>, data: Data<'a>| {
        let ty = storage_type(&name, &shape, want);
        out.push(Planned {
            name,
            shape,
            ty,
            data,
        });
    };
    for (g, hf) in GLOBAL_NAMES {
        if let Some(t) = tensors.get(*hf) {
            used.insert(hf.to_string());
            push(g.to_string(), t.shape.clone(), Data::Plain(t));
        }
    }
    if let Some(f) = rope_factors(cfg) {
        push("rope_freqs.weight".into(), vec![f.len()], Data::Owned(f));
    }
    for i in 0..cfg.num_hidden_layers {
        let shape = cfg.layer(i);
        for (g, hf) in BLOCK_NAMES {
            for suffix in ["weight", "bias"] {
                let name = format!("model.layers.{i}.{hf}.{suffix}");
                let Some(t) = tensors.get(&name) else {
                    continue;
                };
                used.insert(name.clone());
                let gname = format!("blk.{i}.{g}.{suffix}");
                let attn = matches!(
                    *g,
                    "attn_norm" | "attn_q" | "attn_k" | "attn_v" | "attn_output"
                );
                if shape.num_attention_heads == 0 && attn {
                    // llama.cpp's deci reads no attention tensor of a layer without heads.
                    continue;
                }
                let ffn = matches!(*g, "ffn_gate" | "ffn_up" | "ffn_down");
                if shape.intermediate_size == 0 && ffn {
                    let h = cfg.hidden_size;
                    let s = if *g == "ffn_down" {
                        vec![h, EMPTY_FFN_WIDTH]
                    } else {
                        vec![EMPTY_FFN_WIDTH, h]
                    };
                    push(gname, s, Data::Owned(vec![0.0; h * EMPTY_FFN_WIDTH]));
                    continue;
                }
                let heads = match *g {
                    "attn_q" => shape.num_attention_heads,
                    "attn_k" => shape.num_key_value_heads,
                    _ => 0,
                };
                let data = if l.permute_qk && heads > 0 {
                    check_heads(&name, t, heads)?;
                    Data::Permuted(t, heads)
                } else {
                    Data::Plain(t)
                };
                push(gname, t.shape.clone(), data);
            }
        }
    }
    if let Some(n) = tensors.keys().find(|n| !used.contains(*n)) {
        return Err(Error::Invalid(format!(
            "cannot write a GGUF: tensor {n} has no llama.cpp name for {}",
            l.arch
        )));
    }
    if !cfg.tie_word_embeddings && !tensors.contains_key("lm_head.weight") {
        return Err(Error::Invalid(
            "cannot write a GGUF: lm_head.weight is missing and the embeddings are not tied".into(),
        ));
    }
    Ok(out)
}

/// Fails unless `t`'s rows split into `heads` heads of even size (the permutation's premise).
fn check_heads(name: &str, t: &HostTensor, heads: usize) -> Result<()> {
    if t.shape[0].is_multiple_of(2 * heads) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "cannot write a GGUF: {name} has {} rows, not {heads} heads of even size",
        t.shape[0]
    )))
}

/// The per-frequency RoPE factors llama.cpp reads from `rope_freqs.weight`: as stored, or
/// computed from llama3 scaling as the converter does.
fn rope_factors(cfg: &ModelConfig) -> Option<Vec<f32>> {
    match cfg.rope_scaling.as_ref()? {
        RopeScaling::Factors { factors } => Some(factors.iter().map(|&x| x as f32).collect()),
        s @ RopeScaling::Llama3 { .. } => {
            let dim = cfg.head_dim;
            let f = (0..dim / 2).map(|i| {
                let inv = 1.0 / cfg.rope_theta.powf((2 * i) as f64 / dim as f64);
                llama3_divisor(s, inv) as f32
            });
            Some(f.collect())
        }
        RopeScaling::Linear { .. } => None,
    }
}

/// Writes `tensors` (HF names, f32) with `cfg` as a GGUF file at `path`.
pub fn write_gguf(
    path: &Path,
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    opts: &GgufOptions,
) -> Result<()> {
    let l = layout(cfg)?;
    if opts.tokenizer.is_empty() {
        return Err(Error::Invalid(
            "cannot write a GGUF without a tokenizer: llama.cpp tokenizes the text itself".into(),
        ));
    }
    let mut meta = arch_metadata(cfg, &l, opts)?;
    meta.extend(opts.tokenizer.iter().cloned());
    meta.extend(opts.extra.iter().cloned());
    let planned = plan(cfg, &l, tensors, opts.ty)?;
    let tmp = part_path(path);
    let done = write_file(&tmp, &meta, &planned).and_then(|()| match opts.check_tokenizer {
        Some(t) => gguf_vocab::check_round_trip(&tmp, t),
        None => Ok(()),
    });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `OUT.gguf.part`, beside `OUT.gguf`.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// A writer that counts its bytes (for padding to the alignment).
struct Out {
    w: BufWriter<File>,
    pos: usize,
    path: PathBuf,
}

impl Out {
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.pos += b.len();
        self.w.write_all(b).map_err(|e| Error::io(&self.path, e))
    }
    fn u32(&mut self, x: u32) -> Result<()> {
        self.bytes(&x.to_le_bytes())
    }
    fn u64(&mut self, x: u64) -> Result<()> {
        self.bytes(&x.to_le_bytes())
    }
    fn string(&mut self, s: &str) -> Result<()> {
        self.u64(s.len() as u64)?;
        self.bytes(s.as_bytes())
    }
    fn pad(&mut self) -> Result<()> {
        let n = self.pos.next_multiple_of(ALIGN) - self.pos;
        self.bytes(&[0u8; ALIGN][..n])
    }
    fn value(&mut self, key: &str, v: &Value) -> Result<()> {
        match v {
            Value::U8(x) => self.bytes(&[*x]),
            Value::I8(x) => self.bytes(&x.to_le_bytes()),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.u32(*x),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::U64(x) => self.u64(*x),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[*x as u8]),
            Value::Str(s) => self.string(s),
            Value::Array(a) => {
                let ty = a.first().map_or(type_id(&Value::I32(0)), type_id);
                if ty == 9 || a.iter().any(|x| type_id(x) != ty) {
                    return Err(Error::Invalid(format!(
                        "cannot write a GGUF: metadata key {key} is an array of mixed or nested values"
                    )));
                }
                self.u32(ty)?;
                self.u64(a.len() as u64)?;
                a.iter().try_for_each(|x| self.value(key, x))
            }
        }
    }
}

/// The GGUF type id of a metadata value.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// Header, metadata, tensor index, then each tensor's data at an aligned offset.
fn write_file(path: &Path, meta: &Metadata, tensors: &[Planned]) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut o = Out {
        w: BufWriter::with_capacity(1 << 20, f),
        pos: 0,
        path: path.to_path_buf(),
    };
    o.bytes(b"GGUF")?;
    o.u32(3)?;
    o.u64(tensors.len() as u64)?;
    o.u64(meta.len() as u64)?;
    for (k, v) in meta {
        o.string(k)?;
        o.u32(type_id(v))?;
        o.value(k, v)?;
    }
    let mut offset = 0;
    for t in tensors {
        o.string(&t.name)?;
        o.u32(t.shape.len() as u32)?;
        for &d in t.shape.iter().rev() {
            o.u64(d as u64)?;
        }
        o.u32(t.ty.id())?;
        o.u64(offset as u64)?;
        offset += t.n_bytes().next_multiple_of(ALIGN);
    }
    o.pad()?;
    for t in tensors {
        let bytes = quants::quantize(t.ty, &t.values()).expect("types are F32/F16/Q8_0/Q4_0");
        o.bytes(&bytes)?;
        o.pad()?;
    }
    let f =
        o.w.into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Writes a model opened from `files` — with its own config and weights, or pruned ones
/// (`cfg`, `tensors`) — as a GGUF at `path`, the tokenizer and chat template carried over from
/// `files` and checked, `ddp.source` naming where it came from.
pub fn write_model_gguf(
    path: &Path,
    files: &ModelFiles,
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, HostTensor>,
    ty: GgmlType,
) -> Result<()> {
    let name = files
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pruned = cfg != &files.config;
    let opts = GgufOptions {
        ty,
        name,
        tokenizer: gguf_vocab::tokenizer_metadata(files)?,
        check_tokenizer: files.tokenizer.as_ref(),
        extra: vec![
            (
                "ddp.source".into(),
                Value::Str(files.path.display().to_string()),
            ),
            ("ddp.pruned".into(), Value::Bool(pruned)),
        ],
    };
    write_gguf(path, cfg, tensors, &opts)
}
