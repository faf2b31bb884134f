//! Forward-pass throughput: prefill (tokens/s over a prompt) and decode (tokens/s generating
//! with the KV cache). Warm-up first, then repeated runs reported as median, min and max.

pub mod torch;

use std::time::Instant;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use serde::Serialize;

use crate::model::{Logits, Model};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut v: Vec<f64>) -> Self {
        assert!(!v.is_empty(), "Stats of no samples");
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub batch: usize,
    pub prompt_len: usize,
    pub decode_tokens: usize,
    pub repeats: usize,
    /// Prompt tokens per second (batch included).
    pub prefill_tok_s: Stats,
    /// Generated tokens per second (batch included).
    pub decode_tok_s: Stats,
}

/// A deterministic prompt of in-vocabulary ids (content does not affect dense timing).
fn prompt_ids(batch: usize, len: usize, vocab: usize) -> Vec<i64> {
    (0..batch * len)
        .map(|i| ((i as u64 * 2_654_435_761 + 17) % vocab as u64) as i64)
        .collect()
}

fn sync<B: Backend>(t: Tensor<B, 3>) -> usize {
    // Reading back forces the backend to finish the work.
    t.argmax(2).into_data().num_elements()
}

/// One timed run: prefill `prompt_len` tokens, then decode `decode_tokens` one at a time.
fn run_once<B: Backend>(
    model: &Model<B>,
    batch: usize,
    prompt_len: usize,
    decode_tokens: usize,
) -> (f64, f64) {
    let vocab = model.config.vocab_size;
    let ids = prompt_ids(batch, prompt_len, vocab);
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, prompt_len]), &model.device);
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    sync(model.forward(tokens, Some(&mut cache), None, Logits::Last));
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for step in 0..decode_tokens {
        let next = prompt_ids(batch, 1, vocab.saturating_sub(step).max(1));
        let tok = Tensor::<B, 2, Int>::from_data(TensorData::new(next, [batch, 1]), &model.device);
        sync(model.forward(tok, Some(&mut cache), None, Logits::Last));
    }
    let decode = t1.elapsed().as_secs_f64();
    (
        (batch * prompt_len) as f64 / prefill,
        if decode_tokens == 0 {
            0.0
        } else {
            (batch * decode_tokens) as f64 / decode
        },
    )
}

pub fn throughput<B: Backend>(
    model: &Model<B>,
    batch: usize,
    prompt_len: usize,
    decode_tokens: usize,
    warmup: usize,
    repeats: usize,
) -> Throughput {
    for _ in 0..warmup {
        run_once(model, batch, prompt_len, decode_tokens.min(8));
    }
    let (mut p, mut d) = (vec![], vec![]);
    for _ in 0..repeats.max(1) {
        let (a, b) = run_once(model, batch, prompt_len, decode_tokens);
        p.push(a);
        d.push(b);
    }
    Throughput {
        batch,
        prompt_len,
        decode_tokens,
        repeats: repeats.max(1),
        prefill_tok_s: Stats::of(p),
        decode_tok_s: Stats::of(d),
    }
}
