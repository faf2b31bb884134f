//! The weight-source port: the one interface the model loader reads weights through, whatever
//! the file format (`io` implements it for safetensors and GGUF).
//! Names and layouts are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, `[out, in]`,
//! q/k rows in rotate_half order): a GGUF source translates on the fly.

use std::path::Path;

use crate::error::{Error, Result};

/// A tensor in host memory, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements; `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` over `data` (their sizes must agree; checked in debug builds).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Read access to a model's tensors by Hugging Face name.
pub trait WeightSource: Send + Sync {
    /// The file or directory the weights come from (for messages).
    fn origin(&self) -> &Path;
    /// Shape of a tensor by HF name, `None` if absent.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Loads a tensor by HF name as f32.
    fn load(&self, name: &str) -> Result<HostTensor>;
    /// Every tensor name (HF naming).
    fn names(&self) -> Vec<String>;
    /// A short description of the stored dtypes, e.g. "F32" or "Q4_1 x210, F32 x61".
    fn dtype_summary(&self) -> String;

    /// Whether the tensor `name` exists.
    fn has(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    /// Loads a tensor and checks its shape, so a file that contradicts the config fails here
    /// with the tensor's name instead of deep inside a matmul.
    fn load_shaped(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let Some(shape) = self.shape(name) else {
            return Err(Error::bad_tensor(
                self.origin(),
                name,
                format!("missing (expected shape {expected:?})"),
            ));
        };
        if shape != expected {
            return Err(Error::bad_tensor(
                self.origin(),
                name,
                format!("shape {shape:?} contradicts the config (expected {expected:?})"),
            ));
        }
        self.load(name)
    }
}

/// Counts of each dtype name, rendered "A xN, B xM" (most frequent first).
pub fn summarize_dtypes<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    if counts.len() == 1 {
        return counts.keys().next().unwrap().to_string();
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
