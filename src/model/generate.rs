//! Text generation: prefill the prompt once, then decode token by token through the KV cache.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::transformer::{Gates, Logits, Model};
use crate::error::{Error, Result};

/// How the next token is picked from the logits (default: greedy).
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    pub top_p: f32,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    if s.temperature <= 0.0 {
        // Greedy; ties go to the lowest id, as torch.argmax does.
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, (((x - max) / s.temperature) as f64).exp()))
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut n = 0;
    for &(_, q) in &p {
        kept += q / z;
        n += 1;
        if kept >= s.top_p as f64 {
            break;
        }
    }
    let p = &p[..n];
    let total: f64 = p.iter().map(|x| x.1).sum();
    let mut r = rng.random::<f64>() * total;
    for &(i, q) in p {
        r -= q;
        if r <= 0.0 {
            return i as u32;
        }
    }
    p[n - 1].0 as u32
}

/// Generates up to `max_new` tokens after `prompt`, calling `on_token` for each; stops early at
/// `stop` (not included). Returns the new tokens.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    stop: Option<u32>,
    gates: Option<&Gates<B>>,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt encodes to no tokens".into()));
    }
    let limit = model.config.max_position_embeddings;
    if prompt.len() + max_new > limit {
        return Err(Error::Invalid(format!(
            "prompt ({} tokens) + {max_new} new tokens exceeds the model's context of {limit}",
            prompt.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(max_new);
    let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    for _ in 0..max_new {
        let n = input.len();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, n]), &model.device);
        let logits = model.forward(tokens, Some(&mut cache), gates, Logits::Last);
        let row = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::Invalid(format!("reading logits: {e:?}")))?;
        let next = sample(&row, sampling, &mut rng);
        if Some(next) == stop {
            break;
        }
        on_token(next);
        out.push(next);
        input = vec![next as i64];
    }
    Ok(out)
}
