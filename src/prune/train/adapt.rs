//! How a run shorter or smaller than the paper's adapts its rates and its mu schedule, so the
//! gate families reach their targets and binarise in the steps given (issue 13; the measurements
//! behind each rule are in docs/research/2026-12-01-convergence/FINDINGS.md). Every rule has an
//! "off" value that is METHOD.md unchanged, and each is a no-op at the paper's scale.
//!
//! - **Rates per fraction of the run** (`lr_steps_ref`): Adam moves a multiplier by about its
//!   learning rate per step, and the reference rates are tuned for 1000 steps; a run of T steps
//!   scales them by `max(1, lr_steps_ref / T)`, so the multipliers reach the same values at the
//!   same fraction of the run.
//! - **z travel** (`z_travel`): the retention score only has a usable slope at `z ~ 1` while mu
//!   is high (mu >= 0.3, the first quarter of the sqrt schedule); `lr_z` is raised to at least
//!   `z_travel / (sum of the schedule's factors over that quarter)`, so a gate can cross from 1 to
//!   0 inside it (the reference run: 4.0 at lr 0.02).
//! - **Multipliers per family size** (`lambda_scale`): a family's penalty gradient per gate is
//!   ~1/N_F while its task gradient per gate is ~1/sqrt(units per layer) (measured 23x apart on
//!   SmolLM2's heads and channels), so a large family needs larger multipliers to be pushed as
//!   hard; `sqrt-units` scales each family's multiplier rates by sqrt(its units per layer / the
//!   smallest family's).
//! - **Hold mu until the targets are reached** (`mu_hold_tol`): mu stays at mu_0, and the
//!   learning rates at their peak, until every family's expected sparsity has come up to within
//!   the tolerance of its target (q starts at 0 and rises; a step that jumps over the band counts,
//!   at most `mu_hold_max` of the steps); then mu anneals and the rates decay over the remaining
//!   steps, so the gates still have the rates to cross to 0 while the score hardens. The step
//!   each family reached its target and the step the hold ended are checkpointed.
//! - **Restart the multipliers at the hold's end** (`lambda_restart`): on the way to the
//!   targets the multipliers wind up (Adam's first moment carries lambda1 on past the target, and
//!   its second moment remembers the early gaps of ~alpha, so the later gaps of ~0.01 move it
//!   100x slower); the final lock-in by lambda3 then freezes an overshoot of 2-3 % (stories260k,
//!   90 steps: channels 0.521 for 0.5). Zeroing the multipliers' moments when the hold ends (their
//!   values kept) lets them answer the gap as it is: within 0.6 % of the target from 30 to 1000
//!   steps (docs/research/2026-12-07-restart/).
//!
//! With a joint budget ([`super::Joint`], gate-insert's `split = "learned"`) its multipliers
//! take the same rules: the rates per fraction of the run, the largest family's size scale
//! ([`rates`]); the hold waits for the expected removed-parameter fraction instead of each
//! family's sparsity, and the restart zeroes the joint multipliers' moments too.

use serde::{Deserialize, Serialize};

use super::optim::lr_factor;
use super::{Family, GateState, Moments, TrainConfig};
use crate::prune::surrogate::mu_at;

/// How the multipliers' learning rates scale with the size of their family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LambdaScale {
    /// The same rates for every family (METHOD.md).
    #[default]
    None,
    /// Family F's rates times sqrt(units per layer of F / those of the smallest family).
    SqrtUnits,
}

/// The adaptations of a run (see the module docs); `Adapt::default()` is METHOD.md.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Adapt {
    /// The run length the multiplier rates are tuned for (0: rates per step, as given).
    pub lr_steps_ref: usize,
    /// The distance z must be able to travel while mu >= 0.3 (0: lr_z as given).
    pub z_travel: f64,
    /// Per-family scale of the multiplier rates.
    pub lambda_scale: LambdaScale,
    /// Hold mu at mu_0 until every family is this close to its target (0: no hold).
    pub mu_hold_tol: f64,
    /// The longest hold, as a fraction of the steps.
    pub mu_hold_max: f64,
    /// Restart the multipliers' Adam moments when the hold ends (false: METHOD.md's one run).
    #[serde(default)]
    pub lambda_restart: bool,
}

impl Default for Adapt {
    fn default() -> Self {
        Self {
            lr_steps_ref: 0,
            z_travel: 0.0,
            lambda_scale: LambdaScale::None,
            mu_hold_tol: 0.0,
            mu_hold_max: 0.5,
            lambda_restart: false,
        }
    }
}

/// The learning rates a run uses, after [`Adapt`]: peak values, before the schedule's factor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    /// Peak learning rate of z.
    pub lr_z: f64,
    /// Per family, the peak rates of [lambda1, lambda2, lambda3].
    pub lambdas: Vec<[f64; 3]>,
    /// With a joint budget, the peak rates of its [L1, L2].
    pub joint: Option<[f64; 2]>,
}

/// Mean units per layer of a family (over the layers it gates).
fn units_per_layer(f: &Family) -> f64 {
    let gated: Vec<usize> = f.z.iter().map(Vec::len).filter(|&n| n > 0).collect();
    gated.iter().sum::<usize>() as f64 / gated.len().max(1) as f64
}

/// The sum of the schedule's learning-rate factors over the steps with mu >= 0.3 in the
/// reference sqrt schedule: the first quarter of the run (at least one step).
fn window_sum(cfg: &TrainConfig) -> f64 {
    (0..(cfg.steps / 4).max(1))
        .map(|t| lr_factor(t, cfg.warmup, cfg.steps))
        .sum()
}

