//! Mask-only training (METHOD.md §3-4): the model's weights are frozen, only the gate
//! parameters `z` (per KV group or head, per FFN channel, per routed-expert channel) and the
//! Lagrange multipliers train.
//! Loss = CE + eta KL(teacher || student) + sum over families of
//! `l1 (q - a) + l2 (q - a)^2 + l3 mean s(1 - s)`, with `q = 1 - mean s` the expected sparsity.
//! `z` descends, the multipliers ascend; AdamW (no weight decay) with a cosine schedule after a
//! linear warm-up; `z` is clamped to `>= -0.1` after each step. All state lives in
//! [`GateState`] on the host, so it checkpoints and resumes exactly.

use burn::tensor::{activation::log_softmax, backend::AutodiffBackend, Int, Tensor, TensorData};
use std::time::Instant;

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::distill::{distill, TeacherRows};
use super::surrogate::{forward_mask, hard_concrete, hard_concrete_l0, mu_at, retention};
use super::teacher::{kl_topk, TopK};
use crate::error::{Error, Result};
use crate::model::layers::Ffn;
use crate::model::{Gates, LayerGates, Logits, Model};

/// Gate granularity of attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadGates {
    /// One gate per KV group (whole groups removed: loadable by standard runtimes).
    PerGroup,
    PerHead,
    /// Attention not pruned.
    None,
}

/// The training method: DDP, or the baselines the paper compares against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Deterministic ReLU mask, annealed retention score, binarisation term (this paper).
    #[default]
    Ddp,
    /// Stochastic hard-concrete gates (Louizos et al.; CoFi / Sheared-LLaMA), expected-L0
    /// Lagrangian with a linearly warmed-up target.
    HardConcrete,
    /// The same with the noise fixed at u = 1/2.
    DetHardConcrete,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ddp" => Method::Ddp,
            "hard-concrete" => Method::HardConcrete,
            "det-hard-concrete" => Method::DetHardConcrete,
            _ => return None,
        })
    }
}

/// The hard-concrete methods start from `log_alpha` = ln(0.95 / 0.05) (gates ~open), keeping the
/// N(1, 0.01) noise of the initial z.
pub const HC_LOG_ALPHA_SHIFT: f32 = 1.944_439;

/// The gate values a method's parameters stand for at deployment: ReLU(z) for DDP, the
/// deterministic hard-concrete gate for the baselines. Thresholding ranks and keeps these.
pub fn deployed_values(method: Method, z: &[Vec<f32>]) -> Vec<Vec<f32>> {
    use super::surrogate::{HC_BETA, HC_GAMMA, HC_ZETA};
    match method {
        Method::Ddp => z
            .iter()
            .map(|l| l.iter().map(|&x| x.max(0.0)).collect())
            .collect(),
        _ => z
            .iter()
            .map(|l| {
                l.iter()
                    .map(|&a| {
                        let s = 1.0 / (1.0 + (-(a as f64) / HC_BETA).exp());
                        (s * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0.0, 1.0) as f32
                    })
                    .collect()
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One expected sparsity over all layers (the paper's better-quality default).
    Global,
    /// The target applies to every layer.
    PerLayer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub method: Method,
    pub steps: usize,
    pub warmup: usize,
    pub batch: usize,
    pub grad_accum: usize,
    pub lr_z: f64,
    pub lr_lambda: f64,
    pub lr_lambda2: f64,
    pub eta: f64,
    pub mu0: f64,
    pub mu_end: f64,
    pub seed: u64,
}

/// Adam moments of one parameter vector.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Moments {
    pub m: Vec<f64>,
    pub v: Vec<f64>,
}

/// One gate family (heads or channels): `z` per layer, multipliers, optimiser state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Family {
    pub name: String,
    pub target: f64,
    pub z: Vec<Vec<f32>>,
    /// [lambda1, lambda2, lambda3].
    pub lambdas: [f64; 3],
    pub z_moments: Vec<Moments>,
    pub lambda_moments: Moments,
}

/// Everything training needs to continue: checkpointed as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateState {
    pub heads: HeadGates,
    pub scope: Scope,
    /// How `z` is to be read (set when training starts).
    #[serde(default)]
    pub method: Method,
    /// Set by one-shot scoring (`magnitude`, `wanda-sp`, `flap`): `z` holds importance scores
    /// to rank, not gate values; survivors keep a scale of 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_by: Option<String>,
    pub families: Vec<Family>,
    pub step: usize,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub ce: f64,
    pub kl: f64,
    pub mu: f64,
    pub lr_z: f64,
    /// Per family: (name, expected sparsity q, lambda1, lambda2, lambda3, mean s(1-s)).
    pub families: Vec<(String, f64, f64, f64, f64, f64)>,
    /// Tokens this step trained on (batch x block length x micro-batches).
    pub tokens: usize,
    /// Wall seconds of this step, by phase.
    pub time: StepTime,
}

/// Wall seconds of one step, by phase (micro-batches summed).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepTime {
    /// The online teacher's forward (0 with a cached teacher).
    pub teacher: f64,
    /// The gated student's forward and the loss terms.
    pub student: f64,
    /// Backpropagation to the gates and reading their gradients.
    pub backward: f64,
    /// Optimiser updates of z and the multipliers.
    pub update: f64,
}

