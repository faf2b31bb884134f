//! Quality measurements: perplexity over a text, the built-in cloze tasks drawn from a text,
//! and zero-shot multiple-choice tasks in the layouts lm-eval-harness users hold.
//!
//! Everything here scores token log-likelihoods with [`score::Scorer`], which batches
//! sequences through the model and reads back only the positions that are scored.

pub mod cloze;
pub mod mc;
pub mod perplexity;
pub mod score;
pub mod suite;

use serde::{Deserialize, Serialize};

/// An accuracy over `n` items with its standard error (the sample standard error lm-eval
/// reports: sqrt(p(1-p)/(n-1))).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Accuracy {
    /// Fraction correct, in `[0, 1]` (0 when `n` is 0).
    pub value: f64,
    /// Standard error of `value` (0 when `n` is below 2).
    pub stderr: f64,
    /// Items scored.
    pub n: usize,
}

impl Accuracy {
    /// The accuracy of `correct` right answers out of `n`.
    pub fn of(correct: usize, n: usize) -> Self {
        let p = if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        };
        let stderr = if n > 1 {
            (p * (1.0 - p) / (n as f64 - 1.0)).sqrt()
        } else {
            0.0
        };
        Self {
            value: p,
            stderr,
            n,
        }
    }
}
