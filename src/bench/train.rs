//! Training-step throughput (`ddp-run bench --train`): the anneal-train step on a model, timed
//! by phase (teacher forward, student forward and loss, backward, update), and optionally the
//! same step in PyTorch alternating with ours in rounds, so drift of a busy machine hits both.

use serde::Serialize;

use super::torch::TorchTrainer;
use super::Stats;
use crate::error::Result;
use crate::model::{accounting, Model};
use crate::prune::family::FamilyKind;
use crate::prune::teacher::{self, TopK};
use crate::prune::train::{self, GateState, HeadGates, Method, Scope, StepTime, TrainConfig};
use burn::tensor::backend::AutodiffBackend;

/// What a training benchmark measures.
#[derive(Debug, Clone, Serialize)]
pub struct TrainProtocol {
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Steps per round and engine.
    pub steps: usize,
    /// Timed rounds (engines alternate inside each; the order flips on odd rounds).
    pub rounds: usize,
    /// Untimed rounds first.
    pub warmup: usize,
    /// `online` (the dense model every step) or `cached` (top-k rows computed once).
    pub teacher: String,
    /// Log-probabilities kept per position by the `cached` teacher.
    pub topk: usize,
}

/// One engine's per-step figures: tokens/s of the whole step, milliseconds per phase.
#[derive(Debug, Clone, Serialize)]
pub struct TrainMeasured {
    /// `ddp`, or the PyTorch trainer's label (`torch VERSION, N threads`).
    pub label: String,
    /// Tokens (batch x sequence length) per second of the whole step.
    pub tok_s: Stats,
    /// The online teacher's forward (0 with a cached teacher).
    pub teacher_ms: Stats,
    /// The gated student's forward and the loss.
    pub student_ms: Stats,
    /// Backpropagation to the gates.
    pub backward_ms: Stats,
    /// Optimiser updates of the gates and multipliers.
    pub update_ms: Stats,
}

impl TrainMeasured {
    fn of(label: String, tokens: usize, steps: &[StepTime]) -> Self {
        let ms = |f: fn(&StepTime) -> f64| Stats::of(steps.iter().map(|s| f(s) * 1e3).collect());
        Self {
            label,
            tok_s: Stats::of(
                steps
                    .iter()
                    .map(|s| tokens as f64 / s.total().max(1e-12))
                    .collect(),
            ),
            teacher_ms: ms(|s| s.teacher),
            student_ms: ms(|s| s.student),
            backward_ms: ms(|s| s.backward),
            update_ms: ms(|s| s.update),
        }
    }
}

