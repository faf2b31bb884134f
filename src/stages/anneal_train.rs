//! `anneal-train`: mask-only DDP training of the gates (prune::train) on calibration blocks,
//! with the dense model as its own teacher. Checkpoints into its output directory every
//! `checkpoint_every` steps and resumes from there after a kill, reaching the same result.
//! With a joint budget (gate-insert's `split = "learned"`) the split the training chose becomes
//! the families' targets in the gates.json it writes (scaled to meet the budget exactly:
//! `budget::learned_targets`), so threshold's topk and uniform rules remove that split; its
//! metrics then give the removed-parameter fractions (`params_sparsity_*`) and the split
//! (`learned_target_<family>`), and convergence is the budget's, every family binary.

use std::io::Write;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;

use super::common::{forward_model_json, open_input, read_json, write_json};
use super::train_log::{log_header, log_rows, read_log};
use crate::artifacts::{BLOCKS, CHECKPOINT, GATES, TEACHER_HEADER, TRAIN_LOG};
use crate::backend::{run_autodiff_on, AutodiffTask, DeviceSpec};
use crate::data::Blocks;
use crate::engine::params::{choice, float, int, StageParams};
use crate::engine::stage::{
    Input, InputSpec, Metrics, ParamSpec, ParamType, StageContext, StageKind,
};
use crate::io::ModelFiles;
use crate::prune::budget;
use crate::prune::teacher::TopK;
use crate::prune::train::{self, Adapt, GateState, LambdaScale, Method, TrainConfig};

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

crate::choice_enum! {
    /// How `anneal-train` scales the multipliers' rates with their family's size (see
    /// [`LambdaScale`]).
    pub enum MultiplierScale {
        /// The same rates for every family (METHOD.md).
        None = "none",
        /// Each family's rates times sqrt(its units per layer / the smallest family's).
        SqrtUnits = "sqrt-units",
    }
}

impl From<MultiplierScale> for LambdaScale {
    fn from(m: MultiplierScale) -> Self {
        match m {
            MultiplierScale::None => LambdaScale::None,
            MultiplierScale::SqrtUnits => LambdaScale::SqrtUnits,
        }
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
        /// learning rate of lambda1 and lambda3 (ascent), for a run of lr_steps_ref steps
        lr_lambda: f64 = 2e-2 => float(0.0, 100.0),
        /// learning rate of lambda2 (ascent), for a run of lr_steps_ref steps
        lr_lambda2: f64 = 0.4 => float(0.0, 1000.0),
        /// the run length the multiplier rates are tuned for (the paper's 1000): a run of fewer steps multiplies lr_lambda and lr_lambda2 by lr_steps_ref / steps, so the multipliers grow at the same pace per fraction of the run; 0: the rates per step as given (METHOD.md)
        lr_steps_ref: usize = 1000 => int(0),
        /// raise lr_z so that z can travel this far while mu >= 0.3 (the first quarter of the schedule, where the retention score has a slope at z ~ 1); the paper's run gives 4.0; 0: lr_z as given
        z_travel: f64 = 1.5 => float(0.0, 100.0),
        /// none: the same multiplier rates for every family (METHOD.md); sqrt-units: each family's times sqrt(its units per layer / the smallest family's), since a large family's penalty gradient per gate is smaller against its task gradient (a learned split's one pair of multipliers: the largest family's scale)
        lambda_scale: MultiplierScale = "sqrt-units" => choice::<MultiplierScale>(),
        /// hold mu at mu0 until every family's expected sparsity is within this of its target (a learned split: the expected removed-parameter fraction of the budget), then anneal over the remaining steps (ddp only); 0: anneal from the first step (METHOD.md)
        mu_hold_tol: f64 = 0.01 => float(0.0, 1.0),
        /// the longest hold, as a fraction of the steps
        mu_hold_max: f64 = 0.5 => float(0.0, 1.0),
        /// restart the multipliers' Adam moments when the hold ends: their momentum and their memory of the early, large gaps would otherwise carry them past the target (ddp with a hold only); false: one optimiser run throughout (METHOD.md)
        lambda_restart: bool = true => ParamType::Bool,
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
        // 3: convergence metrics (relu sparsity, converged, the hold, the rates used).
        // 4: a joint parameter budget (split = "learned"): trained as one Lagrangian, its split
        //    written as the families' targets, params_sparsity_* metrics, joint log columns.
        4
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
        let mut state = start(ctx, gates_in, p.steps)?;
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
            adapt: Adapt {
                lr_steps_ref: p.lr_steps_ref,
                z_travel: p.z_travel,
                lambda_scale: p.lambda_scale.into(),
                mu_hold_tol: p.mu_hold_tol,
                mu_hold_max: p.mu_hold_max,
                lambda_restart: p.lambda_restart,
            },
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
        let trained = run_autodiff_on(device, task)?;
        // Nothing trained (the kill came after the final checkpoint): the last step's figures
        // are the log's, as the uninterrupted run wrote them.
        let last = match trained {
            None => read_log(&ctx.out_dir.join(TRAIN_LOG))?.last_step(),
            t => t,
        };
        if let Some((l, _)) = &last {
            adopt_learned_split(&mut state, l);
        }
        write_json(&ctx.out_dir.join(GATES), &state)?;
        forward_model_json(gates_in, ctx.out_dir)?;
        let _ = std::fs::remove_file(ctx.out_dir.join(CHECKPOINT));
        Ok(metrics(ctx, &p, &cfg, &state, resumed_at, last))
    }
}

