//! Forward-pass throughput: prefill (tokens/s over a prompt) and decode (tokens/s generating
//! with the KV cache). Warm-up first, then repeated runs reported as median, min and max.

pub mod dense;
pub(crate) mod llama_cpp;
pub(crate) mod torch;
pub mod train;

use std::time::Instant;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use serde::Serialize;

use crate::backend::BackendTask;
use crate::error::Result;
use crate::io::ModelFiles;
use crate::model::{Logits, Model};

/// Summary of repeated measurements.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Stats {
    /// Stats of the samples `v`; panics when `v` is empty.
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

impl Stats {
    /// Half the range of the repeats relative to their median: a rough ± on the median.
    pub fn rel_half_range(&self) -> f64 {
        if self.median.abs() < f64::MIN_POSITIVE {
            return 0.0;
        }
        (self.max - self.min) / (2.0 * self.median.abs())
    }
}

/// Above this rough relative uncertainty of a ratio of medians, benchmarks say not to trust it.
pub const SPREAD_LIMIT: f64 = 0.05;

/// A warning when the repeats of `a` and `b` spread so widely that `a / b` (their medians) is
/// uncertain by more than [`SPREAD_LIMIT`]; `None` when the ratio can be read as printed.
pub fn spread_warning(a: &Stats, b: &Stats) -> Option<String> {
    let (ha, hb) = (a.rel_half_range(), b.rel_half_range());
    let u = ha + hb;
    (u > SPREAD_LIMIT).then(|| {
        format!(
            "warning: the repeats spread by ±{:.0} % and ±{:.0} %, so this ratio is uncertain by about ±{:.0} %; rerun on a quiet machine or with more repeats before reading it",
            100.0 * ha,
            100.0 * hb,
            100.0 * u
        )
    })
}

/// "ddp / NAME: prefill R x, decode R x" and the spread warnings that go with it.
pub fn ratio_lines(ours: &Throughput, name: &str, theirs: &Throughput) -> Vec<String> {
    let mut lines = vec![format!(
        "ddp / {name}: prefill {:.2}x, decode {:.2}x (ratio of medians)",
        ours.prefill_tok_s.median / theirs.prefill_tok_s.median,
        ours.decode_tok_s.median / theirs.decode_tok_s.median
    )];
    for (a, b) in [
        (&ours.prefill_tok_s, &theirs.prefill_tok_s),
        (&ours.decode_tok_s, &theirs.decode_tok_s),
    ] {
        lines.extend(spread_warning(a, b));
    }
    lines
}

/// One model's prefill and decode throughput at one batch size and prompt length.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Sequences per forward pass.
    pub batch: usize,
    /// Prompt length, tokens.
    pub prompt_len: usize,
    /// Tokens generated per sequence after the prompt.
    pub decode_tokens: usize,
    /// Timed runs (after the warm-up).
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

/// One model's prefill and decode figures; `on_run` is called after every run, warm-up
/// included (another engine's run can go there, so the two alternate).
pub fn throughput<B: Backend>(
    model: &Model<B>,
    batch: usize,
    prompt_len: usize,
    decode_tokens: usize,
    warmup: usize,
    repeats: usize,
    on_run: impl FnMut(),
) -> Throughput {
    let p = Protocol {
        prompt_lens: vec![prompt_len],
        batches: vec![batch],
        decode_tokens,
        warmup,
        repeats: repeats.max(1),
    };
    let m = side_by_side(&[("", model)], &p, on_run).remove(0);
    Throughput {
        batch,
        prompt_len,
        decode_tokens,
        repeats: p.repeats,
        prefill_tok_s: m.prefill[0].tok_s,
        decode_tok_s: m.decode.first().map_or(Stats::of(vec![0.0]), |d| d.tok_s),
    }
}

/// What a side-by-side benchmark measures.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Protocol {
    /// Prompt lengths to prefill, tokens.
    pub prompt_lens: Vec<usize>,
    /// Batch sizes; every one is run at every prompt length.
    pub batches: Vec<usize>,
    /// Generated after a prompt of the first length.
    pub decode_tokens: usize,
    /// Untimed runs first (decoding at most 4 tokens).
    pub warmup: usize,
    /// Timed runs per model, batch size and prompt length.
    pub repeats: usize,
}

