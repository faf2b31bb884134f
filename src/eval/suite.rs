//! A set of measurements on one model, run together with one progress bar: what the
//! `evaluate` stage and `ddp-run eval` share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::cloze::{self, ClozeItem, ClozeResult};
use super::mc::{self, Item, McResult};
use super::perplexity::{self, Perplexity, Protocol};
use super::score::Scorer;
use crate::backend::BackendTask;
use crate::data;
use crate::error::{Error, Result};
use crate::io::{tokenizer::Tokenizer, ModelFiles};
use crate::model::Model;

/// The perplexity part of a [`Suite`].
#[derive(Debug, Clone)]
pub struct PerplexityInput {
    /// The token stream (for [`Protocol::LlamaCpp`], with BOS first when the tokenizer adds one).
    pub ids: Vec<u32>,
    /// Window (llama.cpp: context) length in tokens.
    pub window: usize,
    /// Tokens between window starts ([`Protocol::Windows`]).
    pub stride: usize,
    /// How the stream is cut.
    pub protocol: Protocol,
    /// The BOS id when the tokenizer adds one (llama.cpp puts it at each chunk's start).
    pub bos: Option<u32>,
}

impl PerplexityInput {
    /// Sequences it scores.
    pub fn requests(&self) -> usize {
        match self.protocol {
            Protocol::Windows => {
                perplexity::windows(self.ids.len(), self.window, self.stride).len()
            }
            Protocol::LlamaCpp => perplexity::llama_cpp_chunks(self.ids.len(), self.window).len(),
        }
    }

    /// Scores it with `scorer`; `tick` is told how many sequences each batch finished.
    pub fn run<B: Backend>(&self, scorer: &Scorer<B>, tick: impl FnMut(usize)) -> Perplexity {
        match self.protocol {
            Protocol::Windows => {
                perplexity::perplexity(scorer, &self.ids, self.window, self.stride, tick)
            }
            Protocol::LlamaCpp => {
                perplexity::llama_cpp(scorer, &self.ids, self.window, self.bos, tick)
            }
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Default)]
pub struct Suite {
    /// Token stream and how to cut it.
    pub perplexity: Option<PerplexityInput>,
    /// LAMBADA-style cloze items drawn from the text (greedy exact match of the last word).
    pub lambada: Vec<ClozeItem>,
    /// Multiple-choice cloze items drawn from the text.
    pub cloze_mc: Vec<Item>,
    /// Task name -> (layout, items).
    pub tasks: BTreeMap<String, (String, Vec<Item>)>,
    /// Longest sequence scored for cloze and tasks (contexts are cut from the left).
    pub max_len: usize,
}

/// What a suite measured; a part is `None` (or empty) when the suite did not ask for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Results {
    /// Perplexity over the token stream.
    pub perplexity: Option<Perplexity>,
    /// LAMBADA-style accuracy and target-word perplexity.
    pub lambada: Option<ClozeResult>,
    /// Scores of the multiple-choice cloze.
    pub cloze_mc: Option<McResult>,
    /// Task name -> its scores.
    pub tasks: BTreeMap<String, McResult>,
}

impl Suite {
    /// Sequences to score (for a progress bar's length).
    pub fn requests(&self) -> usize {
        let ppl = self
            .perplexity
            .as_ref()
            .map_or(0, PerplexityInput::requests);
        let mc = |items: &[Item]| items.iter().map(Item::choices).sum::<usize>();
        ppl + self.lambada.len()
            + mc(&self.cloze_mc)
            + self.tasks.values().map(|(_, i)| mc(i)).sum::<usize>()
    }

    /// Scores everything in the suite on `model`; `bar` advances once per scored sequence.
    pub fn run<B: Backend>(
        &self,
        model: &Model<B>,
        tok: &Tokenizer,
        bar: &ProgressBar,
    ) -> Result<Results> {
        let scorer = Scorer::new(model);
        let tick = |n: usize| bar.inc(n as u64);
        let mut r = Results::default();
        if let Some(input) = &self.perplexity {
            bar.set_message("perplexity");
            let p = input.run(&scorer, tick);
            if !p.mean_nll.is_finite() {
                return Err(Error::Invalid(format!(
                    "the model's log-likelihoods are not finite (mean NLL {}): its logits contain NaN or inf; check its weights",
                    p.mean_nll
                )));
            }
            r.perplexity = Some(p);
        }
        if !self.lambada.is_empty() {
            bar.set_message("cloze");
            r.lambada = Some(cloze::lambada(
                &scorer,
                tok,
                &self.lambada,
                self.max_len,
                tick,
            )?);
        }
        if !self.cloze_mc.is_empty() {
            bar.set_message("cloze-mc");
            let ll = mc::logliks(&scorer, tok, &self.cloze_mc, self.max_len, tick)?;
            r.cloze_mc = Some(mc::accuracy(&self.cloze_mc, &ll, "cloze-mc"));
        }
        for (name, (layout, items)) in &self.tasks {
            bar.set_message(name.clone());
            let ll = mc::logliks(&scorer, tok, items, self.max_len, tick)?;
            r.tasks
                .insert(name.clone(), mc::accuracy(items, &ll, layout));
        }
        Ok(r)
    }
}

