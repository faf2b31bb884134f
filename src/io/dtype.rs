//! The floating-point type weights are written in, and the one a source model is stored in
//! (what `slice dtype = "source"` writes).

use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::Dtype;

use super::gguf::GgufFile;
use super::quants::GgmlType;
use crate::error::{Error, Result};

/// A dtype for written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// IEEE float32 (4 bytes).
    #[default]
    F32,
    /// IEEE float16 (2 bytes).
    F16,
    /// bfloat16 (2 bytes).
    BF16,
}

impl WeightDtype {
    /// From the names a recipe or a command line uses: `f32`, `f16`, `bf16` (and the torch
    /// names `float32`, `float16`, `bfloat16`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "f32" | "float32" => Self::F32,
            "f16" | "float16" => Self::F16,
            "bf16" | "bfloat16" => Self::BF16,
            _ => return None,
        })
    }

    /// The short name (`f32`, `f16`, `bf16`).
    pub fn short(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    /// The torch name config.json's `torch_dtype` uses (`float32`, `float16`, `bfloat16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// The safetensors dtype.
    pub fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
        }
    }

    /// `data` as little-endian bytes of this dtype (round to nearest even). f16 holds at most
    /// 65504: a larger finite value is an error naming `what` (it would become infinity), not
    /// a silently broken model.
    pub fn encode(self, data: &[f32], what: &str) -> std::result::Result<Vec<u8>, String> {
        Ok(match self {
            Self::F32 => bytemuck::cast_slice(data).to_vec(),
            Self::BF16 => data
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            Self::F16 => {
                if let Some(x) = data
                    .iter()
                    .find(|x| x.is_finite() && x.abs() > f16::MAX.to_f32())
                {
                    return Err(format!(
                        "{what} holds {x}, beyond float16's range (65504): write it as bf16 or f32"
                    ));
                }
                data.iter()
                    .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                    .collect()
            }
        })
    }
}

/// The dtype a GGUF tensor type is written as by `dtype = "source"`: plain types as they are;
/// quantised blocks (Q4_1, Q8_0, k-quants...) as f16, because their values are an f16 scale
/// (and minimum) times small integers: f16's 11-bit significand keeps more of such a product
/// than bf16's 8 bits, and f16's range covers every value an f16 scale times a 4..8-bit
/// integer can take.
pub fn of_ggml(t: GgmlType) -> WeightDtype {
    match t {
        GgmlType::F32 => WeightDtype::F32,
        GgmlType::BF16 => WeightDtype::BF16,
        _ => WeightDtype::F16,
    }
}

/// The dtype a model is stored in: the dtype holding most of its elements among its
/// matrices (GGUF keeps norms in F32 whatever the matrices are). `path` is an HF directory
/// (its safetensors headers, else config.json's `torch_dtype`) or a GGUF file.
pub fn of_source(path: &Path) -> Result<WeightDtype> {
    let mut by_dtype: Vec<(WeightDtype, usize)> = vec![];
    let mut add = |d: WeightDtype, n: usize| match by_dtype.iter_mut().find(|(x, _)| *x == d) {
        Some((_, c)) => *c += n,
        None => by_dtype.push((d, n)),
    };
    if path.is_dir() {
        let w = super::safetensors::SafetensorsWeights::open_dir(path)?;
        for (dtype, shape) in w.dtypes() {
            let d = match dtype {
                Dtype::F16 => WeightDtype::F16,
                Dtype::BF16 => WeightDtype::BF16,
                _ => WeightDtype::F32,
            };
            if shape.len() >= 2 {
                add(d, shape.iter().product());
            }
        }
    } else {
        let f = GgufFile::open(path)?;
        for t in f.tensors.values().filter(|t| t.ne.len() >= 2) {
            add(of_ggml(t.ty), t.numel());
        }
    }
    if let Some(&(d, _)) = by_dtype.iter().max_by_key(|(_, n)| *n) {
        return Ok(d);
    }
    let cfg = path.join("config.json");
    let torch = std::fs::read_to_string(&cfg)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("torch_dtype")?.as_str().map(str::to_string));
    torch
        .as_deref()
        .and_then(WeightDtype::parse)
        .ok_or_else(|| {
            Error::bad_file(
                path,
                "no weight matrix and no torch_dtype: the model's dtype is unknown",
            )
        })
}
