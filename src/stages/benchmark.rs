//! `benchmark`: prefill and decode throughput of a pruned model and the dense one, measured in
//! the same run, alternating, with the ideal speed-up from FLOPs per token beside the measured.

use anyhow::Result;

use super::common::{open_input, write_json};
use crate::artifacts::{BENCH, BENCH_MD};
use crate::backend::{run_on, DeviceSpec};
use crate::bench::{CompareTask, Protocol};
use crate::engine::params::{int_in, StageParams};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind};

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "benchmark";

/// The `benchmark` stage kind.
pub struct Benchmark {
    /// Where its models run (the `--device` the registry was built for).
    pub device: DeviceSpec,
}

crate::stage_params! {
    /// The `benchmark` stage's parameters.
    pub struct BenchmarkParams {
        /// prefill prompt lengths (decode follows the first)
        prompt_lens: Vec<usize> = vec![128, 512] => ParamType::IntList { min: 1, max: 1 << 20 },
        /// batch sizes
        batches: Vec<usize> = vec![1, 8] => ParamType::IntList { min: 1, max: 4096 },
        /// tokens generated with the KV cache (0: no decode)
        decode_tokens: usize = 128 => int_in(0, 1 << 20),
        /// timed runs per model and setting
        repeats: usize = 3 => int_in(1, 1000),
        /// untimed runs first
        warmup: usize = 1 => int_in(0, 100),
    }
}

impl StageKind for Benchmark {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "Prefill and KV-cached decode throughput of a model and the dense one, alternating in one run (median, min, max), peak memory, and the ideal speed-up from FLOPs per token."
    }
    fn params(&self) -> Vec<ParamSpec> {
        BenchmarkParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "model",
                kinds: &[super::slice::KIND, super::load::KIND],
                doc: "the model to measure",
            },
            InputSpec {
                optional: true,
                name: "dense",
                kinds: &[super::load::KIND],
                doc: "the dense model, measured alongside",
            },
        ]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("speedup.decode.b1")
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let cand = open_input(ctx.input("model")?, ctx.cache_root)?;
        let dense = match ctx.inputs.get("dense") {
            Some(d) => Some(open_input(d, ctx.cache_root)?),
            None => None,
        };
        let p = ctx.typed::<BenchmarkParams>()?;
        let protocol = Protocol {
            prompt_lens: p.prompt_lens,
            batches: p.batches,
            decode_tokens: p.decode_tokens,
            warmup: p.warmup,
            repeats: p.repeats,
        };
        let mut models = vec![];
        if let Some(d) = &dense {
            models.push(("dense", d));
        }
        models.push(("pruned", &cand));
        let device = self.device;
        let c = run_on(
            device,
            CompareTask {
                models,
                protocol: &protocol,
                device: &self.device.to_string(),
                bar: ctx.progress,
            },
        )?;
        write_json(&ctx.out_dir.join(BENCH), &c)?;
        std::fs::write(
            ctx.out_dir.join(BENCH_MD),
            format!("# Benchmark: {}\n\n{}", ctx.instance, c.markdown()),
        )?;
        Ok(c.metrics())
    }
}