/// With a joint budget, sets each family's target to the split training `last` ended at: its
/// expected sparsity, scaled so that the split removes exactly the budget
/// ([`budget::learned_targets`]). Without one, nothing changes.
fn adopt_learned_split(state: &mut GateState, last: &train::StepLog) {
    let Some(j) = &state.joint else { return };
    let q: Vec<f64> = last.families.iter().map(|f| f.1).collect();
    let params: Vec<f64> = state.families.iter().map(|f| j.family_params(f)).collect();
    let targets = budget::learned_targets(&q, &params, j.target);
    for (f, t) in state.families.iter_mut().zip(targets) {
        f.target = t;
    }
}

/// The stage's metrics: steps, tokens trained, where it resumed, the rates used, and the last
/// step's figures (`last`, with the throughput) with each family's convergence figures; warns of
/// a family that ended far from its target ([`off_target`]) or short of converged
/// ([`unconverged`]).
fn metrics(
    ctx: &StageContext,
    p: &AnnealTrainParams,
    cfg: &TrainConfig,
    state: &GateState,
    resumed_at: usize,
    last: Option<(train::StepLog, f64)>,
) -> Metrics {
    let mut m = Metrics::from([
        ("steps".into(), state.step as f64),
        ("resumed_at".into(), resumed_at as f64),
    ]);
    let rates = cfg.rates(state);
    m.insert("lr_z_used".into(), rates.lr_z);
    for (f, r) in state.families.iter().zip(&rates.lambdas) {
        m.insert(format!("lr_lambda_used_{}", f.name), r[0]);
        m.insert(format!("lr_lambda2_used_{}", f.name), r[1]);
    }
    if let Some(h) = state.mu_hold_until {
        m.insert("mu_hold_until".into(), h as f64);
    }
    let Some((l, tokens_per_s)) = last else {
        return m;
    };
    m.insert("tokens_trained".into(), (l.tokens * state.step) as f64);
    m.insert("tokens_per_s".into(), tokens_per_s);
    m.insert("loss".into(), l.loss);
    m.insert("ce".into(), l.ce);
    m.insert("kl".into(), l.kl);
    let conv = train::convergence(state, &l);
    let joint = train::joint_convergence(state, &l);
    if let Some(j) = &joint {
        joint_metrics(ctx, &mut m, p, cfg, state, &l, j);
    }
    for ((name, q, l1, l2, l3, bin), c) in l.families.into_iter().zip(&conv) {
        m.insert(format!("expected_sparsity_{name}"), q);
        m.insert(format!("lambda1_{name}"), l1);
        m.insert(format!("lambda2_{name}"), l2);
        m.insert(format!("lambda3_{name}"), l3);
        m.insert(format!("binarity_{name}"), bin);
        m.insert(format!("relu_sparsity_{name}"), c.relu);
        m.insert(format!("sparsity_gap_{name}"), q - c.target);
        match off_target(&name, q, c.target, p) {
            // With a joint budget the family's target is the split it learned: only its
            // binarity is its own (the budget's figures are warned of in `joint_metrics`).
            _ if joint.is_some() && q >= 0.99 => ctx.warn(&format!(
                "the learned split removes nearly every unit of {name} (expected sparsity {q:.2}): threshold would leave none; lower the sparsity or train with split = \"equal\""
            )),
            _ if joint.is_some() && c.binarity > train::TOLERANCE => {
                ctx.warn(&unconverged(c, p, cfg, state))
            }
            _ if joint.is_some() => {}
            Some(w) => ctx.warn(&w),
            None if !c.converged() => ctx.warn(&unconverged(c, p, cfg, state)),
            None => {}
        }
    }
    let converged = train::converged(&conv, joint.as_ref());
    m.insert("converged".into(), if converged { 1.0 } else { 0.0 });
    m
}