impl StepTime {
    pub fn total(&self) -> f64 {
        self.teacher + self.student + self.backward + self.update
    }
}

impl GateState {
    /// Gates initialised near 1: `z ~ N(1, 0.01)` (std 0.01), seeded.
    pub fn init(
        unit_counts: &[(String, f64, Vec<usize>)],
        heads: HeadGates,
        scope: Scope,
        seed: u64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let families = unit_counts
            .iter()
            .map(|(name, target, per_layer)| {
                let z: Vec<Vec<f32>> = per_layer
                    .iter()
                    .map(|&n| {
                        (0..n)
                            .map(|_| {
                                // Box-Muller from two uniforms.
                                let (a, b): (f64, f64) =
                                    (rand::Rng::random(&mut rng), rand::Rng::random(&mut rng));
                                (1.0 + 0.01
                                    * (-2.0 * (1.0 - a).ln()).sqrt()
                                    * (2.0 * std::f64::consts::PI * b).cos())
                                    as f32
                            })
                            .collect()
                    })
                    .collect();
                Family {
                    name: name.clone(),
                    target: *target,
                    z_moments: per_layer
                        .iter()
                        .map(|&n| Moments {
                            m: vec![0.0; n],
                            v: vec![0.0; n],
                        })
                        .collect(),
                    z,
                    lambdas: [0.0; 3],
                    lambda_moments: Moments {
                        m: vec![0.0; 3],
                        v: vec![0.0; 3],
                    },
                }
            })
            .collect();
        Self {
            heads,
            scope,
            method: Method::Ddp,
            scored_by: None,
            families,
            step: 0,
        }
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

fn adam(p: &mut f64, g: f64, mo: (&mut f64, &mut f64), lr: f64, t: usize) {
    *mo.0 = BETA1 * *mo.0 + (1.0 - BETA1) * g;
    *mo.1 = BETA2 * *mo.1 + (1.0 - BETA2) * g * g;
    let mh = *mo.0 / (1.0 - BETA1.powi(t as i32));
    let vh = *mo.1 / (1.0 - BETA2.powi(t as i32));
    *p -= lr * mh / (vh.sqrt() + EPS);
}

/// Cosine schedule after a linear warm-up.
pub fn lr_factor(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let p = ((step - warmup) as f64 / span as f64).min(1.0);
    0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

fn scalar<B: AutodiffBackend>(t: Tensor<B, 1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
}

/// What the distillation loss of a micro-batch reads besides the student's logits.
struct Rows<'a, B: AutodiffBackend> {
    tokens: &'a Tensor<B, 2, Int>,
    picked: &'a [usize],
    blocks: &'a [Vec<u32>],
    /// The online teacher's logits `[n, s, V]`, or `None` with a cached teacher.
    teacher_logits: Option<Tensor<B::InnerBackend, 3>>,
    cached: Option<&'a TopK>,
}

/// `[n, s, V]` -> the rows that predict a next token, `[n (s - 1), V]`.
fn predicting<B: burn::tensor::backend::Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [n, s, v] = logits.dims();
    logits
        .slice([0..n, 0..s - 1, 0..v])
        .reshape([n * (s - 1), v])
}

/// The rows of `[n, s, v]` host logits that predict a next token (all but each block's last).
fn predicting_rows(x: &[f32], n: usize, s: usize, v: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|b| &x[b * s * v..(b * s + s - 1) * v])
        .copied()
        .collect()
}