/// Throughput at one batch size and prompt length.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Sequences per forward pass.
    pub batch: usize,
    /// Prompt length, tokens.
    pub prompt_len: usize,
    /// Tokens per second (batch included) over the timed runs.
    pub tok_s: Stats,
}

/// One model's figures under a protocol.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// The model's label.
    pub label: String,
    /// Prefill, per batch size and, within each, per prompt length.
    pub prefill: Vec<Point>,
    /// Decode after a prompt of `prompt_lens[0]`, per batch size.
    pub decode: Vec<Point>,
}

impl Protocol {
    /// Timed runs in all (for a progress bar), warm-up included.
    pub fn runs(&self, models: usize) -> usize {
        (self.warmup + self.repeats) * models * self.batches.len() * self.prompt_lens.len()
    }
}

/// Measures models in the same process, alternating between them inside every repeat (and
/// reversing the order on odd repeats), so drift of a noisy machine hits all of them alike.
pub fn side_by_side<B: Backend>(
    models: &[(&str, &Model<B>)],
    p: &Protocol,
    mut on_run: impl FnMut(),
) -> Vec<Measured> {
    let n = models.len();
    let cells = p.batches.len() * p.prompt_lens.len();
    let mut prefill = vec![vec![vec![]; cells]; n];
    let mut decode = vec![vec![vec![]; p.batches.len()]; n];
    for r in 0..p.warmup + p.repeats {
        let timed = r >= p.warmup;
        for (bi, &b) in p.batches.iter().enumerate() {
            for (pi, &len) in p.prompt_lens.iter().enumerate() {
                let dec = if pi == 0 { p.decode_tokens } else { 0 };
                let order: Vec<usize> = if r % 2 == 0 {
                    (0..n).collect()
                } else {
                    (0..n).rev().collect()
                };
                for m in order {
                    let (pf, dc) =
                        run_once(models[m].1, b, len, if timed { dec } else { dec.min(4) });
                    on_run();
                    if timed {
                        prefill[m][bi * p.prompt_lens.len() + pi].push(pf);
                        if dec > 0 {
                            decode[m][bi].push(dc);
                        }
                    }
                }
            }
        }
    }
    models
        .iter()
        .enumerate()
        .map(|(m, (label, _))| Measured {
            label: label.to_string(),
            prefill: p
                .batches
                .iter()
                .enumerate()
                .flat_map(|(bi, &batch)| {
                    let pf = &prefill[m];
                    p.prompt_lens
                        .iter()
                        .enumerate()
                        .map(move |(pi, &len)| Point {
                            batch,
                            prompt_len: len,
                            tok_s: Stats::of(pf[bi * p.prompt_lens.len() + pi].clone()),
                        })
                })
                .collect(),
            decode: p
                .batches
                .iter()
                .enumerate()
                .filter(|_| p.decode_tokens > 0)
                .map(|(bi, &batch)| Point {
                    batch,
                    prompt_len: p.prompt_lens[0],
                    tok_s: Stats::of(decode[m][bi].clone()),
                })
                .collect(),
        })
        .collect()
}

/// Resident memory of this process in MB: (now, peak). Linux only (None elsewhere).
pub fn memory_mb() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Dense and pruned measured side by side, with the ideal speed-up from FLOPs per token.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// What was measured.
    pub protocol: Protocol,
    /// The build, backend, device and threads.
    pub build: String,
    /// The device's name, as the caller gave it.
    pub device: String,
    /// First the baseline (dense), then the candidate.
    pub models: Vec<Measured>,
    /// FLOPs per token of each model in prefill, per prompt length (at the mean context).
    pub flops_prefill: Vec<Vec<f64>>,
    /// FLOPs per token of each model in decode (at the mean context).
    pub flops_decode: Vec<f64>,
    /// Parameters of each model.
    pub params: Vec<usize>,
    /// Weights held on the device (f32), MB, per model.
    pub weights_mb: Vec<f64>,
    /// The process's peak resident memory, MB (all models and activations of the run
    /// together); NaN where it cannot be read (off Linux).
    pub peak_rss_mb: f64,
}