impl Results {
    /// Flat metrics (the stage's manifest, the report's columns).
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Some(p) = &self.perplexity {
            m.insert("perplexity".into(), p.perplexity);
            m.insert("mean_nll".into(), p.mean_nll);
            m.insert("scored_tokens".into(), p.scored_tokens as f64);
            if let (Some(se), Some(pse)) = (p.mean_nll_stderr, p.perplexity_stderr) {
                m.insert("mean_nll_stderr".into(), se);
                m.insert("perplexity_stderr".into(), pse);
            }
        }
        if let Some(c) = &self.lambada {
            m.insert("lambada_acc".into(), c.acc.value);
            m.insert("lambada_acc_stderr".into(), c.acc.stderr);
            m.insert("lambada_target_ppl".into(), c.target_perplexity);
        }
        let mut mc = |name: &str, r: &McResult| {
            m.insert(format!("{name}_acc"), r.acc.value);
            m.insert(format!("{name}_acc_stderr"), r.acc.stderr);
            m.insert(format!("{name}_acc_norm"), r.acc_norm.value);
            m.insert(format!("{name}_acc_norm_stderr"), r.acc_norm.stderr);
        };
        if let Some(c) = &self.cloze_mc {
            mc("cloze_mc", c);
        }
        for (name, t) in &self.tasks {
            mc(&format!("task.{name}"), t);
        }
        m
    }

    /// A Markdown table of the results (with deltas against `dense` when given).
    pub fn markdown(&self, dense: Option<&BTreeMap<String, f64>>) -> String {
        let mut s = String::from(
            "| metric | value | ± stderr | dense | delta |\n|---|---:|---:|---:|---:|\n",
        );
        let m = self.metrics();
        for (k, v) in &m {
            if k.ends_with("_stderr") || k == "mean_nll" {
                continue;
            }
            let se = m
                .get(&format!("{k}_stderr"))
                .map_or(String::new(), |e| format!("{e:.4}"));
            let (d, delta) = match dense.and_then(|d| d.get(k)) {
                Some(d) => (format!("{d:.4}"), format!("{:+.4}", v - d)),
                None => (String::new(), String::new()),
            };
            s += &format!("| {k} | {v:.4} | {se} | {d} | {delta} |\n");
        }
        s
    }
}

/// `NAME=PATH` or `PATH` (the name is the file stem).
pub fn task_spec(spec: &str) -> (String, PathBuf) {
    match spec.split_once('=') {
        Some((n, p)) if !n.contains('/') => (n.to_string(), PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(spec);
            let n = p
                .file_stem()
                .map_or("task".into(), |s| s.to_string_lossy().into_owned());
            (n, p)
        }
    }
}

/// What to build a [`Suite`] from: settings shared by the `evaluate` stage and `ddp-run eval`.
pub struct SuiteSpec {
    /// Evaluation text (a data source spec); `None` or empty: task files only.
    pub data: Option<String>,
    /// Perplexity window in tokens.
    pub seq_len: usize,
    /// 0: non-overlapping windows; else the stride of windows that score each token once.
    pub stride: usize,
    /// How the perplexity's stream is cut: ddp's windows (with `stride`) or llama.cpp's chunks.
    pub protocol: Protocol,
    /// Perplexity over the first N tokens of the text (llama.cpp: BOS included).
    pub max_tokens: usize,
    /// Items of each built-in cloze task drawn from the text (0: none).
    pub cloze_items: usize,
    /// Choices of the multiple-choice cloze.
    pub cloze_choices: usize,
    /// Shortest paragraph that makes a cloze item.
    pub min_words: usize,
    /// Multiple-choice task files, `NAME=PATH` or `PATH`.
    pub tasks: Vec<String>,
    /// First N items of each task file (0: all).
    pub task_limit: usize,
    /// Longest sequence scored for cloze and tasks.
    pub max_len: usize,
    /// Distractor draw of the multiple-choice cloze.
    pub seed: u64,
}

