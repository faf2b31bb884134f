//! Mask-only training (METHOD.md §3-4): the model's weights are frozen, only the gate
//! parameters `z` (per KV group or head, per FFN channel, per routed-expert channel) and the
//! Lagrange multipliers train.
//! Loss = CE + eta KL(teacher || student) + sum over families of
//! `l1 (q - a) + l2 (q - a)^2 + l3 mean s(1 - s)`, with `q = 1 - mean s` the expected sparsity;
//! with a joint budget ([`Joint`], gate-insert's `split = "learned"`) the families' l1 and l2
//! terms give way to one `L1 (q_p - a) + L2 (q_p - a)^2` over the expected removed-parameter
//! fraction `q_p`, so the training decides each family's share.
//! `z` descends, the multipliers ascend; AdamW (no weight decay) with a cosine schedule after a
//! linear warm-up; `z` is clamped to `>= -0.1` after each step. All state lives in
//! [`GateState`] on the host, so it checkpoints and resumes exactly.
//!
//! This file is the training loop; `state.rs` holds the checkpointed state and the step logs,
//! `method.rs` what differs between DDP and the hard-concrete baselines, `leaves.rs` the
//! parameters as autodiff leaves, `loss.rs` the loss terms and `optim.rs` the optimiser.

mod adapt;
mod convergence;
mod leaves;
mod loss;
mod method;
mod optim;
mod state;

pub use adapt::{hold_limit, Adapt, LambdaScale, Rates};
pub use convergence::{
    converged, convergence, joint_convergence, FamilyConvergence, JointConvergence, TOLERANCE,
};
pub use method::{deployed_values, Method};
pub use state::{Family, GateState, HeadGates, Joint, Moments, Scope, StepLog, StepTime};

use std::time::Instant;

use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use super::teacher::TopK;
use crate::error::{Error, Result};
use crate::model::layers::Ffn;
use crate::model::{Logits, Model};
use crate::prune::family::FamilyKind;
use leaves::Leaves;
use loss::{FamilyLog, Rows};
use optim::Grads;

/// What a training run asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// DDP or a hard-concrete baseline.
    pub method: Method,
    /// Steps in all (the schedules' length; a resumed run continues to it).
    pub steps: usize,
    /// Steps of linear learning-rate warm-up (and of the baselines' target warm-up).
    pub warmup: usize,
    /// Blocks per micro-batch.
    pub batch: usize,
    /// Micro-batches per step (0 counts as 1).
    pub grad_accum: usize,
    /// Peak learning rate of `z`.
    pub lr_z: f64,
    /// Peak learning rate of lambda1 and lambda3.
    pub lr_lambda: f64,
    /// Peak learning rate of lambda2.
    pub lr_lambda2: f64,
    /// Weight of the KL term.
    pub eta: f64,
    /// Annealing temperature mu at the first step.
    pub mu0: f64,
    /// Annealing temperature mu at the last step.
    pub mu_end: f64,
    /// Seed of the block order and of the hard-concrete noise.
    pub seed: u64,
    /// How the rates and the mu schedule adapt to the run ([`Adapt`]; the default is METHOD.md).
    #[serde(default)]
    pub adapt: Adapt,
}

impl TrainConfig {
    /// The learning rates a run of this config uses on `state`'s families (after [`Adapt`]).
    pub fn rates(&self, state: &GateState) -> Rates {
        adapt::rates(self, state)
    }
}

/// Runs training from `state.step` to `cfg.steps`, calling `on_step` after every step (for
/// logs, progress and checkpoints). Stops with an error naming the term and the step when a
/// loss term is not finite, leaving `state` at the last good step.
pub fn train<B: AutodiffBackend>(
    model: &Model<B>,
    blocks: &[Vec<u32>],
    cfg: &TrainConfig,
    state: &mut GateState,
    on_step: impl FnMut(&StepLog, &GateState) -> Result<()>,
) -> Result<()> {
    train_with_teacher(model, blocks, None, cfg, state, on_step)
}