impl Comparison {
    /// Flat metrics: the candidate's throughputs, the baseline's, measured and ideal speed-ups.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let mut m = std::collections::BTreeMap::new();
        let ci = self.models.len() - 1;
        let (base, cand) = (&self.models[0], &self.models[ci]);
        let two = ci > 0;
        for (i, (b, c)) in base.prefill.iter().zip(&cand.prefill).enumerate() {
            let k = format!("b{}.p{}", c.batch, c.prompt_len);
            m.insert(format!("prefill_tok_s.{k}"), c.tok_s.median);
            if two {
                m.insert(format!("dense.prefill_tok_s.{k}"), b.tok_s.median);
                m.insert(
                    format!("speedup.prefill.{k}"),
                    c.tok_s.median / b.tok_s.median,
                );
                m.insert(
                    format!("uncertainty.prefill.{k}"),
                    c.tok_s.rel_half_range() + b.tok_s.rel_half_range(),
                );
                let pi = i % self.protocol.prompt_lens.len();
                m.insert(
                    format!("ideal.prefill.p{}", c.prompt_len),
                    self.flops_prefill[0][pi] / self.flops_prefill[ci][pi],
                );
            }
        }
        for (b, c) in base.decode.iter().zip(&cand.decode) {
            let k = format!("b{}", c.batch);
            m.insert(format!("decode_tok_s.{k}"), c.tok_s.median);
            if two {
                m.insert(format!("dense.decode_tok_s.{k}"), b.tok_s.median);
                m.insert(
                    format!("speedup.decode.{k}"),
                    c.tok_s.median / b.tok_s.median,
                );
                m.insert(
                    format!("uncertainty.decode.{k}"),
                    c.tok_s.rel_half_range() + b.tok_s.rel_half_range(),
                );
                m.insert(
                    "ideal.decode".into(),
                    self.flops_decode[0] / self.flops_decode[ci],
                );
            }
        }
        m.insert("peak_rss_mb".into(), self.peak_rss_mb);
        m
    }

    /// The report: protocol, a row per model, phase and shape with measured and ideal
    /// speed-ups, spread warnings and memory.
    pub fn markdown(&self) -> String {
        let p = &self.protocol;
        let mut s = format!(
            "protocol: prefill {:?} tokens, decode {} tokens after {} with the KV cache; batch {:?}; {} runs after {} warm-up, models alternating\nbuild: {} on {}\n\n",
            p.prompt_lens, p.decode_tokens, p.prompt_lens[0], p.batches, p.repeats, p.warmup, self.build, self.device
        );
        s += "| model | params | phase | batch | prompt | tok/s median [min, max] | speed-up | ideal (FLOPs) |\n|---|---:|---|---:|---:|---|---:|---:|\n";
        let base = &self.models[0];
        for (mi, m) in self.models.iter().enumerate() {
            let fmt = |t: &Stats| format!("{:.1} [{:.1}, {:.1}]", t.median, t.min, t.max);
            for (i, pt) in m.prefill.iter().enumerate() {
                let pi = i % p.prompt_lens.len();
                let (sp, ideal) = if mi == 0 {
                    ("1.00x".into(), "1.00x".into())
                } else {
                    (
                        format!("{:.2}x", pt.tok_s.median / base.prefill[i].tok_s.median),
                        format!(
                            "{:.2}x",
                            self.flops_prefill[0][pi] / self.flops_prefill[mi][pi]
                        ),
                    )
                };
                s += &format!(
                    "| {} | {} | prefill | {} | {} | {} | {sp} | {ideal} |\n",
                    m.label,
                    self.params[mi],
                    pt.batch,
                    pt.prompt_len,
                    fmt(&pt.tok_s)
                );
            }
            for (i, pt) in m.decode.iter().enumerate() {
                let (sp, ideal) = if mi == 0 {
                    ("1.00x".into(), "1.00x".into())
                } else {
                    (
                        format!("{:.2}x", pt.tok_s.median / base.decode[i].tok_s.median),
                        format!("{:.2}x", self.flops_decode[0] / self.flops_decode[mi]),
                    )
                };
                s += &format!(
                    "| {} | {} | decode | {} | {} | {} | {sp} | {ideal} |\n",
                    m.label,
                    self.params[mi],
                    pt.batch,
                    pt.prompt_len,
                    fmt(&pt.tok_s)
                );
            }
        }
        for w in self.warnings() {
            s += &format!("\n{w}\n");
        }
        s += &format!(
            "\nmemory: weights (f32) {} MB; process peak resident {:.0} MB (both models together)\n",
            self.models
                .iter()
                .zip(&self.weights_mb)
                .map(|(m, r)| format!("{} {r:.0}", m.label))
                .collect::<Vec<_>>()
                .join(", "),
            self.peak_rss_mb
        );
        s
    }
}

