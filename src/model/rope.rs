//! Rotary position embedding, Hugging Face `rotate_half` convention (dims i and i + d/2 rotate
//! together), with the `linear` and `llama3` frequency scalings.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::config::RopeScaling;

/// What llama3 scaling (`s`, a [`RopeScaling::Llama3`]) divides the inverse frequency `inv` by:
/// 1 for wavelengths below `original / high_freq_factor`, `factor` above
/// `original / low_freq_factor`, a smooth blend between (transformers' `_compute_llama3_parameters`;
/// llama.cpp stores these divisors as `rope_freqs.weight`). 1 for any other scaling.
pub fn llama3_divisor(s: &RopeScaling, inv: f64) -> f64 {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: old_ctx,
    } = *s
    else {
        return 1.0;
    };
    let wavelen = 2.0 * std::f64::consts::PI / inv;
    if wavelen < old_ctx / high {
        1.0
    } else if wavelen > old_ctx / low {
        factor
    } else {
        let smooth = (old_ctx / wavelen - low) / (high - low);
        1.0 / ((1.0 - smooth) / factor + smooth)
    }
}

/// A model's RoPE frequencies, from which [`tables`](Self::tables) makes cos/sin tables.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Inverse frequencies, one per rotated pair (head_dim / 2), in f32 as transformers computes them.
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Inverse frequencies `theta^(-2i / head_dim)` for `i < head_dim / 2`, rescaled by `scaling`.
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Self {
        let half = head_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (theta as f32).powf(exponent)
            })
            .collect();
        match scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                for f in &mut inv_freq {
                    *f /= *factor as f32;
                }
            }
            Some(RopeScaling::Factors { factors }) => {
                for (f, d) in inv_freq.iter_mut().zip(factors) {
                    *f /= *d as f32;
                }
            }
            Some(s @ RopeScaling::Llama3 { .. }) => {
                for f in &mut inv_freq {
                    let inv = *f as f64;
                    *f = (inv / llama3_divisor(s, inv)) as f32;
                }
            }
        }
        Self { inv_freq }
    }

    /// cos and sin tables `[len, head_dim]` for positions `start..start+len`.
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let half = self.inv_freq.len();
        let d = 2 * half;
        let mut cos = vec![0f32; len * d];
        let mut sin = vec![0f32; len * d];
        for p in 0..len {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                // The angle is an f32 product, like transformers' f32 matmul of positions and inv_freq.
                let angle = ((start + p) as f32 * f) as f64;
                let (s, c) = angle.sin_cos();
                cos[p * d + i] = c as f32;
                cos[p * d + i + half] = c as f32;
                sin[p * d + i] = s as f32;
                sin[p * d + i + half] = s as f32;
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [len, d]), device),
            Tensor::from_data(TensorData::new(sin, [len, d]), device),
        )
    }
}

/// Applies RoPE to `x: [batch, heads, seq, head_dim]` with tables `[seq, head_dim]`.
pub fn apply<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    if let Some(y) = crate::backend::rope::apply(&x, cos, sin) {
        return y;
    }
    let d = x.dims()[3];
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = cos.clone().unsqueeze::<4>();
    let sin = sin.clone().unsqueeze::<4>();
    x * cos + rotated * sin
}
