//! Token log-likelihoods: sequences go through the model in right-padded batches (causal
//! attention makes padding after a sequence invisible to it), and only the requested
//! positions' log-probabilities come back to the host.

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::{Gates, Logits, Model};

/// One sequence to score: `ids`, and the positions `p` (>= 1) whose token is predicted from
/// `ids[..p]`.
#[derive(Debug, Clone)]
pub struct Request {
    /// The whole sequence, context included.
    pub ids: Vec<u32>,
    /// Score tokens `ids[from..]` (from >= 1).
    pub from: usize,
}

impl Request {
    /// A context + continuation cut to at most `max_len` tokens from the left (the continuation
    /// stays whole, at least one context token stays); an error when the continuation alone does
    /// not fit.
    pub fn fitted(mut ids: Vec<u32>, mut from: usize, max_len: usize) -> Result<Self> {
        if ids.len() > max_len {
            let cut = ids.len() - max_len;
            if cut >= from {
                return Err(Error::Invalid(format!(
                    "a continuation of {} tokens does not fit the {max_len}-token limit",
                    ids.len() - from
                )));
            }
            ids.drain(..cut);
            from -= cut;
        }
        Ok(Self { ids, from })
    }
}

/// Per request: the log-probability of each scored token, and whether each was the argmax.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Natural-log probability of each token `ids[from..]` given the tokens before it.
    pub logprobs: Vec<f64>,
    /// Whether each of those tokens is the model's argmax at its position.
    pub greedy: Vec<bool>,
}

impl Scored {
    /// The log-likelihood of all scored tokens together (sum of `logprobs`).
    pub fn total(&self) -> f64 {
        self.logprobs.iter().sum()
    }
    /// Whether greedy decoding would have produced every scored token.
    pub fn all_greedy(&self) -> bool {
        self.greedy.iter().all(|&g| g)
    }
}

/// Scores [`Request`]s with a model, optionally under gates.
pub struct Scorer<'a, B: Backend> {
    /// The model that scores.
    pub model: &'a Model<B>,
    /// Masks applied in the forward pass (`None`: the model as it is).
    pub gates: Option<&'a Gates<B>>,
    /// Upper bound on batch x length x vocab floats of logits held at once.
    pub max_logit_floats: usize,
}

impl<'a, B: Backend> Scorer<'a, B> {
    /// A scorer without gates, holding at most 64 Mi logit floats (256 MiB) at once.
    pub fn new(model: &'a Model<B>) -> Self {
        Self {
            model,
            gates: None,
            max_logit_floats: 64 << 20,
        }
    }

    /// Scores requests in order; `on_batch` is told how many finished (for progress bars).
    pub fn score(&self, reqs: &[Request], mut on_batch: impl FnMut(usize)) -> Vec<Scored> {
        let vocab = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(reqs.len());
        let mut i = 0;
        while i < reqs.len() {
            // Greedy batching: add requests while the padded logits stay under the bound.
            let mut j = i + 1;
            let mut longest = reqs[i].ids.len();
            while j < reqs.len() {
                let l = longest.max(reqs[j].ids.len());
                if (j + 1 - i) * l * vocab > self.max_logit_floats {
                    break;
                }
                longest = l;
                j += 1;
            }
            out.extend(self.batch(&reqs[i..j], longest));
            on_batch(j - i);
            i = j;
        }
        out
    }

    fn batch(&self, reqs: &[Request], len: usize) -> Vec<Scored> {
        let b = reqs.len();
        let mut ids = vec![0i64; b * len];
        for (r, req) in reqs.iter().enumerate() {
            assert!(
                req.from >= 1 && req.from <= req.ids.len(),
                "score request: from must be in 1..=len"
            );
            for (t, &id) in req.ids.iter().enumerate() {
                ids[r * len + t] = id as i64;
            }
        }
        let dev = &self.model.device;
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, len]), dev);
        let logits = self.model.forward(tokens, None, self.gates, Logits::All);
        let logp = log_softmax(logits, 2);
        // Target of position t is ids[t+1]; gather log p(target) and the argmax per position.
        let mut targets = vec![0i64; b * len];
        for (r, req) in reqs.iter().enumerate() {
            for t in 0..req.ids.len() - 1 {
                targets[r * len + t] = req.ids[t + 1] as i64;
            }
        }
        let tgt = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [b, len, 1]), dev);
        let picked = logp.clone().gather(2, tgt).reshape([b, len]);
        let best = logp.argmax(2).reshape([b, len]);
        let picked: Vec<f32> = picked.into_data().convert::<f32>().to_vec().unwrap();
        let best: Vec<i64> = best.into_data().convert::<i64>().to_vec().unwrap();
        reqs.iter()
            .enumerate()
            .map(|(r, req)| {
                let range = (r * len + req.from - 1)..(r * len + req.ids.len() - 1);
                Scored {
                    logprobs: picked[range.clone()].iter().map(|&x| x as f64).collect(),
                    greedy: range
                        .clone()
                        .zip(&req.ids[req.from..])
                        .map(|(k, &id)| best[k] == id as i64)
                        .collect(),
                }
            })
            .collect()
    }
}