impl Comparison {
    /// One line per measured speed-up whose repeats spread too widely to read it.
    pub fn warnings(&self) -> Vec<String> {
        let base = &self.models[0];
        let mut out = vec![];
        for m in &self.models[1..] {
            let pairs = m
                .prefill
                .iter()
                .zip(&base.prefill)
                .map(|(c, b)| ("prefill", c, b))
                .chain(
                    m.decode
                        .iter()
                        .zip(&base.decode)
                        .map(|(c, b)| ("decode", c, b)),
                );
            for (phase, c, b) in pairs {
                if let Some(w) = spread_warning(&c.tok_s, &b.tok_s) {
                    out.push(format!(
                        "{}: {phase} batch {} prompt {}: speed-up {:.2}x — {w}",
                        m.label,
                        c.batch,
                        c.prompt_len,
                        c.tok_s.median / b.tok_s.median
                    ));
                }
            }
        }
        out
    }
}

/// Measures loaded models side by side and computes the ideal speed-ups.
pub fn compare<B: Backend>(
    models: Vec<(String, Model<B>)>,
    p: &Protocol,
    device: &str,
    on_run: impl FnMut(),
) -> Comparison {
    use crate::model::accounting;
    let refs: Vec<(&str, &Model<B>)> = models.iter().map(|(l, m)| (l.as_str(), m)).collect();
    let measured = side_by_side(&refs, p, on_run);
    let dec_ctx = p.prompt_lens[0] + p.decode_tokens / 2;
    Comparison {
        protocol: p.clone(),
        build: crate::backend::build_info(),
        device: device.to_string(),
        flops_prefill: models
            .iter()
            .map(|(_, m)| {
                p.prompt_lens
                    .iter()
                    .map(|&l| accounting::flops_per_token(&m.config, l.div_ceil(2)))
                    .collect()
            })
            .collect(),
        flops_decode: models
            .iter()
            .map(|(_, m)| accounting::flops_per_token(&m.config, dec_ctx))
            .collect(),
        params: models
            .iter()
            .map(|(_, m)| accounting::count(&m.config).total)
            .collect(),
        weights_mb: models
            .iter()
            .map(|(_, m)| accounting::count(&m.config).total as f64 * 4.0 / 1e6)
            .collect(),
        peak_rss_mb: memory_mb().map_or(f64::NAN, |m| m.1),
        models: measured,
    }
}

/// Loads the models and compares them (the `benchmark` stage and `ddp-run bench --vs`).
pub struct CompareTask<'a> {
    /// The models by label, measured in this order in every round.
    pub models: Vec<(&'a str, &'a ModelFiles)>,
    /// Lengths, batches, repeats.
    pub protocol: &'a Protocol,
    /// The device's name, for the report.
    pub device: &'a str,
    /// Advanced once per timed or warm-up run.
    pub bar: &'a indicatif::ProgressBar,
}

impl BackendTask for CompareTask<'_> {
    type Output = Comparison;
    fn run<B: Backend>(self, device: B::Device) -> Result<Comparison> {
        let mut loaded = vec![];
        for (label, f) in &self.models {
            let m = f.load::<B>(&device, None)?;
            loaded.push((label.to_string(), m));
        }
        self.bar.set_length(self.protocol.runs(loaded.len()) as u64);
        Ok(compare(loaded, self.protocol, self.device, || {
            self.bar.inc(1)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tight repeats give no warning; wide ones name both spreads and the ratio's uncertainty.
    #[test]
    fn spread_warning_speaks_only_when_the_ratio_is_unsure() {
        let tight = Stats::of(vec![99.0, 100.0, 101.0]);
        assert_eq!(spread_warning(&tight, &tight), None);
        let wide = Stats::of(vec![80.0, 100.0, 120.0]);
        let w = spread_warning(&wide, &tight).expect("±20 % is too wide");
        assert!(
            w.contains("±20 %") && w.contains("±1 %") && w.contains("±21 %"),
            "{w}"
        );
    }
}