/// Builds the suite: tokens for perplexity, cloze items from the same text, task files.
pub fn build_suite(spec: &SuiteSpec, tok: &Tokenizer, cache: &Path) -> Result<Suite> {
    let mut suite = Suite {
        max_len: spec.max_len,
        ..Suite::default()
    };
    if let Some(d) = spec.data.as_deref().filter(|d| !d.is_empty()) {
        if spec.max_tokens < spec.seq_len {
            return Err(Error::Invalid(format!(
                "max_tokens {} is less than seq_len {}: perplexity needs at least one full window",
                spec.max_tokens, spec.seq_len
            )));
        }
        let src = data::resolve(d, cache)?;
        suite.perplexity = Some(perplexity_input(spec, d, &src, tok)?);
        if spec.cloze_items > 0 {
            let text = data::texts(&src)?.join("\n\n");
            let passages = cloze::passages(&text, spec.min_words);
            suite.lambada = cloze::lambada_items(&passages, spec.cloze_items);
            suite.cloze_mc = cloze::mc_items(
                &passages,
                8,
                spec.cloze_choices,
                spec.cloze_items,
                spec.seed,
            );
        }
    }
    for t in &spec.tasks {
        let (name, path) = task_spec(t);
        let (layout, items) = mc::read_task(&path, spec.task_limit)?;
        suite.tasks.insert(name, (layout, items));
    }
    if suite.perplexity.is_none() && suite.tasks.is_empty() {
        return Err(Error::Invalid(
            "nothing to evaluate: give an evaluation text (data) or task files (tasks)".into(),
        ));
    }
    Ok(suite)
}

/// The perplexity stream of `src` (the resolved form of the spec `d`): ddp's convention (the
/// text as it is, documents joined by EOS), or llama-perplexity's (BOS first when the tokenizer
/// adds one, as `common_tokenize(.., add_special = true)` does on the file).
fn perplexity_input(
    spec: &SuiteSpec,
    d: &str,
    src: &str,
    tok: &Tokenizer,
) -> Result<PerplexityInput> {
    let bos = tok.bos_id.filter(|_| tok.add_bos);
    let llama = spec.protocol == Protocol::LlamaCpp;
    let mut ids: Vec<u32> = bos.filter(|_| llama).into_iter().collect();
    ids.extend(data::token_stream(src, tok, spec.max_tokens, false)?);
    ids.truncate(spec.max_tokens);
    let too_few = |what: String| Error::Source {
        spec: d.into(),
        what: format!("only {} tokens: {what}", ids.len()),
    };
    if llama {
        if spec.seq_len < 3 {
            return Err(Error::Invalid(format!(
                "seq_len {} is too short for llama.cpp's protocol, which scores the second half of each chunk after its first token: use at least 3",
                spec.seq_len
            )));
        }
        // llama-perplexity refuses fewer than two chunks' worth too.
        if ids.len() < 2 * spec.seq_len {
            return Err(too_few(format!(
                "llama.cpp's protocol needs at least 2 x seq_len = {} (max_tokens {}); give more text, a larger max_tokens or a smaller seq_len",
                2 * spec.seq_len,
                spec.max_tokens
            )));
        }
    } else if ids.len() < spec.seq_len {
        // A shorter text would be scored with less context than seq_len promises.
        return Err(too_few(format!(
            "fewer than one perplexity window of {} (seq_len); give more text or a smaller seq_len",
            spec.seq_len
        )));
    }
    let stride = match spec.stride {
        0 => spec.seq_len,
        s if llama => {
            return Err(Error::Invalid(format!(
                "stride {s} does not apply to llama.cpp's protocol (non-overlapping chunks): leave it at 0"
            )))
        }
        s if s > spec.seq_len => {
            return Err(Error::Invalid(format!(
                "stride {s} is longer than seq_len {}",
                spec.seq_len
            )))
        }
        s => s,
    };
    Ok(PerplexityInput {
        ids,
        window: spec.seq_len,
        stride,
        protocol: spec.protocol,
        bos,
    })
}

/// Loads a model and runs a suite on it, on the chosen backend.
pub struct EvalTask<'a> {
    /// The model.
    pub files: &'a ModelFiles,
    /// What to measure.
    pub suite: &'a Suite,
    /// Advanced once per scored sequence.
    pub bar: &'a ProgressBar,
}

impl BackendTask for EvalTask<'_> {
    type Output = Results;
    fn run<B: Backend>(self, device: B::Device) -> Result<Results> {
        let model = self.files.load::<B>(&device, None)?;
        let tok = self.files.tokenizer()?;
        self.bar.set_length(self.suite.requests() as u64);
        self.suite.run(&model, tok, self.bar)
    }
}
