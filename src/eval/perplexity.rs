//! Perplexity of a token stream.
//!
//! Non-overlapping windows (the default, and the convention of the golden reference): the
//! stream is cut into windows of `window` tokens (a shorter last window is kept if it has at
//! least two tokens); each window scores its own next-token predictions at positions
//! 1..len-1, so `scored = tokens - windows`. Strided windows (`stride < window`): windows start
//! every `stride` tokens and each scores only the tokens no earlier window scored, each with up
//! to `window - 1` tokens of context (the Hugging Face sliding-window convention).
//!
//! The standard error treats the windows, not the tokens, as the independent units: the tokens
//! of one window share its context (and the text's topic), so their NLLs are correlated and a
//! per-token standard error would understate the uncertainty. The mean NLL is a ratio of sums
//! over windows (total NLL / scored tokens), so its standard error is the ratio estimator's
//! ([`mean_stderr`]); the perplexity's follows by the delta method, `ppl * SE(mean NLL)`.
//!
//! llama.cpp's protocol ([`Protocol::LlamaCpp`], what `llama-perplexity` computes, so numbers
//! can be set beside the ones users know): the stream (BOS first when the tokenizer adds one)
//! is cut into `tokens / n_ctx` non-overlapping chunks of exactly `n_ctx` tokens, the rest
//! dropped; each chunk's first token is replaced by BOS when the tokenizer adds one, and only
//! the second half is scored: the predictions of tokens `n_ctx/2 + 1 .. n_ctx - 1`
//! ([`llama_cpp_chunks`]). Its `±` is llama.cpp's, over tokens ([`token_stderr`]).

use serde::{Deserialize, Serialize};

use super::score::{Request, Scored, Scorer};
use crate::error::{Error, Result};
use burn::tensor::backend::Backend;

/// How a token stream is cut into scored sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// Windows of `window` tokens every `stride` tokens ([`windows`]); ddp's own.
    #[serde(rename = "windows")]
    Windows,
    /// llama.cpp's `llama-perplexity` ([`llama_cpp_chunks`]).
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
}

impl Default for Protocol {
    /// ddp's windows: results written before protocols existed were measured so.
    fn default() -> Self {
        Self::Windows
    }
}

