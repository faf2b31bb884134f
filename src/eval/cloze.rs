//! Built-in cloze tasks drawn from any text, so quality can be measured without downloading a
//! benchmark.
//!
//! Passages are the text's paragraphs (blank-line separated, whitespace collapsed) of at least
//! `min_words` words. LAMBADA style: the passage's last word (trailing punctuation and quotes
//! dropped) is the target; the model must produce all of its tokens greedily from the rest of
//! the passage (exact match, like lm-eval's `lambada` acc). Multiple-choice variant: the
//! passage's last `tail_words` words are the true continuation, and the tails of other
//! passages (drawn with a seed) are the distractors; scored like any multiple-choice task.

use burn::tensor::backend::Backend;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::mc::{encode_pair, Item};
use super::score::{Request, Scorer};
use super::Accuracy;
use crate::error::{Error, Result};
use crate::io::tokenizer::Tokenizer;

/// A passage cut into what the model sees and what it must produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClozeItem {
    /// The passage before the target word (a space before the word goes to `target`).
    pub context: String,
    /// With its leading space when the word follows one.
    pub target: String,
}

/// The outcome of [`lambada`] over a set of items.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClozeResult {
    /// Greedy exact-match accuracy: every target token is the model's argmax.
    pub acc: Accuracy,
    /// exp(-mean log-likelihood of the target word), per word.
    pub target_perplexity: f64,
}

/// The text's paragraphs with at least `min_words` words, whitespace collapsed.
pub fn passages(text: &str, min_words: usize) -> Vec<String> {
    let mut out = vec![];
    let mut cur: Vec<&str> = vec![];
    let flush = |cur: &mut Vec<&str>, out: &mut Vec<String>| {
        if cur.len() >= min_words {
            out.push(cur.join(" "));
        }
        cur.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut cur, &mut out);
        } else {
            cur.extend(line.split_whitespace());
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// LAMBADA-style items: one per passage whose last word has at least two letters.
pub fn lambada_items(passages: &[String], limit: usize) -> Vec<ClozeItem> {
    let mut out = vec![];
    for p in passages {
        let body = p.trim_end_matches(|c: char| !c.is_alphanumeric());
        let start = body
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphabetic())
            .last()
            .map(|(i, _)| i);
        let Some(start) = start else { continue };
        let word = &body[start..];
        // A whole word: not the tail of a contraction or a hyphenated word.
        let before = &body[..start];
        let prev = before.chars().last();
        if word.chars().count() < 2 || prev.is_none_or(|c| c.is_alphanumeric() || "'’-".contains(c))
        {
            continue;
        }
        // The space before the word belongs to the target, as the tokenizer sees it.
        let (context, target) = match before.strip_suffix(' ') {
            Some(c) => (c.trim_end().to_string(), format!(" {word}")),
            None => (before.to_string(), word.to_string()),
        };
        out.push(ClozeItem { context, target });
        if limit > 0 && out.len() == limit {
            break;
        }
    }
    out
}

/// Multiple-choice items: true tail vs `choices - 1` tails of other passages.
pub fn mc_items(
    passages: &[String],
    tail_words: usize,
    choices: usize,
    limit: usize,
    seed: u64,
) -> Vec<Item> {
    let split: Vec<(String, String)> = passages
        .iter()
        .filter_map(|p| {
            let words: Vec<&str> = p.split(' ').collect();
            (words.len() > tail_words * 2).then(|| {
                let (a, b) = words.split_at(words.len() - tail_words);
                (a.join(" "), format!(" {}", b.join(" ")))
            })
        })
        .collect();
    if split.len() < choices || choices < 2 {
        return vec![];
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![];
    for (i, (ctx, tail)) in split.iter().enumerate() {
        let mut others: Vec<usize> = (0..split.len())
            .filter(|&j| j != i && split[j].1 != *tail)
            .collect();
        others.shuffle(&mut rng);
        let mut conts: Vec<String> = others[..choices - 1]
            .iter()
            .map(|&j| split[j].1.clone())
            .collect();
        let gold = rng.random_range(0..choices);
        conts.insert(gold, tail.clone());
        out.push(Item {
            contexts: vec![ctx.clone()],
            continuations: conts,
            gold,
        });
        if limit > 0 && out.len() == limit {
            break;
        }
    }
    out
}

/// Greedy exact-match accuracy and target-word perplexity.
pub fn lambada<B: Backend>(
    scorer: &Scorer<B>,
    tok: &Tokenizer,
    items: &[ClozeItem],
    max_len: usize,
    on_batch: impl FnMut(usize),
) -> Result<ClozeResult> {
    if items.is_empty() {
        return Err(Error::Invalid(
            "the cloze text has no passage long enough to make an item".into(),
        ));
    }
    let mut reqs = vec![];
    for it in items {
        let (ids, from) = encode_pair(tok, &it.context, &it.target)?;
        reqs.push(Request::fitted(ids, from, max_len)?);
    }
    let scored = scorer.score(&reqs, on_batch);
    let correct = scored.iter().filter(|s| s.all_greedy()).count();
    let mean_ll = scored.iter().map(|s| s.total()).sum::<f64>() / items.len() as f64;
    Ok(ClozeResult {
        acc: Accuracy::of(correct, items.len()),
        target_perplexity: (-mean_ll).exp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "Call me Ishmael. Some years ago, never mind how long\nprecisely, I went to sea.\n\n\
        Short one.\n\nIt is a way I have of driving off the \"spleen.\"\n\n\
        The whale's   tail rose above the boat's bow.\n";

    #[test]
    fn passages_and_last_words() {
        let p = passages(TEXT, 5);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            p[0],
            "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea."
        );
        let items = lambada_items(&p, 0);
        assert_eq!(items[0].target, " sea");
        assert_eq!(
            items[0].context,
            "Call me Ishmael. Some years ago, never mind how long precisely, I went to"
        );
        assert_eq!(items[1].target, "spleen");
        assert_eq!(items[1].context, "It is a way I have of driving off the \"");
        // "boat's bow" -> "bow"; the apostrophe form "s" alone is never a target.
        assert_eq!(items[2].target, " bow");
    }

    #[test]
    fn mc_items_put_the_true_tail_at_gold() {
        let paras: Vec<String> = (0..6)
            .map(|i| format!("p{i} a b c d e f g h i j tail{i} end{i}"))
            .collect();
        let items = mc_items(&paras, 2, 4, 0, 7);
        assert_eq!(items.len(), 6);
        for (i, it) in items.iter().enumerate() {
            assert_eq!(it.continuations.len(), 4);
            assert_eq!(it.continuations[it.gold], format!(" tail{i} end{i}"));
            assert!(it.contexts[0].ends_with(" j"));
        }
        assert_eq!(items, mc_items(&paras, 2, 4, 0, 7), "seeded");
    }
}