/// CE + eta KL in one host pass per row ([`super::distill`]), entering the graph as a term
/// whose value is the loss and whose gradient with respect to the logits is the closed form:
/// one op on the CPU autodiff backend (`backend::host_term`), elsewhere
/// `sum(logits * G) - sum(logits * G).detach() + loss`. Returns (ce, kl, that term).
fn distill_on_host<B: AutodiffBackend>(
    student: Tensor<B, 3>,
    rows: Rows<B>,
    eta: f64,
) -> (f64, f64, Tensor<B, 1>) {
    // Whole blocks go to the host (contiguous: a plain copy); the rows that predict a token
    // are picked there, and the last position of each block gets a zero gradient, so the
    // tracked `[n, s, V]` logits are never sliced (a strided copy, and its backward).
    let [n, s, v] = student.dims();
    let s_host = predicting_rows(&crate::backend::host_f32(student.clone().inner()), n, s, v);
    let targets: Vec<u32> = rows
        .picked
        .iter()
        .flat_map(|&b| rows.blocks[b][1..].iter().copied())
        .collect();
    let t_host = rows
        .teacher_logits
        .map(|t| predicting_rows(&crate::backend::host_f32(t), n, s, v));
    let cached = rows.cached.map(|c| (c.header.k, c.host_rows(rows.picked)));
    let teacher = match (&t_host, &cached) {
        (Some(t), _) => TeacherRows::Logits(t),
        (None, Some((k, (idx, logp, log_rest)))) => TeacherRows::TopK {
            k: *k,
            idx,
            logp,
            log_rest,
        },
        (None, None) => unreachable!("online logits or a cached teacher"),
    };
    let d = distill(&s_host, &targets, teacher, eta);
    let mut grad = vec![0f32; n * s * v];
    for (b, rows) in d.grad.chunks(((s - 1) * v).max(1)).enumerate() {
        grad[b * s * v..b * s * v + rows.len()].copy_from_slice(rows);
    }
    let value = d.ce + eta * d.kl;
    let term = crate::backend::host_term::term(&student, grad, value).unwrap_or_else(|grad| {
        let g = Tensor::<B, 3>::from_data(TensorData::new(grad, [n, s, v]), &student.device());
        let lin = (student * g).sum();
        lin.clone() - lin.detach() + value
    });
    (d.ce, d.kl, term)
}