impl Protocol {
    /// The protocols' names, as recipes, `eval --protocol` and eval.json write them.
    pub const NAMES: &'static [&'static str] = &["windows", "llama.cpp"];

    /// The protocol named `name` (one of [`Protocol::NAMES`]).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "windows" => Ok(Self::Windows),
            "llama.cpp" => Ok(Self::LlamaCpp),
            other => Err(Error::Invalid(format!(
                "unknown perplexity protocol {other:?} (expected one of: {})",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// The perplexity of a token stream and how it was measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Perplexity {
    /// Tokens in the stream.
    pub tokens: usize,
    /// Window length in tokens (the most context a prediction sees, plus one).
    pub window: usize,
    /// Tokens between window starts (`window`: non-overlapping).
    pub stride: usize,
    /// How the stream was cut ([`Protocol::Windows`] in results written before it existed).
    #[serde(default)]
    pub protocol: Protocol,
    /// Windows (llama.cpp: chunks) scored.
    pub windows: usize,
    /// Next-token predictions scored.
    pub scored_tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats (NaN when none was scored).
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Standard error of `mean_nll`: over the windows as independent units ([`mean_stderr`]),
    /// or for [`Protocol::LlamaCpp`] over tokens as llama.cpp computes it ([`token_stderr`]);
    /// `None` with fewer than two units.
    #[serde(default)]
    pub mean_nll_stderr: Option<f64>,
    /// Standard error of `perplexity` by the delta method: `perplexity * mean_nll_stderr`.
    #[serde(default)]
    pub perplexity_stderr: Option<f64>,
}

/// The standard error of the ratio `sum(y) / sum(n)` over independent units, each with a total
/// `y` (its NLL) over `n` items (its scored tokens): the ratio (cluster-sampling) estimator,
/// `sqrt(k / (k - 1) * sum((y - r n)^2)) / sum(n)` for `k` units and `r = sum(y) / sum(n)`.
/// With equal `n` it is the standard error of the mean of the units' means. `None` with fewer
/// than two units or no items.
pub fn mean_stderr(units: &[(f64, usize)]) -> Option<f64> {
    let k = units.len();
    let n: usize = units.iter().map(|u| u.1).sum();
    if k < 2 || n == 0 {
        return None;
    }
    let r = units.iter().map(|u| u.0).sum::<f64>() / n as f64;
    let ss: f64 = units.iter().map(|&(y, m)| (y - r * m as f64).powi(2)).sum();
    Some((k as f64 / (k - 1) as f64 * ss).sqrt() / n as f64)
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

/// llama-perplexity's chunks over `n` tokens, as (start, end, first scored position): the
/// `n / n_ctx` whole chunks of `n_ctx` tokens (the rest is dropped), each scoring the tokens
/// after its middle, `n_ctx/2 + 1 .. n_ctx` (llama.cpp's `first = n_ctx/2` is the first
/// position whose logits it reads; they predict the next token).
pub fn llama_cpp_chunks(n: usize, n_ctx: usize) -> Vec<(usize, usize, usize)> {
    assert!(
        n_ctx >= 3,
        "llama.cpp's protocol scores nothing with n_ctx < 3"
    );
    (0..n / n_ctx)
        .map(|i| (i * n_ctx, (i + 1) * n_ctx, n_ctx / 2 + 1))
        .collect()
}

/// llama.cpp's standard error of the mean NLL over `count` tokens with NLL sum `sum` and sum
/// of squares `sum2`: `sqrt((sum2/count - mean^2) / (count - 1))`, the tokens taken as
/// independent (which they are not: it understates the uncertainty, see the module doc).
/// `None` when llama.cpp prints no `±` (fewer than two tokens, no positive variance).
pub fn token_stderr(sum: f64, sum2: f64, count: usize) -> Option<f64> {
    if count < 2 {
        return None;
    }
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    (var > 0.0).then(|| (var / (count - 1) as f64).sqrt())
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
    let units: Vec<(f64, usize)> = scored
        .iter()
        .map(|s| (-s.total(), s.logprobs.len()))
        .collect();
    let mut p = summary(&scored, ids.len(), window, stride, Protocol::Windows);
    p.mean_nll_stderr = mean_stderr(&units);
    p.perplexity_stderr = p.mean_nll_stderr.map(|e| p.perplexity * e);
    p
}

/// The sequences llama-perplexity scores over `ids` with context `n_ctx` ([`llama_cpp_chunks`]):
/// each chunk's first token becomes `bos` when the tokenizer adds one (`Some`), as llama.cpp
/// does, so every chunk starts like a document.
pub fn llama_cpp_requests(ids: &[u32], n_ctx: usize, bos: Option<u32>) -> Vec<Request> {
    llama_cpp_chunks(ids.len(), n_ctx)
        .into_iter()
        .map(|(s, e, from)| {
            let mut chunk = ids[s..e].to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            Request { ids: chunk, from }
        })
        .collect()
}

/// Scores `ids` as llama-perplexity does with `-c n_ctx` ([`llama_cpp_requests`]; `ids` is the
/// whole text tokenised with BOS first when the tokenizer adds one, `bos` then `Some`), with
/// llama.cpp's per-token standard error ([`token_stderr`]).
pub fn llama_cpp<B: Backend>(
    scorer: &Scorer<B>,
    ids: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    on_batch: impl FnMut(usize),
) -> Perplexity {
    let scored = scorer.score(&llama_cpp_requests(ids, n_ctx, bos), on_batch);
    let (sum, sum2) = scored
        .iter()
        .flat_map(|s| &s.logprobs)
        .fold((0.0, 0.0), |(a, b), &lp| (a - lp, b + lp * lp));
    let mut p = summary(&scored, ids.len(), n_ctx, n_ctx, Protocol::LlamaCpp);
    p.mean_nll_stderr = token_stderr(sum, sum2, p.scored_tokens);
    p.perplexity_stderr = p.mean_nll_stderr.map(|e| p.perplexity * e);
    p
}

/// The mean NLL and perplexity of scored sequences (standard errors left to the protocol).
fn summary(
    scored: &[Scored],
    tokens: usize,
    window: usize,
    stride: usize,
    protocol: Protocol,
) -> Perplexity {
    let nll: f64 = scored.iter().map(|s| -s.total()).sum();
    let count: usize = scored.iter().map(|s| s.logprobs.len()).sum();
    let mean = if count == 0 {
        f64::NAN
    } else {
        nll / count as f64
    };
    Perplexity {
        tokens,
        window,
        stride,
        protocol,
        windows: scored.len(),
        scored_tokens: count,
        mean_nll: mean,
        perplexity: mean.exp(),
        mean_nll_stderr: None,
        perplexity_stderr: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{mean_stderr, windows};

    #[test]
    fn stderr_of_the_mean_nll_is_over_windows() {
        // Equal windows: the standard error of the mean of the per-window means. Means 1, 2, 3,
        // 6 (sd sqrt(14/3), n 4) -> sqrt(14/3) / 2.
        let units = [(4.0, 4), (8.0, 4), (12.0, 4), (24.0, 4)];
        let se = mean_stderr(&units).unwrap();
        assert!((se - (14.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12, "{se}");
        // Unequal windows (3, 1), (9, 4), (0, 1), by hand: r = 12 / 6 = 2; residuals y - 2n:
        // 1, 1, -2; ss = 6; sqrt(3/2 * 6) / 6 = 0.5.
        let se = mean_stderr(&[(3.0, 1), (9.0, 4), (0.0, 1)]).unwrap();
        assert!((se - 0.5).abs() < 1e-12, "{se}");
        // One window has no spread to measure; identical windows have none.
        assert_eq!(mean_stderr(&[(5.0, 3)]), None);
        assert_eq!(mean_stderr(&[(6.0, 3), (6.0, 3)]), Some(0.0));
    }

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
