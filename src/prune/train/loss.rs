//! The loss of one micro-batch: CE + eta KL(teacher || student) (METHOD.md §4), computed once
//! per micro-batch on the host or as tensor ops depending on the backend, plus each family's
//! Lagrangian sparsity term, or with a joint budget ([`Joint`]) one Lagrangian over the expected
//! removed parameters ([`joint_sparsity`]) and each family's binarisation term.

use burn::tensor::{
    activation::log_softmax,
    backend::{AutodiffBackend, Backend},
    Int, Tensor, TensorData,
};

use super::super::distill::{distill, TeacherRows};
use super::super::teacher::{kl_topk, TopK};
use super::{Family, Joint, Method, Scope, TrainConfig};
use crate::error::Error;

/// A family's log entry: (name, expected sparsity q, lambda1, lambda2, lambda3, mean s(1-s)).
pub(crate) type FamilyLog = (String, f64, f64, f64, f64, f64);

/// The value of a one-element tensor (NaN if it cannot be read).
pub(crate) fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
}

/// What the distillation loss of a micro-batch reads besides the student's logits.
pub(crate) struct Rows<'a, B: AutodiffBackend> {
    /// The micro-batch's tokens `[n, s]`.
    pub(crate) tokens: &'a Tensor<B, 2, Int>,
    /// The indices of its blocks.
    pub(crate) picked: &'a [usize],
    /// All training blocks.
    pub(crate) blocks: &'a [Vec<u32>],
    /// The online teacher's logits `[n, s, V]`, or `None` with a cached teacher.
    pub(crate) teacher_logits: Option<Tensor<B::InnerBackend, 3>>,
    /// The cached teacher, if any.
    pub(crate) cached: Option<&'a TopK>,
}

/// CE + eta KL of the student's logits `[n, s, V]`: on the host where the backend's tensors
/// live there ([`distill_on_host`]), else as tensor ops ([`distill_tensors`]). Returns
/// (ce, kl, the loss term).
pub(crate) fn distillation<B: AutodiffBackend>(
    student: Tensor<B, 3>,
    rows: Rows<B>,
    eta: f64,
) -> (f64, f64, Tensor<B, 1>) {
    if crate::backend::on_host::<B::InnerBackend>() {
        distill_on_host(student, rows, eta)
    } else {
        distill_tensors(student, rows, eta)
    }
}

/// `[n, s, V]` -> the rows that predict a next token, `[n (s - 1), V]`.
fn predicting<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
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

/// CE + eta KL in one host pass per row ([`super::super::distill`]), entering the graph as a
/// term whose value is the loss and whose gradient with respect to the logits is the closed
/// form: one op on the CPU autodiff backend (`backend::host_term`), elsewhere
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

/// The retention scores `s(z; mu)` of a family's layers under `method` (`None` where a layer
/// has no unit of it).
pub(crate) fn retentions<B: AutodiffBackend>(
    zf: &[Option<Tensor<B, 1>>],
    method: Method,
    mu: f64,
) -> Vec<Option<Tensor<B, 1>>> {
    zf.iter()
        .map(|z| z.as_ref().map(|z| method.retention(z.clone(), mu)))
        .collect()
}

/// The mean retention of each target row of one layer's scores `s`: the layer's (`groups` 0), or
/// each of its `groups` runs of consecutive gates (the query heads of one KV group; training
/// checked that `groups` divides the layer's gates).
fn row_means<B: Backend>(s: &Tensor<B, 1>, groups: usize) -> Tensor<B, 1> {
    let n = s.dims()[0];
    if groups <= 1 {
        return s.clone().mean();
    }
    s.clone()
        .reshape([groups, n / groups])
        .mean_dim(1)
        .reshape([groups])
}

