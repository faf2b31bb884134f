//! Zero-shot multiple choice by log-likelihood, as lm-eval-harness scores it.
//!
//! An item is a context and its choices (continuations); each choice's log-likelihood is the
//! sum of log p(continuation tokens | context). `acc`: the highest log-likelihood is the gold
//! choice; `acc_norm`: the highest log-likelihood per byte of the continuation. Tokenisation
//! follows lm-eval: the continuation's tokens are those of `context + continuation` after the
//! context's tokens, with a trailing space of the context moved onto the continuation.
//!
//! Files are JSONL. The generic layout is `{"context", "choices", "gold"}` (also `query`,
//! `label`); the public layouts of HellaSwag, PIQA, ARC, BoolQ, WinoGrande and OpenBookQA (as
//! their Hugging Face datasets export them) are recognised by their fields and turned into
//! items with lm-eval's prompts.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::score::{Request, Scorer};
use super::Accuracy;
use crate::error::{Error, Result};
use crate::io::tokenizer::Tokenizer;

/// One question. `contexts` has one entry shared by all choices, or one per choice
/// (WinoGrande: the option is in the context and the continuation is shared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The context(s) each choice is conditioned on.
    pub contexts: Vec<String>,
    /// The continuation(s) scored; one shared by all choices, or one per choice.
    pub continuations: Vec<String>,
    /// Index of the correct choice.
    pub gold: usize,
}

impl Item {
    /// Number of choices: the longer of `contexts` and `continuations`.
    pub fn choices(&self) -> usize {
        self.contexts.len().max(self.continuations.len())
    }
    /// Choice `i` as (context, continuation).
    pub fn pair(&self, i: usize) -> (&str, &str) {
        let c = if self.contexts.len() == 1 { 0 } else { i };
        let k = if self.continuations.len() == 1 { 0 } else { i };
        (&self.contexts[c], &self.continuations[k])
    }
}

/// The scores of one multiple-choice task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct McResult {
    /// The task file's layout (`generic`, `hellaswag`, `piqa`, `arc`, `openbookqa`, `boolq`,
    /// `winogrande`).
    pub layout: String,
    /// Fraction of items whose highest log-likelihood choice is gold.
    pub acc: Accuracy,
    /// As `acc`, with each log-likelihood divided by its continuation's length in bytes.
    pub acc_norm: Accuracy,
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn index(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as usize),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(*b as usize),
        _ => None,
    }
}

/// lm-eval's HellaSwag clean-up: drop bracketed WikiHow markers and double spaces.
fn hellaswag_clean(t: &str) -> String {
    let t = t.trim().replace(" [title]", ". ");
    let mut out = String::new();
    let mut depth = 0;
    for c in t.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.replace("  ", " ")
}

fn capitalize(t: &str) -> String {
    let mut c = t.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
        None => String::new(),
    }
}

