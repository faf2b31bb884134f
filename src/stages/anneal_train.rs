//! `anneal-train`: mask-only DDP training of the gates (prune::train) on calibration blocks,
//! with the dense model as its own teacher. Checkpoints into its output directory every
//! `checkpoint_every` steps and resumes from there after a kill, reaching the same result.

use std::io::Write;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;

use super::common::{forward_model_json, open_input, read_json, write_json};
use crate::artifacts::{BLOCKS, CHECKPOINT, GATES, TEACHER_HEADER, TRAIN_LOG};
use crate::backend::{run_autodiff_on, AutodiffTask, DeviceSpec};
use crate::data::Blocks;
use crate::engine::params::{choice, float, int, StageParams};
use crate::engine::stage::{InputSpec, Metrics, ParamSpec, StageContext, StageKind};
use crate::io::ModelFiles;
use crate::prune::teacher::TopK;
use crate::prune::train::{self, GateState, Method, TrainConfig};

/// The kind's name in recipes and cache paths.
pub const KIND: &str = "anneal-train";

/// The `anneal-train` stage kind.
pub struct AnnealTrain {
    /// Where its models run (the `--device` the registry was built for).
    pub device: DeviceSpec,
}

crate::choice_enum! {
    /// The training method of `anneal-train` (see [`Method`]).
    pub enum TrainMethod {
        /// DDP (this paper).
        Ddp = "ddp",
        /// Stochastic hard-concrete gates (CoFi / Sheared-LLaMA).
        HardConcrete = "hard-concrete",
        /// Hard-concrete gates with the noise fixed at 1/2.
        DetHardConcrete = "det-hard-concrete",
    }
}

impl From<TrainMethod> for Method {
    fn from(m: TrainMethod) -> Self {
        match m {
            TrainMethod::Ddp => Method::Ddp,
            TrainMethod::HardConcrete => Method::HardConcrete,
            TrainMethod::DetHardConcrete => Method::DetHardConcrete,
        }
    }
}

crate::choice_enum! {
    /// Where `anneal-train` gets the teacher's distributions.
    pub enum Teacher {
        /// The dense model, run every step.
        Online = "online",
        /// `calibrate`'s cached top-k distributions.
        Cached = "cached",
    }
}

crate::stage_params! {
    /// The `anneal-train` stage's parameters.
    pub struct AnnealTrainParams {
        /// ddp (this paper), or the baselines: hard-concrete (stochastic, CoFi/Sheared-LLaMA Lagrangian with a warmed-up target), det-hard-concrete (noise fixed at 1/2)
        method: TrainMethod = "ddp" => choice::<TrainMethod>(),
        /// distil from the dense model run every step (online, exact), or from calibrate's cached top-k distributions (needs calibrate teacher_topk > 0; shared by every run of a sweep)
        teacher: Teacher = "online" => choice::<Teacher>(),
        /// optimiser steps (the paper: 1000 of 16 x 2048 tokens)
        steps: usize = 200 => int(1),
        /// linear warm-up steps before the cosine schedule (the paper: 100)
        warmup: usize = 20 => int(0),
        /// blocks per micro-batch
        batch: usize = 1 => int(1),
        /// micro-batches per step
        grad_accum: usize = 1 => int(1),
        /// learning rate of the gates z
        lr_z: f64 = 2e-2 => float(0.0, 10.0),
        /// learning rate of lambda1 and lambda3 (ascent)
        lr_lambda: f64 = 2e-2 => float(0.0, 10.0),
        /// learning rate of lambda2 (ascent)
        lr_lambda2: f64 = 0.4 => float(0.0, 10.0),
        /// weight of KL(teacher || student)
        eta: f64 = 2.0 => float(0.0, 100.0),
        /// initial annealing temperature mu_0
        mu0: f64 = 0.5 => float(1e-6, 10.0),
        /// final mu_T (paper 0.05, reference code 0.1)
        mu_end: f64 = 0.1 => float(1e-6, 10.0),
        /// order of the training blocks
        seed: u64 = 0 => int(0),
        /// steps between checkpoints (resume after a kill)
        checkpoint_every: usize = 25 => int(1),
    }
}