/// Family `f`'s Lagrangian term `l1 (q - a) + l2 (q - a)^2 [+ l3 mean s(1 - s)]` at step `t`,
/// from its retention scores `ss` and multipliers `lam`, with its log entry. `groups`: per
/// layer, the KV groups whose heads share a target row (per-group scope on per-head gates;
/// empty otherwise). With a joint budget (`joint`) only the binarisation term is the family's
/// (`None` when the method has none): [`joint_sparsity`] has the others.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sparsity<B: AutodiffBackend>(
    f: &Family,
    ss: &[Option<Tensor<B, 1>>],
    lam: &Tensor<B, 1>,
    cfg: &TrainConfig,
    scope: Scope,
    groups: &[usize],
    t: usize,
    joint: bool,
) -> (Option<Tensor<B, 1>>, FamilyLog) {
    let method = cfg.method;
    // The layers that have gates of the family, with their KV groups (0: one row per layer).
    let (ss, rows): (Vec<Tensor<B, 1>>, Vec<usize>) = ss
        .iter()
        .enumerate()
        .filter_map(|(l, s)| Some((s.clone()?, groups.get(l).copied().unwrap_or(0))))
        .unzip();
    let target = method.target(f.target, t, cfg.warmup);
    // Gap q - a: one over all layers (global), or one per row (a layer, or with per-head gates
    // in the per-group scope a KV group), where the multiplier terms are taken per row and
    // averaged.
    let gaps: Tensor<B, 1> = match scope {
        Scope::Global => Tensor::cat(ss.clone(), 0).mean().neg() + (1.0 - target),
        Scope::PerLayer | Scope::PerGroup => Tensor::cat(
            ss.iter()
                .zip(&rows)
                .map(|(s, &g)| row_means(s, g).neg() + (1.0 - target))
                .collect(),
            0,
        ),
    };
    let all = Tensor::cat(ss, 0);
    let bin = (all.clone() * (all.neg() + 1.0)).mean();
    let l1 = lam.clone().narrow(0, 0, 1);
    let l2 = lam.clone().narrow(0, 1, 1);
    let l3 = lam.clone().narrow(0, 2, 1);
    let mut term =
        (!joint).then(|| l1 * gaps.clone().mean() + l2 * (gaps.clone() * gaps.clone()).mean());
    if method.binarises() {
        let b = l3 * bin.clone();
        term = Some(match term {
            Some(x) => x + b,
            None => b,
        });
    }
    let log = (
        f.name.to_string(),
        scalar(gaps.mean()) + target,
        f.lambdas[0],
        f.lambdas[1],
        f.lambdas[2],
        scalar(bin),
    );
    (term, log)
}

/// The joint budget's term `L1 (q_p - a) + L2 (q_p - a)^2` at step `t`, from every family's
/// retention scores `ss` (in the order of `families`) and the multipliers `lam` ([L1, L2]):
/// `q_p = sum_F sum_l w_Fl sum_k (1 - s_k) / covered`, the expected fraction of the covered
/// parameters removed, and `a` the joint target after the method's warm-up. With its log
/// entry (q_p, L1, L2).
pub(crate) fn joint_sparsity<B: AutodiffBackend>(
    joint: &Joint,
    families: &[Family],
    ss: &[Vec<Option<Tensor<B, 1>>>],
    lam: &Tensor<B, 1>,
    cfg: &TrainConfig,
    t: usize,
) -> (Tensor<B, 1>, (f64, f64, f64)) {
    let covered = joint.covered(families).max(1.0);
    let removed: Vec<Tensor<B, 1>> = families
        .iter()
        .zip(ss)
        .flat_map(|(f, sf)| sf.iter().zip(joint.weights(f)))
        .filter_map(|(s, &w)| Some((s.clone()?.neg() + 1.0).sum() * (w / covered)))
        .collect();
    let q = Tensor::cat(removed, 0).sum();
    let a = cfg.method.target(joint.target, t, cfg.warmup);
    let gap = q.clone() - a;
    let l1 = lam.clone().narrow(0, 0, 1);
    let l2 = lam.clone().narrow(0, 1, 1);
    let term = l1 * gap.clone() + l2 * (gap.clone() * gap);
    (term, (scalar(q), joint.lambdas[0], joint.lambdas[1]))
}

/// The error of step `t` whose loss is not finite, naming the first non-finite term: CE, KL,
/// then the named `terms`.
pub(crate) fn not_finite<B: Backend>(
    t: usize,
    ce: f64,
    kl: f64,
    terms: &[(String, Tensor<B, 1>)],
) -> Error {
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
    Error::Invalid(format!(
        "step {t}: the {bad} term is not finite; stopping at the last good step ({t})"
    ))
}