/// The rates of a run of `cfg` over `state`'s families and joint budget.
pub fn rates(cfg: &TrainConfig, state: &GateState) -> Rates {
    let families = &state.families;
    let a = &cfg.adapt;
    let k = if a.lr_steps_ref > 0 {
        (a.lr_steps_ref as f64 / cfg.steps.max(1) as f64).max(1.0)
    } else {
        1.0
    };
    let lr_z = if a.z_travel > 0.0 {
        cfg.lr_z.max(a.z_travel / window_sum(cfg))
    } else {
        cfg.lr_z
    };
    let smallest = families
        .iter()
        .map(units_per_layer)
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    let scale = |units: f64| match a.lambda_scale {
        LambdaScale::None => 1.0,
        LambdaScale::SqrtUnits => (units / smallest).sqrt(),
    };
    let lambdas = families
        .iter()
        .map(|f| {
            let c = scale(units_per_layer(f));
            let (l, l2) = (cfg.lr_lambda * k * c, cfg.lr_lambda2 * k * c);
            [l, l2, l]
        })
        .collect();
    // One pair of multipliers pushes every family; the one that needs the largest multipliers
    // is the family with the most units per layer (its penalty gradient per gate is the smallest
    // against its task gradient), so the joint rates are that family's: with them the joint
    // multipliers reach, in the same steps, what its own would have to, and the smaller families,
    // pushed harder than they need, give way first where their units cost less loss.
    let joint = state.joint.as_ref().map(|_| {
        let largest = families.iter().map(units_per_layer).fold(1.0, f64::max);
        let c = scale(largest);
        [cfg.lr_lambda * k * c, cfg.lr_lambda2 * k * c]
    });
    Rates {
        lr_z,
        lambdas,
        joint,
    }
}

/// Whether `cfg` holds mu until the targets are reached (DDP only: the baselines have no mu).
pub fn holds_mu(cfg: &TrainConfig) -> bool {
    cfg.adapt.mu_hold_tol > 0.0 && cfg.method.binarises()
}

/// Mu at step `t` (from 0): METHOD.md's sqrt schedule, or with a hold, mu_0 until the hold
/// ended (`state.mu_hold_until`) and the sqrt schedule over the remaining steps after it.
pub fn mu(cfg: &TrainConfig, state: &GateState, t: usize) -> f64 {
    if !holds_mu(cfg) {
        return mu_at(t, cfg.steps, cfg.mu0, cfg.mu_end);
    }
    match state.mu_hold_until {
        None => cfg.mu0,
        Some(h) => mu_at(
            t.saturating_sub(h),
            cfg.steps.saturating_sub(h),
            cfg.mu0,
            cfg.mu_end,
        ),
    }
}

/// The step a hold may last to: `mu_hold_max` of the steps, rounded down.
pub fn hold_limit(cfg: &TrainConfig) -> usize {
    (cfg.adapt.mu_hold_max.clamp(0.0, 1.0) * cfg.steps as f64).floor() as usize
}

/// The factor on the peak learning rates at step `t`: METHOD.md's warm-up and cosine, or with a
/// hold, the warm-up, the peak while mu is held, and the cosine over the steps after the hold.
pub fn lr_at(cfg: &TrainConfig, state: &GateState, t: usize) -> f64 {
    if !holds_mu(cfg) || t < cfg.warmup {
        return lr_factor(t, cfg.warmup, cfg.steps);
    }
    match state.mu_hold_until {
        None => 1.0,
        Some(h) => {
            let h = h.max(cfg.warmup);
            lr_factor(t - h, 0, cfg.steps.saturating_sub(h))
        }
    }
}

/// After step `step_no` (from 1) measured each family's expected sparsity `q` (in the order of
/// `state.families`) and, with a joint budget, the expected removed-parameter fraction `q_p`:
/// marks the families whose q came up to within the tolerance of their targets (or past them),
/// or with a joint budget the budget once `q_p` has, and ends the hold once every one has, or at
/// the hold's limit; with `lambda_restart`, the multipliers' moments (the joint's too) restart
/// there.
pub fn after_step(
    cfg: &TrainConfig,
    state: &mut GateState,
    q: &[f64],
    q_p: Option<f64>,
    step_no: usize,
) {
    if !holds_mu(cfg) || state.mu_hold_until.is_some() {
        return;
    }
    let tol = cfg.adapt.mu_hold_tol;
    let reached = match (&mut state.joint, q_p) {
        (Some(j), Some(q_p)) => {
            if j.reached_at.is_none() && q_p >= j.target - tol {
                j.reached_at = Some(step_no);
            }
            j.reached_at.is_some()
        }
        _ => {
            for (f, q) in state.families.iter_mut().zip(q) {
                if f.reached_at.is_none() && *q >= f.target - tol {
                    f.reached_at = Some(step_no);
                }
            }
            state.families.iter().all(|f| f.reached_at.is_some())
        }
    };
    if reached || step_no >= hold_limit(cfg) {
        state.mu_hold_until = Some(step_no);
        if cfg.adapt.lambda_restart {
            for f in &mut state.families {
                f.lambda_moments = Moments::zeros(f.lambdas.len());
            }
            if let Some(j) = &mut state.joint {
                j.lambda_moments = Moments::zeros(j.lambdas.len());
            }
        }
    }
}