/// A joint budget's metrics: the removed-parameter fractions (expected, relu rule, target),
/// the multipliers and their rates, and each family's learned target; warns when the budget
/// ended off target ([`joint_off_target`]).
fn joint_metrics(
    ctx: &StageContext,
    m: &mut Metrics,
    p: &AnnealTrainParams,
    cfg: &TrainConfig,
    state: &GateState,
    l: &train::StepLog,
    j: &train::JointConvergence,
) {
    m.insert("params_sparsity_expected".into(), j.expected);
    m.insert("params_sparsity_relu".into(), j.relu);
    m.insert("params_sparsity_target".into(), j.target);
    if let Some((_, l1, l2)) = l.joint {
        m.insert("joint_lambda1".into(), l1);
        m.insert("joint_lambda2".into(), l2);
    }
    if let Some([r1, r2]) = cfg.rates(state).joint {
        m.insert("lr_lambda_used_joint".into(), r1);
        m.insert("lr_lambda2_used_joint".into(), r2);
    }
    for f in &state.families {
        m.insert(format!("learned_target_{}", f.name), f.target);
    }
    if let Some(w) = joint_off_target(j, p, cfg, state) {
        ctx.warn(&w);
    }
}

/// A warning when a joint budget's removed-parameter fraction ended more than
/// [`train::TOLERANCE`] from its target (expected or under the relu rule), with the likely
/// cause.
fn joint_off_target(
    j: &train::JointConvergence,
    p: &AnnealTrainParams,
    cfg: &TrainConfig,
    state: &GateState,
) -> Option<String> {
    if j.on_target() {
        return None;
    }
    let figures = format!(
        "the parameter budget is not met: expected {:.3}, relu rule {:.3} of the gated parameters removed (target {:.3})",
        j.expected, j.relu, j.target
    );
    let cause = off_target_cause(j.expected, j.target, 0.0, p, cfg, state);
    Some(format!("{figures}: {cause}"))
}

/// Why family `c`, within [`TARGET_SLACK`] of its target, is not converged, and what to change.
fn unconverged(
    c: &train::FamilyConvergence,
    p: &AnnealTrainParams,
    cfg: &TrainConfig,
    state: &GateState,
) -> String {
    let figures = format!(
        "{} not converged: expected sparsity {:.3}, relu rule {:.3} (target {:.3}), mean s(1-s) {:.4}",
        c.name, c.expected, c.relu, c.target, c.binarity
    );
    let cause = off_target_cause(c.expected, c.target, c.binarity, p, cfg, state);
    format!("{figures}: {cause}")
}