/// Which layout a JSON line has, and its item.
pub fn parse_item(v: &Value) -> std::result::Result<(&'static str, Item), String> {
    let str_list = |x: &Value| -> Option<Vec<String>> {
        x.as_array()?
            .iter()
            .map(|e| e.as_str().map(str::to_string))
            .collect()
    };
    let item = |contexts: Vec<String>, continuations: Vec<String>, gold: usize| Item {
        contexts,
        continuations,
        gold,
    };
    // Generic.
    if let (Some(ctx), Some(ch)) = (
        s(v, "context").or_else(|| s(v, "query")),
        v.get("choices").and_then(str_list),
    ) {
        let gold = v
            .get("gold")
            .or_else(|| v.get("label"))
            .and_then(index)
            .ok_or("expected an integer `gold` (or `label`)")?;
        return Ok(("generic", item(vec![ctx.into()], ch, gold)));
    }
    // HellaSwag.
    if let (Some(ctx_a), Some(endings)) = (s(v, "ctx_a"), v.get("endings").and_then(str_list)) {
        let ctx_b = s(v, "ctx_b").unwrap_or_default();
        let act = s(v, "activity_label").unwrap_or_default();
        let ctx = hellaswag_clean(&format!("{act}: {ctx_a} {}", capitalize(ctx_b)));
        let gold = v.get("label").and_then(index).ok_or("expected `label`")?;
        let ch = endings
            .iter()
            .map(|e| format!(" {}", hellaswag_clean(e)))
            .collect();
        return Ok(("hellaswag", item(vec![ctx], ch, gold)));
    }
    // PIQA.
    if let (Some(goal), Some(s1), Some(s2)) = (s(v, "goal"), s(v, "sol1"), s(v, "sol2")) {
        let gold = v.get("label").and_then(index).ok_or("expected `label`")?;
        return Ok((
            "piqa",
            item(
                vec![format!("Question: {goal}\nAnswer:")],
                vec![format!(" {s1}"), format!(" {s2}")],
                gold,
            ),
        ));
    }
    // ARC and OpenBookQA: choices {text, label}, answerKey.
    if let (Some(ch), Some(key)) = (v.get("choices"), s(v, "answerKey")) {
        let texts = ch
            .get("text")
            .and_then(str_list)
            .ok_or("expected choices.text")?;
        let labels = ch
            .get("label")
            .and_then(str_list)
            .ok_or("expected choices.label")?;
        let gold = labels
            .iter()
            .position(|l| l == key)
            .ok_or_else(|| format!("answerKey `{key}` is not among the labels {labels:?}"))?;
        let ch = texts.iter().map(|t| format!(" {t}")).collect();
        if let Some(q) = s(v, "question_stem") {
            return Ok(("openbookqa", item(vec![q.into()], ch, gold)));
        }
        let q = s(v, "question").ok_or("expected `question`")?;
        return Ok((
            "arc",
            item(vec![format!("Question: {q}\nAnswer:")], ch, gold),
        ));
    }
    // BoolQ.
    if let (Some(p), Some(q)) = (s(v, "passage"), s(v, "question")) {
        let gold = v
            .get("label")
            .or_else(|| v.get("answer"))
            .and_then(index)
            .ok_or("expected `label` or `answer`")?;
        return Ok((
            "boolq",
            item(
                vec![format!("{p}\nQuestion: {q}?\nAnswer:")],
                vec![" no".into(), " yes".into()],
                gold,
            ),
        ));
    }
    // WinoGrande: the option fills the blank inside the context; the rest is shared.
    if let (Some(sent), Some(o1), Some(o2)) = (s(v, "sentence"), s(v, "option1"), s(v, "option2")) {
        let at = sent.find('_').ok_or("expected a `_` blank in `sentence`")?;
        let gold = v
            .get("answer")
            .and_then(index)
            .filter(|a| *a == 1 || *a == 2)
            .ok_or("expected `answer` 1 or 2")?
            - 1;
        let pre = &sent[..at];
        let rest = format!(" {}", sent[at + 1..].trim());
        return Ok((
            "winogrande",
            item(
                vec![format!("{pre}{o1}"), format!("{pre}{o2}")],
                vec![rest],
                gold,
            ),
        ));
    }
    Err("unrecognised layout: expected {context, choices, gold} or the fields of HellaSwag, PIQA, ARC, OpenBookQA, BoolQ or WinoGrande".into())
}