/// [`train`], distilling from cached top-k teacher distributions of the same blocks instead of
/// running the dense model each step (`None`: online, exact).
pub fn train_with_teacher<B: AutodiffBackend>(
    model: &Model<B>,
    blocks: &[Vec<u32>],
    teacher: Option<&TopK>,
    cfg: &TrainConfig,
    state: &mut GateState,
    mut on_step: impl FnMut(&StepLog, &GateState) -> Result<()>,
) -> Result<()> {
    check_blocks(blocks, teacher)?;
    cfg.method.adopt(state);
    if state.method != cfg.method {
        return Err(Error::Invalid(format!(
            "the checkpoint was trained with {:?}, this run asks for {:?}",
            state.method, cfg.method
        )));
    }
    let expert_shapes = check_layers(model, state)?;
    check_kv_groups(state)?;
    if state.joint.is_some() && state.scope != Scope::Global {
        return Err(Error::Invalid(
            "a joint parameter budget (split = \"learned\") needs the global scope".into(),
        ));
    }
    // A fixed shuffled order of blocks, walked by step, so a resumed run sees the same batches.
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(cfg.seed ^ 0x5eed));
    let run = Run {
        rates: cfg.rates(state),
        model,
        inner: model.inner(),
        dev: model.device.clone(),
        blocks,
        teacher,
        cfg,
        order,
        seq: blocks[0].len(),
        expert_shapes,
    };
    while state.step < cfg.steps {
        let log = run.step(state)?;
        on_step(&log, state)?;
    }
    Ok(())
}

/// Checks that there are blocks and that a cached teacher covers them.
fn check_blocks(blocks: &[Vec<u32>], teacher: Option<&TopK>) -> Result<()> {
    if blocks.is_empty() {
        return Err(Error::Invalid("no training blocks".into()));
    }
    if let Some(t) = teacher {
        if t.header.blocks != blocks.len() || t.header.positions + 1 != blocks[0].len() {
            return Err(Error::Invalid(format!(
                "the cached teacher covers {} blocks of {} tokens, training has {} of {}",
                t.header.blocks,
                t.header.positions + 1,
                blocks.len(),
                blocks[0].len()
            )));
        }
    }
    Ok(())
}

/// Checks that the gates cover the model's layers; returns each layer's expert-channel gate
/// shape `[experts, width]` (`None` for a dense layer), the expert gates checked against it.
/// The per-group scope's KV groups (`state.kv_groups`) must split every layer's head gates into
/// equal runs: one count per layer, each dividing that layer's gates.
fn check_kv_groups(state: &GateState) -> Result<()> {
    let (groups, Some(heads)) = (&state.kv_groups, state.family(FamilyKind::Heads)) else {
        return Ok(());
    };
    if groups.is_empty() {
        return Ok(());
    }
    if groups.len() != heads.z.len() {
        return Err(Error::Invalid(format!(
            "kv_groups lists {} layers, the head gates cover {}",
            groups.len(),
            heads.z.len()
        )));
    }
    for (i, (&g, z)) in groups.iter().zip(&heads.z).enumerate() {
        if g == 0 || !z.len().is_multiple_of(g) {
            return Err(Error::Invalid(format!(
                "layer {i}: kv_groups {g} does not split its {} head gates into equal groups",
                z.len()
            )));
        }
    }
    Ok(())
}

fn check_layers<B: AutodiffBackend>(
    model: &Model<B>,
    state: &GateState,
) -> Result<Vec<Option<[usize; 2]>>> {
    let n_layers = model.layers.len();
    if let Some(f) = state.families.iter().find(|f| f.z.len() != n_layers) {
        return Err(Error::Invalid(format!(
            "the {} gates cover {} layers, the model has {n_layers}",
            f.name,
            f.z.len()
        )));
    }
    let expert_shapes: Vec<Option<[usize; 2]>> = model
        .layers
        .iter()
        .map(|l| match &l.ffn {
            Ffn::Moe(m) => Some([m.experts.len(), m.expert_width()]),
            Ffn::Dense(_) => None,
        })
        .collect();
    if let Some(f) = state.family(FamilyKind::Experts) {
        for (i, (z, shape)) in f.z.iter().zip(&expert_shapes).enumerate() {
            let want = shape.map_or(0, |[e, w]| e * w);
            if z.len() != want {
                return Err(Error::Invalid(format!(
                    "layer {i}: {} expert-channel gates, the model has {want} expert channels",
                    z.len()
                )));
            }
        }
    }
    Ok(expert_shapes)
}

