//! `calibrate`: text -> token blocks (train and validation) with the model's tokenizer.

use anyhow::{Context, Result};

use super::common::{forward_model_json, open_input, write_json};
use crate::artifacts::{ACTIVATION_STATS, BLOCKS};
use crate::backend::{run_on, BackendTask, DeviceSpec};
use crate::data;
use crate::engine::params::{int, int_in, StageParams};
use crate::engine::stage::{
    InputSpec, Metrics, ParamSpec, ParamType, Params, StageContext, StageKind,
};
use crate::io::ModelFiles;
use crate::prune::oneshot::{self, LayerStats};
use crate::prune::teacher::{self, TopK};

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "calibrate";

/// The `calibrate` stage kind.
pub struct Calibrate {
    /// Where its models run (the `--device` the registry was built for).
    pub device: DeviceSpec,
}

crate::stage_params! {
    /// The `calibrate` stage's parameters.
    pub struct CalibrateParams {
        /// text source: a file, a directory of .txt, DIR/*.EXT, or a .jsonl with a `text` field
        data: String => ParamType::Str,
        /// tokens per block
        seq_len: usize = 256 => int_in(2, 1 << 20),
        /// cap on the tokens read
        max_tokens: usize = 200_000 => int(2),
        /// run the dense model over the first N training blocks and record the inputs of every o_proj and down_proj (needed by the oneshot methods wanda-sp and flap); 0: skip
        activation_stats: usize = 0 => int_in(0, 1 << 20),
        /// cache the dense model's top-k next-token log-probabilities (plus the tail mass) of every training block, for anneal-train teacher = "cached"; 0: skip
        teacher_topk: usize = 0 => int_in(0, 1 << 20),
        /// every N-th block goes to validation (0: none)
        val_every: usize = 10 => int_in(0, 1 << 20),
    }
}

impl StageKind for Calibrate {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        2
    }
    fn about(&self) -> &'static str {
        "Tokenise a text source (file, directory, DIR/*.EXT, JSONL with a text field, npm:PKG@VER:GLOB) into blocks of seq_len tokens, split train/validation deterministically; optionally run the dense model once for activation statistics (one-shot baselines) and cached top-k teacher distributions."
    }
    fn params(&self) -> Vec<ParamSpec> {
        CalibrateParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec {
            optional: false,
            name: "model",
            kinds: &[super::load::KIND],
            doc: "whose tokenizer to use",
        }]
    }
    fn external_files(
        &self,
        params: &Params,
        _cache: &std::path::Path,
    ) -> Result<Vec<std::path::PathBuf>> {
        // A registry package pins its version; local files are identified by their digests.
        let spec = CalibrateParams::from_params(params, self.name())
            .map_err(anyhow::Error::msg)?
            .data;
        if spec.starts_with("npm:") {
            return Ok(vec![]);
        }
        Ok(data::source_files(&spec)?)
    }
    fn headline(&self) -> Option<&'static str> {
        Some("train_blocks")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let input = ctx.input("model")?;
        let files = open_input(input, ctx.cache_root)?;
        let tok = files
            .tokenizer
            .as_ref()
            .context("the model has no tokenizer")?;
        let p = ctx.typed::<CalibrateParams>()?;
        let source = data::resolve(&p.data, ctx.cache_root)?;
        let b = data::blocks(&source, tok, p.seq_len, p.max_tokens, p.val_every)?;
        write_json(&ctx.out_dir.join(BLOCKS), &b)?;
        let n_stats = p.activation_stats.min(b.train.len());
        let topk = p.teacher_topk;
        if n_stats > 0 || topk > 0 {
            let device = self.device;
            let (stats, teacher) = run_on(
                device,
                DenseTask {
                    files: &files,
                    blocks: &b.train,
                    n_stats,
                    topk,
                    bar: ctx.progress,
                },
            )?;
            if let Some(s) = stats {
                write_json(&ctx.out_dir.join(ACTIVATION_STATS), &s)?;
            }
            if let Some(t) = teacher {
                t.write(ctx.out_dir)?;
            }
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

/// One load of the dense model for what calibration can precompute with it.
struct DenseTask<'a> {
    files: &'a ModelFiles,
    blocks: &'a [Vec<u32>],
    n_stats: usize,
    topk: usize,
    bar: &'a indicatif::ProgressBar,
}

impl BackendTask for DenseTask<'_> {
    type Output = (Option<Vec<LayerStats>>, Option<TopK>);
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: B::Device,
    ) -> crate::Result<Self::Output> {
        let mut model = self.files.load::<B>(&device, None)?;
        let (n, topk) = (self.n_stats, self.topk);
        let work = if topk > 0 { self.blocks.len() } else { n };
        self.bar.set_length(work as u64);
        let tick = || self.bar.inc(1);
        // With both, the first n blocks of the teacher pass feed the probes too: one pass.
        let (stats, teacher) = match (n > 0, topk > 0) {
            (true, true) => {
                let probes = oneshot::Probes::attach(&mut model);
                let mut t = teacher::compute(&model, &self.blocks[..n], topk, tick);
                let stats = probes.detach(&mut model);
                if n < self.blocks.len() {
                    t.append(teacher::compute(&model, &self.blocks[n..], topk, tick));
                }
                (Some(stats), Some(t))
            }
            (true, false) => {
                let s = oneshot::activation_stats(&mut model, &self.blocks[..n], 4, |k| {
                    self.bar.inc(k as u64)
                });
                (Some(s), None)
            }
            (false, true) => (
                None,
                Some(teacher::compute(&model, self.blocks, topk, tick)),
            ),
            (false, false) => (None, None),
        };
        Ok((stats, teacher))
    }
}