/// Reads a task file (at most `limit` items; 0: all).
pub fn read_task(path: &Path, limit: usize) -> Result<(String, Vec<Item>)> {
    let text = crate::data::read_text(path)?;
    let mut layout = None;
    let mut items = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: String| Error::bad_file(path, format!("line {}: {what}", i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let (l, it) = parse_item(&v).map_err(bad)?;
        if it.gold >= it.choices() || it.choices() < 2 {
            return Err(bad(format!(
                "gold index {} with {} choices (need at least 2 choices and gold < choices)",
                it.gold,
                it.choices()
            )));
        }
        layout.get_or_insert(l);
        items.push(it);
        if limit > 0 && items.len() == limit {
            break;
        }
    }
    if items.is_empty() {
        return Err(Error::bad_file(path, "no items"));
    }
    Ok((layout.unwrap_or("generic").to_string(), items))
}

/// Context and continuation tokens the lm-eval way (BOS first when the tokenizer adds one).
pub fn encode_pair(tok: &Tokenizer, context: &str, cont: &str) -> Result<(Vec<u32>, usize)> {
    let trimmed = context.trim_end_matches(' ');
    let moved = &context[trimmed.len()..];
    let cont = format!("{moved}{cont}");
    let mut ids: Vec<u32> = if tok.add_bos {
        tok.bos_id.into_iter().collect()
    } else {
        vec![]
    };
    let ctx = tok.encode(trimmed, false)?;
    let whole = tok.encode(&format!("{trimmed}{cont}"), false)?;
    // The continuation is what follows the context's tokens in the whole encoding; when the
    // boundary merges into one token, fall back to encoding the continuation alone.
    let (ctx, rest) = if whole.starts_with(&ctx) && whole.len() > ctx.len() {
        (ctx.clone(), whole[ctx.len()..].to_vec())
    } else {
        (ctx, tok.encode(&cont, false)?)
    };
    if ids.is_empty() && ctx.is_empty() {
        return Err(Error::Invalid(
            "an item has an empty context and the tokenizer adds no BOS: nothing to condition on"
                .into(),
        ));
    }
    ids.extend(&ctx);
    let from = ids.len();
    ids.extend(rest);
    Ok((ids, from))
}

/// Log-likelihood of every choice of every item (outer: items).
pub fn logliks<B: Backend>(
    scorer: &Scorer<B>,
    tok: &Tokenizer,
    items: &[Item],
    max_len: usize,
    on_batch: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    let mut reqs = vec![];
    for it in items {
        for c in 0..it.choices() {
            let (ctx, cont) = it.pair(c);
            let (ids, from) = encode_pair(tok, ctx, cont)?;
            reqs.push(Request::fitted(ids, from, max_len)?);
        }
    }
    let scored = scorer.score(&reqs, on_batch);
    let mut it = scored.into_iter();
    Ok(items
        .iter()
        .map(|item| {
            (0..item.choices())
                .map(|_| it.next().unwrap().total())
                .collect()
        })
        .collect())
}

fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// acc and acc_norm from log-likelihoods.
pub fn accuracy(items: &[Item], ll: &[Vec<f64>], layout: &str) -> McResult {
    let (mut acc, mut norm) = (0, 0);
    for (it, l) in items.iter().zip(ll) {
        if argmax(l.iter().copied()) == it.gold {
            acc += 1;
        }
        let per_byte = l
            .iter()
            .enumerate()
            .map(|(i, x)| x / it.pair(i).1.len().max(1) as f64);
        if argmax(per_byte) == it.gold {
            norm += 1;
        }
    }
    McResult {
        layout: layout.into(),
        acc: Accuracy::of(acc, items.len()),
        acc_norm: Accuracy::of(norm, items.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_become_lm_eval_prompts() {
        let arc: Value = serde_json::from_str(r#"{"question":"Which is a gas?","choices":{"text":["rock","steam"],"label":["A","B"]},"answerKey":"B"}"#).unwrap();
        let (l, it) = parse_item(&arc).unwrap();
        assert_eq!(l, "arc");
        assert_eq!(it.contexts, vec!["Question: Which is a gas?\nAnswer:"]);
        assert_eq!(it.continuations, vec![" rock", " steam"]);
        assert_eq!(it.gold, 1);
        let wg: Value = serde_json::from_str(r#"{"sentence":"Sam gave Tom a book because _ was kind.","option1":"Sam","option2":"Tom","answer":"1"}"#).unwrap();
        let (l, it) = parse_item(&wg).unwrap();
        assert_eq!(l, "winogrande");
        assert_eq!(
            it.pair(1),
            ("Sam gave Tom a book because Tom", " was kind.")
        );
        assert_eq!(it.gold, 0);
        let hs: Value = serde_json::from_str(r#"{"activity_label":"Baking","ctx_a":"A man mixes flour.","ctx_b":"he","endings":["bakes [title] bread.","sings."],"label":"0"}"#).unwrap();
        let (_, it) = parse_item(&hs).unwrap();
        assert_eq!(it.contexts[0], "Baking: A man mixes flour. He");
        assert_eq!(it.continuations[0], " bakes. bread.");
        let bq: Value = serde_json::from_str(r#"{"passage":"Water boils at 100 C.","question":"does water boil at 100 c","answer":true}"#).unwrap();
        let (_, it) = parse_item(&bq).unwrap();
        assert_eq!(it.gold, 1);
        assert!(parse_item(&serde_json::json!({"foo": 1})).is_err());
    }

    #[test]
    fn accuracy_and_length_normalisation() {
        let items = vec![
            Item {
                contexts: vec!["c".into()],
                continuations: vec![" a".into(), " bbbbbbb".into()],
                gold: 1,
            },
            Item {
                contexts: vec!["c".into()],
                continuations: vec![" a".into(), " b".into()],
                gold: 0,
            },
        ];
        // Item 0: raw prefers choice 0 (-2 > -7); per byte prefers choice 1 (-1.0 > -1.0?):
        // -2/2 = -1.0 vs -7/8 = -0.875 -> 1. Item 1: both prefer 0.
        let ll = vec![vec![-2.0, -7.0], vec![-1.0, -3.0]];
        let r = accuracy(&items, &ll, "generic");
        assert_eq!(r.acc.value, 0.5);
        assert_eq!(r.acc_norm.value, 1.0);
        assert!((r.acc.stderr - (0.25f64 / 1.0).sqrt()).abs() < 1e-12);
    }
}
