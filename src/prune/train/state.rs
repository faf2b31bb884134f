//! The training state that checkpoints as JSON ([`GateState`]: gates, multipliers, optimiser
//! moments, step; with gate-insert's `split = "learned"` the [`Joint`] budget over expected
//! parameters and its multipliers) and what each step reports ([`StepLog`], [`StepTime`]).

use std::collections::BTreeMap;

use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::Method;
use crate::prune::family::FamilyKind;

/// Gate granularity of attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadGates {
    /// One gate per KV group (whole groups removed: loadable by standard runtimes).
    PerGroup,
    /// One gate per query head.
    PerHead,
    /// Attention not pruned.
    None,
}

/// Where a family's sparsity target applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One expected sparsity over all layers (the paper's better-quality default).
    Global,
    /// The target applies to every layer.
    PerLayer,
    /// The target applies to every layer and, for per-head gates, to every KV group of it
    /// (`GateState::kv_groups`): training then chooses the shape the uniform rule deploys.
    PerGroup,
}

/// Adam moments of one parameter vector.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Moments {
    /// First moments, one per parameter.
    pub m: Vec<f64>,
    /// Second moments, one per parameter.
    pub v: Vec<f64>,
}

impl Moments {
    /// Zero moments of `n` parameters (a fresh optimiser).
    pub fn zeros(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// One gate family (heads or channels): `z` per layer, multipliers, optimiser state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Family {
    /// Heads, channels (dense FFN and shared-expert channels) or experts (routed-expert
    /// channels).
    pub name: FamilyKind,
    /// Target sparsity: the fraction of the family's units to remove.
    pub target: f64,
    /// Gate parameters per layer (empty where a layer has no unit of the family): DDP's `z`,
    /// the hard-concrete baselines' `log_alpha`, or one-shot importance scores.
    pub z: Vec<Vec<f32>>,
    /// [lambda1, lambda2, lambda3].
    pub lambdas: [f64; 3],
    /// Adam moments of `z`, per layer.
    pub z_moments: Vec<Moments>,
    /// Adam moments of the three multipliers.
    pub lambda_moments: Moments,
    /// With a mu hold: the first step after which the family's expected sparsity was within
    /// the hold's tolerance of its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<usize>,
}

/// One Lagrangian over the expected removed parameters of every family (gate-insert's
/// `split = "learned"`, CoFi / Sheared-LLaMA): its term `L1 (q_p - a) + L2 (q_p - a)^2`, with
/// `q_p = sum_F sum_l w_Fl sum_k (1 - s_k) / covered`, replaces the families' lambda1 and
/// lambda2 terms, so the training decides how much each family gives; each family keeps its
/// lambda3 binarisation term.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Joint {
    /// `a`: the fraction of the covered prunable parameters to remove.
    pub target: f64,
    /// Per family, per layer: the prunable parameters one unit of it removes (`w_Fl`).
    pub unit_params: BTreeMap<FamilyKind, Vec<f64>>,
    /// [L1, L2].
    pub lambdas: [f64; 2],
    /// Adam moments of the two multipliers.
    pub lambda_moments: Moments,
    /// With a mu hold: the first step after which `q_p` was within the hold's tolerance of `a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<usize>,
}

impl Joint {
    /// A joint budget of `target` over `unit_params`, multipliers and moments at 0.
    pub fn new(target: f64, unit_params: BTreeMap<FamilyKind, Vec<f64>>) -> Self {
        Self {
            target,
            unit_params,
            lambdas: [0.0; 2],
            lambda_moments: Moments::zeros(2),
            reached_at: None,
        }
    }

    /// Family `f`'s parameters per unit, per layer (none: a family the budget does not weigh).
    pub fn weights(&self, f: &Family) -> &[f64] {
        self.unit_params.get(&f.name).map_or(&[], Vec::as_slice)
    }

    /// The prunable parameters family `f`'s units cover: `sum_l w_Fl units_Fl`.
    pub fn family_params(&self, f: &Family) -> f64 {
        f.z.iter()
            .zip(self.weights(f))
            .map(|(z, w)| z.len() as f64 * w)
            .sum()
    }

