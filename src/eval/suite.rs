//! A set of measurements on one model, run together with one progress bar: what the
//! `evaluate` stage and `ddp-run eval` share.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::cloze::{self, ClozeItem, ClozeResult};
use super::mc::{self, Item, McResult};
use super::perplexity::{self, Perplexity};
use super::score::Scorer;
use crate::error::Result;
use crate::io::tokenizer::Tokenizer;
use crate::model::Model;

/// What to measure.
#[derive(Debug, Clone, Default)]
pub struct Suite {
    /// Token stream, window, stride.
    pub perplexity: Option<(Vec<u32>, usize, usize)>,
    pub lambada: Vec<ClozeItem>,
    pub cloze_mc: Vec<Item>,
    /// Task name -> (layout, items).
    pub tasks: BTreeMap<String, (String, Vec<Item>)>,
    /// Longest sequence scored for cloze and tasks (contexts are cut from the left).
    pub max_len: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub perplexity: Option<Perplexity>,
    pub lambada: Option<ClozeResult>,
    pub cloze_mc: Option<McResult>,
    pub tasks: BTreeMap<String, McResult>,
}

impl Suite {
    /// Sequences to score (for a progress bar's length).
    pub fn requests(&self) -> usize {
        let ppl = self.perplexity.as_ref().map_or(0, |(ids, w, s)| {
            perplexity::windows(ids.len(), *w, *s).len()
        });
        let mc = |items: &[Item]| items.iter().map(Item::choices).sum::<usize>();
        ppl + self.lambada.len()
            + mc(&self.cloze_mc)
            + self.tasks.values().map(|(_, i)| mc(i)).sum::<usize>()
    }

    pub fn run<B: Backend>(
        &self,
        model: &Model<B>,
        tok: &Tokenizer,
        bar: &ProgressBar,
    ) -> Result<Results> {
        let scorer = Scorer::new(model);
        let tick = |n: usize| bar.inc(n as u64);
        let mut r = Results::default();
        if let Some((ids, w, s)) = &self.perplexity {
            bar.set_message("perplexity");
            r.perplexity = Some(perplexity::perplexity(&scorer, ids, *w, *s, tick));
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
