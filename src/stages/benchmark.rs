//! `benchmark`: prefill and decode throughput of a pruned model and the dense one, measured in
//! the same run, alternating, with the ideal speed-up from FLOPs per token beside the measured.

use anyhow::Result;
use burn::tensor::backend::Backend;
use toml::Value;

use super::common::{model_path, write_json};
use crate::backend::{run_on, BackendTask, DeviceSpec};
use crate::bench::{self, Comparison, Protocol};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};
use crate::io::{self, ModelFiles};
use crate::model::load::load_model;

pub struct Benchmark;

fn ints(v: &[i64]) -> Option<Value> {
    Some(Value::Array(v.iter().map(|&i| Value::Integer(i)).collect()))
}

impl StageKind for Benchmark {
    fn name(&self) -> &'static str {
        "benchmark"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Prefill and KV-cached decode throughput of a model and the dense one, alternating in one run (median, min, max), peak memory, and the ideal speed-up from FLOPs per token."
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "prompt_lens",
                ty: ParamType::IntList {
                    min: 1,
                    max: 1 << 20,
                },
                default: ints(&[128, 512]),
                doc: "prefill prompt lengths (decode follows the first)",
            },
            ParamSpec {
                name: "batches",
                ty: ParamType::IntList { min: 1, max: 4096 },
                default: ints(&[1, 8]),
                doc: "batch sizes",
            },
            ParamSpec {
                name: "decode_tokens",
                ty: ParamType::Int {
                    min: 0,
                    max: 1 << 20,
                },
                default: Some(Value::Integer(128)),
                doc: "tokens generated with the KV cache (0: no decode)",
            },
            ParamSpec {
                name: "repeats",
                ty: ParamType::Int { min: 1, max: 1000 },
                default: Some(Value::Integer(3)),
                doc: "timed runs per model and setting",
            },
            ParamSpec {
                name: "warmup",
                ty: ParamType::Int { min: 0, max: 100 },
                default: Some(Value::Integer(1)),
                doc: "untimed runs first",
            },
        ]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "model",
                kinds: &["slice", "load"],
                doc: "the model to measure",
            },
            InputSpec {
                optional: true,
                name: "dense",
                kinds: &["load"],
                doc: "the dense model, measured alongside",
            },
        ]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("speedup.decode.b1")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let cand = io::open_model(&model_path(ctx.input("model")?, ctx.cache_root)?)?;
        let dense = match ctx.inputs.get("dense") {
            Some(d) => Some(io::open_model(&model_path(d, ctx.cache_root)?)?),
            None => None,
        };
        let protocol = Protocol {
            prompt_lens: ctx.ints("prompt_lens"),
            batches: ctx.ints("batches"),
            decode_tokens: ctx.int("decode_tokens") as usize,
            warmup: ctx.int("warmup") as usize,
            repeats: ctx.int("repeats") as usize,
        };
        let mut models = vec![];
        if let Some(d) = &dense {
            models.push(("dense", d));
        }
        models.push(("pruned", &cand));
        let device: DeviceSpec = ctx.device.parse()?;
        let c = run_on(
            device,
            BenchTask {
                models,
                protocol: &protocol,
                device: ctx.device,
                bar: ctx.progress,
            },
        )?;
        write_json(&ctx.out_dir.join("bench.json"), &c)?;
        std::fs::write(
            ctx.out_dir.join("bench.md"),
            format!("# Benchmark: {}\n\n{}", ctx.instance, c.markdown()),
        )?;
        Ok(c.metrics())
    }
}

/// Loads the models and compares them (shared with `ddp-run bench --vs`).
pub struct BenchTask<'a> {
    pub models: Vec<(&'a str, &'a ModelFiles)>,
    pub protocol: &'a Protocol,
    pub device: &'a str,
    pub bar: &'a indicatif::ProgressBar,
}

impl BackendTask for BenchTask<'_> {
    type Output = Comparison;
    fn run<B: Backend>(self, device: B::Device) -> crate::Result<Comparison> {
        let mut loaded = vec![];
        for (label, f) in &self.models {
            let m = load_model::<B>(&f.config, f.weights.as_ref(), &device, None)?;
            loaded.push((label.to_string(), m));
        }
        self.bar.set_length(self.protocol.runs(loaded.len()) as u64);
        Ok(bench::compare(loaded, self.protocol, self.device, || {
            self.bar.inc(1)
        }))
    }
}