/// What a run reads every step.
struct Run<'a, B: AutodiffBackend> {
    model: &'a Model<B>,
    /// The dense teacher: the model on the inner backend (no graph, the inference fast paths).
    inner: Model<B::InnerBackend>,
    dev: B::Device,
    blocks: &'a [Vec<u32>],
    teacher: Option<&'a TopK>,
    cfg: &'a TrainConfig,
    /// The peak learning rates, after the config's adaptations.
    rates: Rates,
    /// The order blocks are walked in.
    order: Vec<usize>,
    /// Tokens per block.
    seq: usize,
    /// Per layer, the expert-channel gate shape (`None` for a dense layer).
    expert_shapes: Vec<Option<[usize; 2]>>,
}

/// What one micro-batch measured.
struct Measured {
    loss: f64,
    ce: f64,
    kl: f64,
    families: Vec<FamilyLog>,
    /// With a joint budget: (q_p, L1, L2).
    joint: Option<(f64, f64, f64)>,
}

impl<B: AutodiffBackend> Run<'_, B> {
    /// Micro-batches per step.
    fn micro_batches(&self) -> usize {
        self.cfg.grad_accum.max(1)
    }

    /// Step `state.step` (from 0): accumulates the gradients of its micro-batches, then updates
    /// `state` (only once every micro-batch's loss was finite).
    fn step(&self, state: &mut GateState) -> Result<StepLog> {
        let cfg = self.cfg;
        let t = state.step;
        let mu = adapt::mu(cfg, state, t);
        let f_lr = adapt::lr_at(cfg, state, t);
        let mut grads = Grads::zeros(&state.families);
        let (mut loss_sum, mut ce_sum, mut kl_sum) = (0.0, 0.0, 0.0);
        let (mut fam_log, mut joint_log) = (vec![], None);
        let mut time = StepTime::default();
        for micro in 0..self.micro_batches() {
            let m = self.micro_batch(state, t, micro, mu, &mut grads, &mut time)?;
            loss_sum += m.loss;
            ce_sum += m.ce;
            kl_sum += m.kl;
            fam_log = m.families;
            joint_log = m.joint;
        }
        let t_update = Instant::now();
        let k = self.micro_batches() as f64;
        let step_no = t + 1;
        optim::update(state, &grads, k, cfg, &self.rates, f_lr, step_no);
        state.step = step_no;
        let q: Vec<f64> = fam_log.iter().map(|f| f.1).collect();
        adapt::after_step(cfg, state, &q, joint_log.map(|j| j.0), step_no);
        time.update = t_update.elapsed().as_secs_f64();
        Ok(StepLog {
            step: step_no,
            loss: loss_sum / k,
            ce: ce_sum / k,
            kl: kl_sum / k,
            mu,
            lr_z: self.rates.lr_z * f_lr,
            families: fam_log,
            joint: joint_log,
            tokens: cfg.batch * self.seq * self.micro_batches(),
            time,
        })
    }

    /// The blocks of micro-batch `micro` of step `t`, and their tokens `[batch, seq]`.
    fn tokens(&self, t: usize, micro: usize) -> (Vec<usize>, Tensor<B, 2, Int>) {
        let batch = self.cfg.batch;
        let picked: Vec<usize> = (0..batch)
            .map(|i| {
                self.order[((t * self.micro_batches() + micro) * batch + i) % self.order.len()]
            })
            .collect();
        let ids: Vec<i64> = picked
            .iter()
            .flat_map(|&b| self.blocks[b].iter().map(|&x| x as i64))
            .collect();
        let tokens = Tensor::from_data(TensorData::new(ids, [batch, self.seq]), &self.dev);
        (picked, tokens)
    }

    /// One micro-batch of step `t`: the loss at annealing `mu`, its gradients added to
    /// `grads`, the phases' wall time to `time`. Fails, naming the term, if the loss is not
    /// finite.
    fn micro_batch(
        &self,
        state: &GateState,
        t: usize,
        micro: usize,
        mu: f64,
        grads: &mut Grads,
        time: &mut StepTime,
    ) -> Result<Measured> {
        let cfg = self.cfg;
        let (picked, tokens) = self.tokens(t, micro);
        let leaves = Leaves::<B>::new(state, &self.dev);
        let gates = leaves.gates(
            &state.families,
            cfg.method,
            |fi, i| method::noise_seed(cfg.seed, t, micro, fi, i),
            &self.expert_shapes,
            &self.dev,
        );
        let t_teacher = Instant::now();
        let teacher_logits = self.teacher.is_none().then(|| {
            self.inner
                .forward(tokens.clone().inner(), None, None, Logits::All)
        });
        time.teacher += t_teacher.elapsed().as_secs_f64();
        let t_student = Instant::now();
        let student = self
            .model
            .forward(tokens.clone(), None, Some(&gates), Logits::All);
        let rows = Rows {
            tokens: &tokens,
            picked: &picked,
            blocks: self.blocks,
            teacher_logits,
            cached: self.teacher,
        };
        let (ce, kl, mut loss) = loss::distillation(student, rows, cfg.eta);
        // Read back only when the loss is not finite, to name the term.
        let mut terms: Vec<(String, Tensor<B, 1>)> = vec![];
        let (families, joint) = self.sparsity_terms(state, &leaves, t, mu, &mut terms);
        for (_, term) in &terms {
            loss = loss + term.clone();
        }
        let lv = loss::scalar(loss.clone());
        if !lv.is_finite() {
            return Err(loss::not_finite(t, ce, kl, &terms));
        }
        time.student += t_student.elapsed().as_secs_f64();
        let t_backward = Instant::now();
        leaves.add_grads(&loss.backward(), grads);
        time.backward += t_backward.elapsed().as_secs_f64();
        Ok(Measured {
            loss: lv,
            ce,
            kl,
            families,
            joint,
        })
    }

    /// The sparsity terms of step `t` at annealing `mu`, from `leaves`, pushed to `terms` by
    /// name: each family's ([`loss::sparsity`]) and with a joint budget its term
    /// ([`loss::joint_sparsity`]). Returns the families' log entries and the joint budget's.
    fn sparsity_terms(
        &self,
        state: &GateState,
        leaves: &Leaves<B>,
        t: usize,
        mu: f64,
        terms: &mut Vec<(String, Tensor<B, 1>)>,
    ) -> (Vec<FamilyLog>, Option<(f64, f64, f64)>) {
        let cfg = self.cfg;
        let ss: Vec<_> = leaves
            .z
            .iter()
            .map(|zf| loss::retentions(zf, cfg.method, mu))
            .collect();
        let joint = state.joint.is_some();
        let mut families = vec![];
        for ((f, sf), lam) in state.families.iter().zip(&ss).zip(&leaves.lambdas) {
            let groups: &[usize] = match (state.scope, f.name) {
                (Scope::PerGroup, FamilyKind::Heads) => &state.kv_groups,
                _ => &[],
            };
            let (term, log) = loss::sparsity(f, sf, lam, cfg, state.scope, groups, t, joint);
            families.push(log);
            if let Some(term) = term {
                terms.push((format!("{} sparsity", f.name), term));
            }
        }
        let joint_log = state
            .joint
            .as_ref()
            .zip(leaves.joint.as_ref())
            .map(|(j, lam)| {
                let (term, log) = loss::joint_sparsity(j, &state.families, &ss, lam, cfg, t);
                terms.push(("parameter budget".to_string(), term));
                log
            });
        (families, joint_log)
    }
}