/// The same loss as burn tensor ops (backends whose tensors do not live on the host).
fn distill_tensors<B: AutodiffBackend>(
    student: Tensor<B, 3>,
    rows: Rows<B>,
    eta: f64,
) -> (f64, f64, Tensor<B, 1>) {
    let ls = log_softmax(predicting(student), 1);
    let [n, s] = rows.tokens.dims();
    let targets = rows
        .tokens
        .clone()
        .slice([0..n, 1..s])
        .reshape([n * (s - 1), 1]);
    let ce = ls.clone().gather(1, targets).neg().mean();
    let kl = match (rows.teacher_logits, rows.cached) {
        (Some(t), _) => {
            let lt = Tensor::<B, 2>::from_inner(log_softmax(predicting(t), 1));
            (lt.clone().exp() * (lt - ls)).sum_dim(1).mean()
        }
        (None, Some(c)) => {
            let (idx, lt, rest) = c.rows::<B>(rows.picked, &ls.device());
            kl_topk(ls, idx, lt, rest)
        }
        (None, None) => unreachable!("online logits or a cached teacher"),
    };
    let term = ce.clone() + kl.clone() * eta;
    (scalar(ce), scalar(kl), term)
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
    let dev = model.device.clone();
    let n_layers = model.layers.len();
    let inner = model.inner();
    // A fixed shuffled order of blocks, walked by step, so a resumed run sees the same batches.
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(cfg.seed ^ 0x5eed));
    let seq = blocks[0].len();
    if state.step == 0 && state.method != cfg.method {
        if cfg.method != Method::Ddp {
            for f in &mut state.families {
                for z in f.z.iter_mut().flatten() {
                    *z += HC_LOG_ALPHA_SHIFT;
                }
            }
        }
        state.method = cfg.method;
    }
    if state.method != cfg.method {
        return Err(Error::Invalid(format!(
            "the checkpoint was trained with {:?}, this run asks for {:?}",
            state.method, cfg.method
        )));
    }
    if let Some(f) = state.families.iter().find(|f| f.z.len() != n_layers) {
        return Err(Error::Invalid(format!(
            "the {} gates cover {} layers, the model has {n_layers}",
            f.name,
            f.z.len()
        )));
    }
    // Expert-channel gates are `[experts, width]` of each MoE layer, flattened: checked once.
    let expert_shapes: Vec<Option<[usize; 2]>> = model
        .layers
        .iter()
        .map(|l| match &l.ffn {
            Ffn::Moe(m) => Some([m.experts.len(), m.expert_width()]),
            Ffn::Dense(_) => None,
        })
        .collect();
    if let Some(f) = state.family("experts") {
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
    while state.step < cfg.steps {
        let t = state.step;
        let mu = mu_at(t, cfg.steps, cfg.mu0, cfg.mu_end);
        let f_lr = lr_factor(t, cfg.warmup, cfg.steps);
        let mut z_grads: Vec<Vec<Vec<f64>>> = state
            .families
            .iter()
            .map(|f| f.z.iter().map(|l| vec![0.0; l.len()]).collect())
            .collect();
        let mut l_grads: Vec<[f64; 3]> = vec![[0.0; 3]; state.families.len()];
        let (mut loss_sum, mut ce_sum, mut kl_sum) = (0.0, 0.0, 0.0);
        let mut fam_log = vec![];
        let mut time = StepTime::default();
        for micro in 0..cfg.grad_accum.max(1) {
            let picked: Vec<usize> = (0..cfg.batch)
                .map(|i| order[((t * cfg.grad_accum.max(1) + micro) * cfg.batch + i) % order.len()])
                .collect();
            let ids: Vec<i64> = picked
                .iter()
                .flat_map(|&b| blocks[b].iter().map(|&x| x as i64))
                .collect();
            let tokens =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [cfg.batch, seq]), &dev);
            // Leaves: z per family and layer (none where a layer has no unit of the family, e.g.
            // expert channels in a dense layer), and the multipliers.
            let zs: Vec<Vec<Option<Tensor<B, 1>>>> = state
                .families
                .iter()
                .map(|f| {
                    f.z.iter()
                        .map(|l| {
                            (!l.is_empty()).then(|| {
                                Tensor::<B, 1>::from_data(
                                    TensorData::new(l.clone(), [l.len()]),
                                    &dev,
                                )
                                .require_grad()
                            })
                        })
                        .collect()
                })
                .collect();
            let lams: Vec<Tensor<B, 1>> = state
                .families
                .iter()
                .map(|f| {
                    Tensor::<B, 1>::from_data(
                        TensorData::new(
                            f.lambdas.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                            [3],
                        ),
                        &dev,
                    )
                    .require_grad()
                })
                .collect();
            let mut layers: Vec<LayerGates<B>> =
                (0..n_layers).map(|_| LayerGates::default()).collect();
            for (fi, (f, zf)) in state.families.iter().zip(&zs).enumerate() {
                for (i, z) in zf.iter().enumerate() {
                    let Some(z) = z else { continue };
                    let m = match cfg.method {
                        Method::Ddp => forward_mask(z.clone()),
                        Method::DetHardConcrete => hard_concrete(z.clone(), None),
                        Method::HardConcrete => {
                            // Noise seeded by (seed, step, micro-batch, family, layer): a resumed
                            // run draws what the uninterrupted one drew.
                            let mut rng = StdRng::seed_from_u64(
                                cfg.seed
                                    ^ ((t as u64) << 20)
                                    ^ ((micro as u64) << 12)
                                    ^ ((fi as u64) << 8)
                                    ^ i as u64,
                            );
                            let n = z.dims()[0];
                            let u: Vec<f32> = (0..n)
                                .map(|_| rng.random_range(1e-6f32..1.0 - 1e-6))
                                .collect();
                            hard_concrete(
                                z.clone(),
                                Some(Tensor::from_data(TensorData::new(u, [n]), &dev)),
                            )
                        }
                    };
                    match f.name.as_str() {
                        "heads" => layers[i].heads = Some(m),
                        // Non-empty only where checked to match `expert_shapes`.
                        "experts" => layers[i].experts = expert_shapes[i].map(|sh| m.reshape(sh)),
                        _ => layers[i].channels = Some(m),
                    }
                }
            }
            let gates = Gates { layers };
            let t_teacher = Instant::now();
            // The dense teacher on the inner backend: no graph, the inference fast paths.
            let teacher_logits = teacher
                .is_none()
                .then(|| inner.forward(tokens.clone().inner(), None, None, Logits::All));
            time.teacher += t_teacher.elapsed().as_secs_f64();
            let t_student = Instant::now();
            let student = model.forward(tokens.clone(), None, Some(&gates), Logits::All);
            let rows = Rows {
                tokens: &tokens,
                picked: &picked,
                blocks,
                teacher_logits,
                cached: teacher,
            };
            let (ce, kl, mut loss) = if crate::backend::on_host::<B::InnerBackend>() {
                distill_on_host(student, rows, cfg.eta)
            } else {
                distill_tensors(student, rows, cfg.eta)
            };
            // Read back only when the loss is not finite, to name the term.
            let mut terms: Vec<(String, Tensor<B, 1>)> = vec![];
            fam_log.clear();
            for ((f, zf), lam) in state.families.iter().zip(&zs).zip(&lams) {
                // Per-unit retention: DDP's annealed score, or the hard-concrete expected L0.
                let ss: Vec<Tensor<B, 1>> = zf
                    .iter()
                    .flatten()
                    .map(|z| match cfg.method {
                        Method::Ddp => retention(z.clone(), mu),
                        _ => hard_concrete_l0(z.clone()),
                    })
                    .collect();
                // The baselines warm their target up linearly over the warm-up steps (CoFi).
                let target = match cfg.method {
                    Method::Ddp => f.target,
                    _ => f.target * ((t + 1) as f64 / cfg.warmup.max(1) as f64).min(1.0),
                };
                // Gap q - a: one over all layers (global), or one per layer (per-layer scope, where
                // the multiplier terms are taken per row and averaged).
                let gaps: Tensor<B, 1> = match state.scope {
                    Scope::Global => Tensor::cat(ss.clone(), 0).mean().neg() + (1.0 - target),
                    Scope::PerLayer => Tensor::cat(
                        ss.iter()
                            .map(|s| s.clone().mean().neg() + (1.0 - target))
                            .collect(),
                        0,
                    ),
                };
                let all = Tensor::cat(ss.clone(), 0);
                let bin = (all.clone() * (all.neg() + 1.0)).mean();
                let l1 = lam.clone().narrow(0, 0, 1);
                let l2 = lam.clone().narrow(0, 1, 1);
                let l3 = lam.clone().narrow(0, 2, 1);
                let mut sparsity_term =
                    l1 * gaps.clone().mean() + l2 * (gaps.clone() * gaps.clone()).mean();
                if cfg.method == Method::Ddp {
                    // The binarisation term is DDP's; the baselines' Lagrangian has two terms.
                    sparsity_term = sparsity_term + l3 * bin.clone();
                }
                fam_log.push((
                    f.name.clone(),
                    scalar(gaps.mean()) + target,
                    f.lambdas[0],
                    f.lambdas[1],
                    f.lambdas[2],
                    scalar(bin.clone()),
                ));
                terms.push((format!("{} sparsity", f.name), sparsity_term.clone()));
                loss = loss + sparsity_term;
            }
            let lv = scalar(loss.clone());
            if !lv.is_finite() {
                let bad = [("cross-entropy", ce), ("KL", kl)]
                    .into_iter()
                    .find(|(_, v)| !v.is_finite())
                    .map(|(n, _)| n.to_string())
                    .or_else(|| {
                        terms
                            .iter()
                            .find(|(_, t)| !scalar(t.clone()).is_finite())
                            .map(|x| x.0.clone())
                    })
                    .unwrap_or_else(|| "loss".to_string());
                return Err(Error::Invalid(format!(
                    "step {t}: the {bad} term is not finite; stopping at the last good step ({t})"
                )));
            }
            loss_sum += lv;
            ce_sum += ce;
            kl_sum += kl;
            time.student += t_student.elapsed().as_secs_f64();
            let t_backward = Instant::now();
            let grads = loss.backward();
            for (fi, zf) in zs.iter().enumerate() {
                for (i, z) in zf.iter().enumerate() {
                    let Some(z) = z else { continue };
                    let g: Vec<f32> = z
                        .grad(&grads)
                        .map(|g| g.into_data().into_vec::<f32>().unwrap_or_default())
                        .unwrap_or_default();
                    for (acc, x) in z_grads[fi][i].iter_mut().zip(g) {
                        *acc += x as f64;
                    }
                }
                let g: Vec<f32> = lams[fi]
                    .grad(&grads)
                    .map(|g| g.into_data().into_vec::<f32>().unwrap_or_default())
                    .unwrap_or_default();
                for (acc, x) in l_grads[fi].iter_mut().zip(g) {
                    *acc += x as f64;
                }
            }
            time.backward += t_backward.elapsed().as_secs_f64();
        }
        let t_update = Instant::now();
        let k = cfg.grad_accum.max(1) as f64;
        let step_no = t + 1;
        for (fi, f) in state.families.iter_mut().enumerate() {
            for (i, layer) in f.z.iter_mut().enumerate() {
                let mo = &mut f.z_moments[i];
                for (j, zj) in layer.iter_mut().enumerate() {
                    let mut p = *zj as f64;
                    adam(
                        &mut p,
                        z_grads[fi][i][j] / k,
                        (&mut mo.m[j], &mut mo.v[j]),
                        cfg.lr_z * f_lr,
                        step_no,
                    );
                    // DDP clamps z >= -0.1; log_alpha is unconstrained.
                    *zj = if cfg.method == Method::Ddp {
                        p.max(-0.1) as f32
                    } else {
                        p as f32
                    };
                }
            }
            for (j, g) in l_grads[fi].iter().enumerate() {
                let lr = if j == 1 {
                    cfg.lr_lambda2
                } else {
                    cfg.lr_lambda
                };
                // Gradient ascent on the multipliers.
                let (m, v) = (&mut f.lambda_moments.m[j], &mut f.lambda_moments.v[j]);
                adam(&mut f.lambdas[j], -g / k, (m, v), lr * f_lr, step_no);
            }
        }
        state.step = step_no;
        time.update = t_update.elapsed().as_secs_f64();
        let log = StepLog {
            step: step_no,
            loss: loss_sum / k,
            ce: ce_sum / k,
            kl: kl_sum / k,
            mu,
            lr_z: cfg.lr_z * f_lr,
            families: fam_log.clone(),
            tokens: cfg.batch * seq * cfg.grad_accum.max(1),
            time,
        };
        on_step(&log, state)?;
    }
    Ok(())
}
