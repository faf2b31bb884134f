//! The optimiser: AdamW without weight decay on `z` (descent) and on the multipliers (ascent),
//! with a cosine learning-rate schedule after a linear warm-up. A joint budget's multipliers
//! ascend like a family's.

use super::adapt::Rates;
use super::{Family, GateState, Moments, TrainConfig};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// One Adam step of `p` along `g` at step `t` (from 1), updating its moments `mo`.
fn adam(p: &mut f64, g: f64, mo: (&mut f64, &mut f64), lr: f64, t: usize) {
    *mo.0 = BETA1 * *mo.0 + (1.0 - BETA1) * g;
    *mo.1 = BETA2 * *mo.1 + (1.0 - BETA2) * g * g;
    let mh = *mo.0 / (1.0 - BETA1.powi(t as i32));
    let vh = *mo.1 / (1.0 - BETA2.powi(t as i32));
    *p -= lr * mh / (vh.sqrt() + EPS);
}

/// Cosine schedule after a linear warm-up: the factor on the learning rates at `step`.
pub(crate) fn lr_factor(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let p = ((step - warmup) as f64 / span as f64).min(1.0);
    0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

/// Gradients of one step, summed over its micro-batches.
pub(crate) struct Grads {
    /// Per family and layer, d loss / d z.
    pub(crate) z: Vec<Vec<Vec<f64>>>,
    /// Per family, d loss / d [lambda1, lambda2, lambda3].
    pub(crate) lambdas: Vec<[f64; 3]>,
    /// d loss / d [L1, L2] of the joint budget (0 without one).
    pub(crate) joint: [f64; 2],
}

impl Grads {
    /// Zero gradients shaped like `families`.
    pub(crate) fn zeros(families: &[Family]) -> Self {
        Self {
            z: families
                .iter()
                .map(|f| f.z.iter().map(|l| vec![0.0; l.len()]).collect())
                .collect(),
            lambdas: vec![[0.0; 3]; families.len()],
            joint: [0.0; 2],
        }
    }
}

/// Step `step_no` (from 1) of the optimiser on `state`: `z` descends the mean gradient over
/// `micro` micro-batches (then constrained by the method), the multipliers (the families', the
/// joint budget's) ascend it; peak learning rates `rates` scaled by `f_lr`.
pub(crate) fn update(
    state: &mut GateState,
    grads: &Grads,
    micro: f64,
    cfg: &TrainConfig,
    rates: &Rates,
    f_lr: f64,
    step_no: usize,
) {
    if let (Some(j), Some(r)) = (&mut state.joint, rates.joint) {
        ascend(
            &mut j.lambdas,
            &mut j.lambda_moments,
            &grads.joint,
            &r,
            micro,
            f_lr,
            step_no,
        );
    }
    for (fi, f) in state.families.iter_mut().enumerate() {
        for (i, layer) in f.z.iter_mut().enumerate() {
            let mo = &mut f.z_moments[i];
            for (j, zj) in layer.iter_mut().enumerate() {
                let mut p = *zj as f64;
                adam(
                    &mut p,
                    grads.z[fi][i][j] / micro,
                    (&mut mo.m[j], &mut mo.v[j]),
                    rates.lr_z * f_lr,
                    step_no,
                );
                *zj = cfg.method.constrain(p);
            }
        }
        let lr = &rates.lambdas[fi];
        let g = &grads.lambdas[fi];
        ascend(
            &mut f.lambdas,
            &mut f.lambda_moments,
            g,
            lr,
            micro,
            f_lr,
            step_no,
        );
    }
}

/// Gradient ascent of the multipliers `lambdas` (moments `mo`) along their gradients `g`
/// summed over `micro` micro-batches, at peak rates `lr` scaled by `f_lr`.
fn ascend(
    lambdas: &mut [f64],
    mo: &mut Moments,
    g: &[f64],
    lr: &[f64],
    micro: f64,
    f_lr: f64,
    step_no: usize,
) {
    for (j, g) in g.iter().enumerate() {
        let (m, v) = (&mut mo.m[j], &mut mo.v[j]);
        adam(&mut lambdas[j], -g / micro, (m, v), lr[j] * f_lr, step_no);
    }
}