/// The likely cause of a training that ended with `expected` sparsity (of a family's units or
/// of a joint budget's parameters) for `target`, mean s(1-s) `binarity`, and what to change.
fn off_target_cause(
    expected: f64,
    target: f64,
    binarity: f64,
    p: &AnnealTrainParams,
    cfg: &TrainConfig,
    state: &GateState,
) -> String {
    let tol = train::TOLERANCE;
    let held_to_limit = state.mu_hold_until == Some(train::hold_limit(cfg));
    if !expected.is_finite() {
        format!(
            "training diverged; lower the learning rates (lr_z {}, lr_lambda {}, lr_lambda2 {})",
            p.lr_z, p.lr_lambda, p.lr_lambda2
        )
    } else if held_to_limit && (expected - target).abs() > tol {
        format!(
            "mu was held until the limit (step {} of {}) without reaching the target: let the multipliers grow faster (lr_lambda {}, lr_lambda2 {}, lambda_scale = \"sqrt-units\") or train longer",
            train::hold_limit(cfg),
            p.steps,
            p.lr_lambda,
            p.lr_lambda2
        )
    } else if binarity > tol {
        format!(
            "the scores did not harden: mu_end {} is too high, or too few steps annealed after the hold (mu_hold_max {})",
            p.mu_end, p.mu_hold_max
        )
    } else if expected - target > tol {
        format!(
            "it overshot: the multipliers outgrew the steps left to correct them (lr_lambda {}, lr_lambda2 {}, lambda_scale {}); lower them or train longer",
            p.lr_lambda, p.lr_lambda2, p.lambda_scale
        )
    } else if target - expected > tol {
        format!(
            "train longer (steps {}) or raise lr_lambda / lr_lambda2",
            p.steps
        )
    } else {
        "gates stranded just above 0: the relu rule disagrees with the expected sparsity; use rule = \"topk\" or lower mu_end".to_string()
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
        // `start` left the log matching the state: append this run's rows.
        let log_path = self.ctx.out_dir.join(TRAIN_LOG);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(|e| crate::Error::io(&log_path, e))?;
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
                // One write per step: a kill tears at most the row being written.
                log.write_all(log_rows(l).as_bytes())
                    .map_err(|e| crate::Error::io(&log_path, e))?;
                seconds += l.time.total();
                tokens += l.tokens;
                bar.set_position(l.step as u64);
                bar.set_message(format!("loss {:.3}", l.loss));
                if l.step % every == 0 {
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

/// How far (in sparsity) a family may end from its target before anneal-train warns.
const TARGET_SLACK: f64 = 0.05;

/// The state to train from, with train_log.csv made to match it: the checkpoint and the log's
/// rows up to its step; or the input gates and a log of just the header (no checkpoint: a kill
/// or a failed write before the first one, or a log that lacks the checkpoint's rows).
fn start(ctx: &StageContext, gates_in: &Input, steps: usize) -> Result<GateState> {
    let ckpt = ctx.out_dir.join(CHECKPOINT);
    let log_path = ctx.out_dir.join(TRAIN_LOG);
    if ckpt.exists() {
        let state: GateState =
            read_json(&ckpt).with_context(|| format!("resuming from {CHECKPOINT}"))?;
        let joint = state.joint.is_some();
        match read_log(&log_path)?.up_to(state.step, state.families.len(), joint) {
            Some(text) => {
                std::fs::write(&log_path, text)
                    .with_context(|| format!("writing {}", log_path.display()))?;
                ctx.note(&format!(
                    "resuming anneal-train from step {} of {steps}",
                    state.step
                ));
                return Ok(state);
            }
            None => ctx.warn(&format!(
                "{CHECKPOINT} is at step {} but {TRAIN_LOG} lacks rows up to it: training starts over",
                state.step
            )),
        }
        std::fs::remove_file(&ckpt).with_context(|| format!("removing {}", ckpt.display()))?;
    }
    let state: GateState = read_json(&gates_in.dir.join(GATES))?;
    std::fs::write(
        &log_path,
        format!("{}\n", log_header(state.joint.is_some())),
    )
    .with_context(|| format!("writing {}", log_path.display()))?;
    Ok(state)
}

/// A warning when family `name` ends at expected sparsity `q` far from its `target`: a
/// collapse (at least 0.99: nearly every gate closed), or off by more than [`TARGET_SLACK`].
/// Reporting only: training is as it was.
fn off_target(name: &str, q: f64, target: f64, p: &AnnealTrainParams) -> Option<String> {
    let figures = format!("{name} ended at expected sparsity {q:.2} against target {target:.2}");
    let rates = format!(
        "lr_z {}, eta {}, lr_lambda {}, lr_lambda2 {}",
        p.lr_z, p.eta, p.lr_lambda, p.lr_lambda2
    );
    if !q.is_finite() {
        Some(format!(
            "training diverged: {figures}; lower the learning rates ({rates})"
        ))
    } else if q >= 0.99 && target < 0.99 {
        Some(format!(
            "training collapsed: {figures} (nearly every gate closed; threshold would remove them all). The learning rates are too high ({rates}): lower them"
        ))
    } else if q - target > TARGET_SLACK {
        Some(format!(
            "{figures}, above its target: training overshot; the learning rates may be too high ({rates})"
        ))
    } else if target - q > TARGET_SLACK {
        Some(format!(
            "{figures}, below its target: train longer (steps {}) or let the multipliers grow faster (lr_lambda, lr_lambda2)",
            p.steps
        ))
    } else {
        None
    }
}