impl StageKind for AnnealTrain {
    fn name(&self) -> &'static str {
        KIND
    }
    fn version(&self) -> u32 {
        // 2: train_log.csv gains seconds and tokens per step, metrics tokens_per_s.
        2
    }
    fn about(&self) -> &'static str {
        "Train the gates mask-only (weights frozen) with the DDP annealed l0 surrogate, learned Lagrange multipliers and distillation from the dense model."
    }
    fn params(&self) -> Vec<ParamSpec> {
        AnnealTrainParams::specs()
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec {
                optional: false,
                name: "gates",
                kinds: &[super::gate_insert::KIND],
                doc: "gate families, targets and initial z",
            },
            InputSpec {
                optional: false,
                name: "data",
                kinds: &[super::calibrate::KIND],
                doc: "training blocks",
            },
        ]
    }
    fn headline(&self) -> Option<&'static str> {
        Some("loss")
    }
    fn resume_files(&self) -> &'static [&'static str] {
        &[CHECKPOINT, TRAIN_LOG]
    }
    fn run(&self, ctx: &StageContext) -> Result<Metrics> {
        let gates_in = ctx.input("gates")?;
        let files = open_input(gates_in, ctx.cache_root)?;
        let data_dir = &ctx.input("data")?.dir;
        let blocks: Blocks = read_json(&data_dir.join(BLOCKS))?;
        let p = ctx.typed::<AnnealTrainParams>()?;
        let teacher = match p.teacher {
            Teacher::Cached if !data_dir.join(TEACHER_HEADER).is_file() => anyhow::bail!(
                "stage {}: teacher = \"cached\" needs the calibrate stage to cache the teacher (set its teacher_topk, e.g. 64)",
                ctx.instance
            ),
            Teacher::Cached => Some(TopK::read(data_dir)?),
            Teacher::Online => None,
        };
        let ckpt = ctx.out_dir.join(CHECKPOINT);
        let mut state: GateState = if ckpt.exists() {
            read_json(&ckpt).with_context(|| format!("resuming from {CHECKPOINT}"))?
        } else {
            read_json(&gates_in.dir.join(GATES))?
        };
        let resumed_at = state.step;
        let cfg = TrainConfig {
            method: p.method.into(),
            steps: p.steps,
            warmup: p.warmup,
            batch: p.batch,
            grad_accum: p.grad_accum,
            lr_z: p.lr_z,
            lr_lambda: p.lr_lambda,
            lr_lambda2: p.lr_lambda2,
            eta: p.eta,
            mu0: p.mu0,
            mu_end: p.mu_end,
            seed: p.seed,
        };
        let device = self.device;
        let task = Task {
            ctx,
            files: &files,
            blocks: &blocks,
            teacher: teacher.as_ref(),
            cfg: &cfg,
            state: &mut state,
            every: p.checkpoint_every,
        };
        let last = run_autodiff_on(device, task)?;
        write_json(&ctx.out_dir.join(GATES), &state)?;
        forward_model_json(gates_in, ctx.out_dir)?;
        let _ = std::fs::remove_file(&ckpt);
        let mut m = Metrics::from([
            ("steps".into(), state.step as f64),
            ("resumed_at".into(), resumed_at as f64),
        ]);
        if let Some((l, tokens_per_s)) = last {
            m.insert("tokens_per_s".into(), tokens_per_s);
            m.insert("loss".into(), l.loss);
            m.insert("ce".into(), l.ce);
            m.insert("kl".into(), l.kl);
            for (name, q, l1, l2, l3, bin) in l.families {
                m.insert(format!("expected_sparsity_{name}"), q);
                m.insert(format!("lambda1_{name}"), l1);
                m.insert(format!("lambda2_{name}"), l2);
                m.insert(format!("lambda3_{name}"), l3);
                m.insert(format!("binarity_{name}"), bin);
            }
        }
        Ok(m)
    }
}

struct Task<'a> {
    ctx: &'a StageContext<'a>,
    files: &'a ModelFiles,
    blocks: &'a Blocks,
    teacher: Option<&'a TopK>,
    cfg: &'a TrainConfig,
    state: &'a mut GateState,
    every: usize,
}

impl AutodiffTask for Task<'_> {
    /// The last step's log and the training throughput (tokens per second of this run's steps).
    type Output = Option<(train::StepLog, f64)>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> crate::Result<Self::Output> {
        let model = self.files.load::<B>(&device, None)?;
        let bar = self.ctx.progress;
        bar.set_length(self.cfg.steps as u64);
        bar.set_position(self.state.step as u64);
        let log_path = self.ctx.out_dir.join(TRAIN_LOG);
        if self.state.step > 0 {
            // Resuming: drop log rows written after the checkpoint we resume from.
            if let Ok(text) = std::fs::read_to_string(&log_path) {
                let keep: String = text
                    .lines()
                    .filter(|l| {
                        l.split(',')
                            .next()
                            .and_then(|s| s.parse::<usize>().ok())
                            .is_none_or(|s| s <= self.state.step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(&log_path, keep).map_err(|e| crate::Error::io(&log_path, e))?;
            }
        }
        let new_log = !log_path.exists();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| crate::Error::io(&log_path, e))?;
        if new_log {
            let _ = writeln!(
                log,
                "step,loss,ce,kl,mu,lr_z,family,expected_sparsity,lambda1,lambda2,lambda3,binarity,seconds,tokens"
            );
        }
        let mut last = None;
        let (mut seconds, mut tokens) = (0.0, 0usize);
        let ckpt = self.ctx.out_dir.join(CHECKPOINT);
        let every = self.every.max(1);
        let blocks = &self.blocks.train;
        train::train_with_teacher(
            &model,
            blocks,
            self.teacher,
            self.cfg,
            self.state,
            |l, st| {
                for (name, q, l1, l2, l3, bin) in &l.families {
                    let _ = writeln!(
                        log,
                        "{},{},{},{},{},{},{name},{q},{l1},{l2},{l3},{bin},{:.4},{}",
                        l.step,
                        l.loss,
                        l.ce,
                        l.kl,
                        l.mu,
                        l.lr_z,
                        l.time.total(),
                        l.tokens
                    );
                }
                seconds += l.time.total();
                tokens += l.tokens;
                bar.set_position(l.step as u64);
                bar.set_message(format!("loss {:.3}", l.loss));
                if l.step % every == 0 {
                    let _ = log.flush();
                    // Write-then-rename: a kill never leaves a torn checkpoint.
                    let tmp = ckpt.with_extension("tmp");
                    std::fs::write(&tmp, serde_json::to_string(st).unwrap())
                        .map_err(|e| crate::Error::io(&tmp, e))?;
                    std::fs::rename(&tmp, &ckpt).map_err(|e| crate::Error::io(&ckpt, e))?;
                }
                last = Some(l.clone());
                Ok(())
            },
        )?;
        Ok(last.map(|l| (l, tokens as f64 / seconds.max(1e-9))))
    }
}
