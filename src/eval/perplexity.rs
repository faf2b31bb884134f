//! Perplexity of a token stream.
//!
//! Non-overlapping windows (the default, and the convention of the golden reference): the
//! stream is cut into windows of `window` tokens (a shorter last window is kept if it has at
//! least two tokens); each window scores its own next-token predictions at positions
//! 1..len-1, so `scored = tokens - windows`. Strided windows (`stride < window`): windows start
//! every `stride` tokens and each scores only the tokens no earlier window scored, each with up
//! to `window - 1` tokens of context (the Hugging Face sliding-window convention).

use serde::{Deserialize, Serialize};

use super::score::{Request, Scorer};
use burn::tensor::backend::Backend;

/// The perplexity of a token stream and how it was measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Perplexity {
    /// Tokens in the stream.
    pub tokens: usize,
    /// Window length in tokens (the most context a prediction sees, plus one).
    pub window: usize,
    /// Tokens between window starts (`window`: non-overlapping).
    pub stride: usize,
    /// Windows scored.
    pub windows: usize,
    /// Next-token predictions scored.
    pub scored_tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats (NaN when none was scored).
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
}

/// The windows over `n` tokens: (start, end, first scored position within the window).
pub fn windows(n: usize, window: usize, stride: usize) -> Vec<(usize, usize, usize)> {
    assert!(window >= 2 && stride >= 1 && stride <= window);
    let mut out = vec![];
    let mut scored_to = 0; // global index: tokens before it are scored (or the first token)
    let mut start = 0;
    while start < n {
        let end = (start + window).min(n);
        if end - start < 2 {
            break;
        }
        let first = if out.is_empty() {
            1
        } else {
            scored_to.max(start + 1) - start
        };
        if first < end - start {
            out.push((start, end, first));
        }
        scored_to = end;
        if end == n {
            break;
        }
        start += stride;
    }
    out
}

/// Scores `ids` in the [`windows`] of `window` tokens every `stride` tokens; `on_batch` is
/// told how many windows each batch finished.
pub fn perplexity<B: Backend>(
    scorer: &Scorer<B>,
    ids: &[u32],
    window: usize,
    stride: usize,
    on_batch: impl FnMut(usize),
) -> Perplexity {
    let reqs: Vec<Request> = windows(ids.len(), window, stride)
        .into_iter()
        .map(|(s, e, from)| Request {
            ids: ids[s..e].to_vec(),
            from,
        })
        .collect();
    let scored = scorer.score(&reqs, on_batch);
    let mut nll = 0.0;
    let mut count = 0;
    for s in &scored {
        nll -= s.total();
        count += s.logprobs.len();
    }
    let mean = if count == 0 {
        f64::NAN
    } else {
        nll / count as f64
    };
    Perplexity {
        tokens: ids.len(),
        window,
        stride,
        windows: reqs.len(),
        scored_tokens: count,
        mean_nll: mean,
        perplexity: mean.exp(),
    }
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn non_overlapping_windows_score_all_but_each_first_token() {
        let w = windows(10, 4, 4);
        assert_eq!(w, vec![(0, 4, 1), (4, 8, 1), (8, 10, 1)]);
        let scored: usize = w.iter().map(|(s, e, f)| e - s - f).sum();
        assert_eq!(scored, 10 - 3);
        // A last window of one token scores nothing and is dropped.
        assert_eq!(windows(9, 4, 4), vec![(0, 4, 1), (4, 8, 1)]);
    }

    #[test]
    fn strided_windows_score_every_token_once_after_the_first() {
        let w = windows(10, 4, 2);
        // (0..4 scores 1,2,3), (2..6 scores 4,5), (4..8 scores 6,7), (6..10 scores 8,9)
        assert_eq!(w, vec![(0, 4, 1), (2, 6, 2), (4, 8, 2), (6, 10, 2)]);
        let scored: usize = w.iter().map(|(s, e, f)| e - s - f).sum();
        assert_eq!(scored, 9);
    }
}