/// Deterministic in-vocabulary blocks: `4 x batch` of them, so steps cycle through 4 batches,
/// as the PyTorch script does (the content does not change dense timing).
pub fn blocks(vocab: usize, batch: usize, seq: usize) -> Vec<Vec<u32>> {
    (0..4 * batch)
        .map(|b| {
            (0..seq)
                .map(|i| (((b * seq + i) as u64 * 2_654_435_761 + 17) % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

/// Gates as gate-insert makes them by default: one per KV group and per FFN (and expert)
/// channel, 20 % targets.
pub fn gate_state(model_cfg: &crate::model::ModelConfig) -> GateState {
    let units: Vec<_> = (0..model_cfg.num_hidden_layers)
        .map(|i| accounting::units(model_cfg, i))
        .collect();
    let mut fams = vec![
        (
            FamilyKind::Heads,
            0.2,
            units.iter().map(|u| u.kv_heads).collect(),
        ),
        (
            FamilyKind::Channels,
            0.2,
            units.iter().map(|u| u.channels).collect(),
        ),
    ];
    let experts: Vec<usize> = units.iter().map(|u| u.experts * u.expert_width).collect();
    if experts.iter().any(|&n| n > 0) {
        fams.push((FamilyKind::Experts, 0.2, experts));
    }
    fams.retain(|f: &(FamilyKind, f64, Vec<usize>)| f.2.iter().sum::<usize>() > 0);
    GateState::init(&fams, HeadGates::PerGroup, Scope::Global, 0)
}

/// The quickstart's training settings with `steps` to go.
fn config(p: &TrainProtocol, steps: usize) -> TrainConfig {
    TrainConfig {
        method: Method::Ddp,
        steps,
        warmup: 0,
        batch: p.batch,
        grad_accum: 1,
        lr_z: 0.1,
        lr_lambda: 0.02,
        lr_lambda2: 0.4,
        eta: 2.0,
        mu0: 0.5,
        mu_end: 0.1,
        seed: 0,
        adapt: Default::default(),
    }
}

/// ddp's steps and, with `torch`, PyTorch's, alternating in rounds.
pub fn compare<B: AutodiffBackend>(
    model: &Model<B>,
    p: &TrainProtocol,
    mut torch: Option<&mut TorchTrainer>,
    mut on_round: impl FnMut(),
) -> Result<Vec<TrainMeasured>> {
    let blocks = blocks(model.config.vocab_size, p.batch, p.seq_len);
    let cached: Option<TopK> =
        (p.teacher == "cached").then(|| teacher::compute(&model.inner(), &blocks, p.topk, || {}));
    let mut state = gate_state(&model.config);
    let (mut ours, mut theirs) = (vec![], vec![]);
    for r in 0..p.warmup + p.rounds {
        let timed = r >= p.warmup;
        for engine in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
            match (engine, torch.as_deref_mut()) {
                (0, _) => {
                    let cfg = config(p, state.step + p.steps);
                    train::train_with_teacher(
                        model,
                        &blocks,
                        cached.as_ref(),
                        &cfg,
                        &mut state,
                        |l, _| {
                            if timed {
                                ours.push(l.time);
                            }
                            Ok(())
                        },
                    )?;
                }
                (_, Some(t)) => {
                    let steps = t.steps(p.steps)?;
                    if timed {
                        theirs.extend(steps);
                    }
                }
                _ => {}
            }
        }
        on_round();
    }
    let tokens = p.batch * p.seq_len;
    let mut out = vec![TrainMeasured::of("ddp".into(), tokens, &ours)];
    if let Some(t) = torch {
        out.push(TrainMeasured::of(t.label.clone(), tokens, &theirs));
    }
    Ok(out)
}

/// The side-by-side table, the ratio of medians and how far to trust it.
pub fn markdown(p: &TrainProtocol, build: &str, m: &[TrainMeasured]) -> String {
    let mut s = format!(
        "protocol: anneal-train step (ddp, heads per KV group + FFN channels), teacher {}, batch {} x {} tokens; {} rounds of {} steps per engine after {} warm-up, engines alternating\nbuild: {build}\n\n",
        p.teacher, p.batch, p.seq_len, p.rounds, p.steps, p.warmup
    );
    s += "| engine | step tok/s median [min, max] | teacher ms | student fwd + loss ms | backward ms | update ms |\n|---|---|---:|---:|---:|---:|\n";
    for e in m {
        s += &format!(
            "| {} | {:.1} [{:.1}, {:.1}] | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            e.label,
            e.tok_s.median,
            e.tok_s.min,
            e.tok_s.max,
            e.teacher_ms.median,
            e.student_ms.median,
            e.backward_ms.median,
            e.update_ms.median
        );
    }
    if let [a, b] = m {
        s += &format!(
            "\nddp / torch: {:.2}x (ratio of medians)\n",
            a.tok_s.median / b.tok_s.median
        );
        if let Some(w) = super::spread_warning(&a.tok_s, &b.tok_s) {
            s += &format!("{w}\n");
        }
    }
    s
}

/// What `ddp-run bench --train` prints and writes.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// What was measured.
    pub protocol: TrainProtocol,
    /// The build, backend, device and threads.
    pub build: String,
    /// ddp's figures, then PyTorch's if it was measured.
    pub engines: Vec<TrainMeasured>,
    /// Why PyTorch was not measured, when it was asked for and could not be.
    pub torch_skipped: Option<String>,
}

struct Task<'a> {
    files: &'a crate::io::ModelFiles,
    protocol: &'a TrainProtocol,
    torch: bool,
    bar: &'a indicatif::ProgressBar,
}

impl crate::backend::AutodiffTask for Task<'_> {
    type Output = TrainReport;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<TrainReport> {
        let f = self.files;
        let model = f.load::<B>(&device, None)?;
        let mut skipped = None;
        let mut trainer = None;
        let _dir = if self.torch {
            let (tmp, dir) = super::torch::hf_dir(f)?;
            match TorchTrainer::start(&dir, self.protocol)? {
                Ok(t) => trainer = Some(t),
                Err(why) => skipped = Some(why),
            }
            Some((tmp, dir))
        } else {
            None
        };
        self.bar
            .set_length((self.protocol.warmup + self.protocol.rounds) as u64);
        let engines = compare(&model, self.protocol, trainer.as_mut(), || self.bar.inc(1))?;
        Ok(TrainReport {
            protocol: self.protocol.clone(),
            build: crate::backend::build_info(),
            engines,
            torch_skipped: skipped,
        })
    }
}

/// Loads the model on `device`'s autodiff backend and measures (with `torch`, beside PyTorch).
pub fn run(
    device: crate::backend::DeviceSpec,
    files: &crate::io::ModelFiles,
    protocol: &TrainProtocol,
    torch: bool,
    bar: &indicatif::ProgressBar,
) -> Result<TrainReport> {
    crate::backend::run_autodiff_on(
        device,
        Task {
            files,
            protocol,
            torch,
            bar,
        },
    )
}
