//! `calibrate`: text -> token blocks (train and validation) with the model's tokenizer.

use anyhow::{Context, Result};
use toml::Value;

use super::common::{forward_model_json, model_path, write_json};
use crate::backend::{run_on, BackendTask, DeviceSpec};
use crate::data;
use crate::engine::stage::{
    InputSpec, Metrics, ParamSpec, ParamType, Params, StageContext, StageKind,
};
use crate::io::{self, ModelFiles};
use crate::model::load::load_model;
use crate::prune::oneshot::{self, LayerStats};

pub struct Calibrate;

impl StageKind for Calibrate {
    fn name(&self) -> &'static str {
        "calibrate"
    }
    fn version(&self) -> u32 {
        2
    }
    fn about(&self) -> &'static str {
        "Tokenise a text source (file, directory, DIR/*.EXT, or JSONL with a text field) into blocks of seq_len tokens, split train/validation deterministically."
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec { name: "data", ty: ParamType::Str, default: None, doc: "text source: a file, a directory of .txt, DIR/*.EXT, or a .jsonl with a `text` field" },
            ParamSpec { name: "seq_len", ty: ParamType::Int { min: 2, max: 1 << 20 }, default: Some(Value::Integer(256)), doc: "tokens per block" },
            ParamSpec { name: "max_tokens", ty: ParamType::Int { min: 2, max: i64::MAX }, default: Some(Value::Integer(200_000)), doc: "cap on the tokens read" },
            ParamSpec { name: "activation_stats", ty: ParamType::Int { min: 0, max: 1 << 20 }, default: Some(Value::Integer(0)), doc: "run the dense model over the first N training blocks and record the inputs of every o_proj and down_proj (needed by the oneshot methods wanda-sp and flap); 0: skip" },
            ParamSpec { name: "val_every", ty: ParamType::Int { min: 0, max: 1 << 20 }, default: Some(Value::Integer(10)), doc: "every N-th block goes to validation (0: none)" },
        ]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "model",
            kinds: &["load"],
            doc: "whose tokenizer to use",
        }]
    }
    fn external_files(
        &self,
        params: &Params,
        _cache: &std::path::Path,
    ) -> Result<Vec<std::path::PathBuf>> {
        // A registry package pins its version; local files are identified by their digests.
        let spec = params
            .get("data")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if spec.starts_with("npm:") {
            return Ok(vec![]);
        }
        Ok(data::source_files(spec)?)
    }
    fn headline(&self) -> Option<&'static str> {
        Some("train_blocks")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("model")?;
        let files = io::open_model(&model_path(input, ctx.cache_root)?)?;
        let tok = files
            .tokenizer
            .as_ref()
            .context("the model has no tokenizer")?;
        let source = data::resolve(ctx.str("data"), ctx.cache_root)?;
        let b = data::blocks(
            &source,
            tok,
            ctx.int("seq_len") as usize,
            ctx.int("max_tokens") as usize,
            ctx.int("val_every") as usize,
        )?;
        write_json(&ctx.out_dir.join("blocks.json"), &b)?;
        let n_stats = (ctx.int("activation_stats") as usize).min(b.train.len());
        if n_stats > 0 {
            let device: DeviceSpec = ctx.device.parse()?;
            let stats = run_on(
                device,
                StatsTask {
                    files: &files,
                    blocks: &b.train[..n_stats],
                    bar: ctx.progress,
                },
            )?;
            write_json(&ctx.out_dir.join("activation_stats.json"), &stats)?;
        }
        forward_model_json(input, ctx.out_dir)?;
        Ok(Metrics::from([
            ("train_blocks".into(), b.train.len() as f64),
            ("validation_blocks".into(), b.validation.len() as f64),
            (
                "tokens".into(),
                ((b.train.len() + b.validation.len()) * b.seq_len) as f64,
            ),
        ]))
    }
}

struct StatsTask<'a> {
    files: &'a ModelFiles,
    blocks: &'a [Vec<u32>],
    bar: &'a indicatif::ProgressBar,
}

impl BackendTask for StatsTask<'_> {
    type Output = Vec<LayerStats>;
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: B::Device,
    ) -> crate::Result<Self::Output> {
        let mut model = load_model::<B>(
            &self.files.config,
            self.files.weights.as_ref(),
            &device,
            None,
        )?;
        self.bar.set_length(self.blocks.len() as u64);
        oneshot::activation_stats(&mut model, self.blocks, 4, |n| self.bar.inc(n as u64))
    }
}