    /// The prunable parameters `families`' units cover: `sum_F sum_l w_Fl units_Fl`.
    pub fn covered(&self, families: &[Family]) -> f64 {
        families.iter().map(|f| self.family_params(f)).sum()
    }

    /// The fraction of the covered parameters removed when `removed(f, l)` units of family `f`
    /// go in layer `l` (expected, or counted).
    pub fn removed_fraction(
        &self,
        families: &[Family],
        removed: impl Fn(usize, usize) -> f64,
    ) -> f64 {
        let mut sum = 0.0;
        for (fi, f) in families.iter().enumerate() {
            for (l, w) in self.weights(f).iter().enumerate() {
                sum += w * removed(fi, l);
            }
        }
        sum / self.covered(families).max(1.0)
    }
}

/// Everything training needs to continue: checkpointed as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateState {
    /// Gate granularity of attention.
    pub heads: HeadGates,
    /// Where the sparsity targets apply.
    pub scope: Scope,
    /// How `z` is to be read (set when training starts).
    #[serde(default)]
    pub method: Method,
    /// Set by one-shot scoring (`magnitude`, `wanda-sp`, `flap`): `z` holds importance scores
    /// to rank, not gate values; survivors keep a scale of 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_by: Option<String>,
    /// The gate families.
    pub families: Vec<Family>,
    /// Steps trained so far.
    pub step: usize,
    /// With a mu hold (`Adapt::mu_hold_tol`): the step after which mu started to anneal, once
    /// every family reached its target or the hold its limit; `None` while mu is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu_hold_until: Option<usize>,
    /// With gate-insert's `split = "learned"`: one budget over the expected parameters of every
    /// family, in place of the families' own targets while training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joint: Option<Joint>,
    /// With the per-group scope and per-head gates: the KV groups of each layer, whose query
    /// heads (consecutive gates) share one target row; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv_groups: Vec<usize>,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    /// Steps done after this one (counted from 1).
    pub step: usize,
    /// Total loss, mean over the micro-batches.
    pub loss: f64,
    /// Cross-entropy, mean over the micro-batches.
    pub ce: f64,
    /// KL(teacher || student), mean over the micro-batches.
    pub kl: f64,
    /// The annealing temperature mu of this step.
    pub mu: f64,
    /// The learning rate of `z` this step (after the schedule).
    pub lr_z: f64,
    /// Per family: (name, expected sparsity q, lambda1, lambda2, lambda3, mean s(1-s)).
    pub families: Vec<(String, f64, f64, f64, f64, f64)>,
    /// With a joint budget: (expected removed-parameter fraction q_p, L1, L2).
    pub joint: Option<(f64, f64, f64)>,
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
    /// Wall seconds of the whole step: the phases summed.
    pub fn total(&self) -> f64 {
        self.teacher + self.student + self.backward + self.update
    }
}

impl GateState {
    /// Gates initialised near 1: `z ~ N(1, 0.01)` (std 0.01), seeded. `unit_counts` is, per
    /// family, (name, target sparsity, units per layer); multipliers and moments start at 0.
    pub fn init(
        unit_counts: &[(FamilyKind, f64, Vec<usize>)],
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
                    .map(|&n| (0..n).map(|_| near_one(&mut rng)).collect())
                    .collect();
                Family {
                    name: *name,
                    target: *target,
                    z_moments: per_layer.iter().map(|&n| Moments::zeros(n)).collect(),
                    z,
                    lambdas: [0.0; 3],
                    lambda_moments: Moments::zeros(3),
                    reached_at: None,
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
            mu_hold_until: None,
            joint: None,
            kv_groups: vec![],
        }
    }

    /// The family called `name`, if gated.
    pub fn family(&self, name: FamilyKind) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// One draw of N(1, 0.01) (std 0.01), Box-Muller from two uniforms.
fn near_one(rng: &mut StdRng) -> f32 {
    let (a, b): (f64, f64) = (rand::Rng::random(rng), rand::Rng::random(rng));
    (1.0 + 0.01 * (-2.0 * (1.0 - a).ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
}
